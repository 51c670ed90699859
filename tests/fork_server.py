"""A fork server for kill -9 tests: pay the interpreter start-up and the imports once.

A kill test that starts a fresh ``python`` per round spends most of its time importing; at
50 rounds that is a minute of a shared 2-core machine. Instead one child process imports what
the workload needs and then serves ``RUN <args>`` lines from stdin: each forks a worker (a
real, separate process with its own pid, file descriptors and SQLite connections, killed by a
real SIGKILL) that runs ``target(args)``. The server itself stays single-threaded and never
opens a file of the workload, so every worker starts from the same clean state.

Protocol on the server's stdout (one line each, the workers' own lines interleave):
``PID <pid>`` after a fork, ``EXIT <code>`` when that worker ended (negative: its signal).
Each control line starts with a record separator: a worker killed in the middle of a line
leaves a fragment without newline, and the client drops that fragment instead of reading it
(or the control line glued to it) as a whole line.

Server side, in the workload module::

    if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
        fork_server.serve(main)           # main(args: list[str]) -> None

Test side::

    with ForkClient([sys.executable, MODULE, "serve"], log) as fork:
        pid = fork.run("seed", "3")
        fork.expect(lambda line: line.startswith("START"), 20)
        code = fork.kill(pid)             # -9
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

_MARK = "\x1e"


def serve(target: Callable[[list[str]], None]) -> None:
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "RUN":
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                sys.stdin.close()
                target(words[1:])
            except BaseException:  # the worker's traceback goes to the log, then a code
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"{_MARK}PID {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"{_MARK}EXIT {os.waitstatus_to_exitcode(status)}", flush=True)


class ForkClient:
    """The test's end: starts the server, sends ``RUN``, reads every line (a reader thread
    queues them), kills workers."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.worker: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            if _MARK in line:  # a killed worker's unterminated fragment, then our line
                line = line.rpartition(_MARK)[2]
            self.lines.put(line)
        self.lines.put("")  # end of stream

    def next_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output for {timeout}s; log: {self._log.name}") from None
        if line == "" and self.proc.poll() is not None:
            raise AssertionError(f"fork server exited ({self.proc.returncode}); {self._log.name}")
        self.seen.append(line)
        return line

    def expect(self, predicate: Callable[[str], bool], timeout: float) -> str:
        while True:
            line = self.next_line(timeout)
            if predicate(line):
                return line

    def run(self, *args: str, timeout: float = 30.0) -> int:
        """Fork a worker running ``target(args)``; returns its pid."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("RUN " + " ".join(args) + "\n")
        self.proc.stdin.flush()
        self.worker = int(self.expect(lambda line: line.startswith("PID "), timeout).split()[1])
        return self.worker

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = int(self.expect(lambda line: line.startswith("EXIT "), timeout).split()[1])
        self.worker = None
        return code

    def kill(self, pid: int) -> int:
        """SIGKILL the worker; returns its exit code as the server saw it (-9)."""
        os.kill(pid, signal.SIGKILL)
        return self.wait_exit()

    def close(self) -> None:
        if self.worker is not None:  # a failed test must not leave a worker running
            try:
                os.kill(self.worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self._log.close()

    def __enter__(self) -> ForkClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
