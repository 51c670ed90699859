"""Agent RSS over a long run: is memory flat at N points, every value changing?

Starts the devices (``bench/modbus_responder.py``) and the real ``outpost run`` the way
``bench/poll_modbus.py`` does (its helpers, imported), then samples the agent every
``--sample-s`` seconds for ``--minutes``: RSS split into anonymous memory (heap: Python
objects, malloc arenas, SQLite's page caches) and file/shared mappings (shared libraries, the
WAL index), CPU seconds, and the buffer's files on disk. Prints RSS at the start of the window
(after ``--warmup-minutes``), every ``--report-min`` minutes and at the end, the least-squares
slope in MB/h over the window and the max; ``--csv`` writes every sample (flushed per row, so
a run stopped early leaves a readable partial curve).

    .venv/bin/python bench/soak.py --devices 500 --minutes 15               # 100,000 points
    .venv/bin/python bench/soak.py --devices 50 --minutes 60 --csv /tmp/soak/10k.csv
    .venv/bin/python bench/soak.py --devices 500 --minutes 10 --env MALLOC_ARENA_MAX=2

``--probe`` runs the agent under a small in-process sampler (this file's ``--agent-probe``
mode) that also records ``outpost.agent.core.memory.HeapProbe``'s counters (glibc malloc:
bytes in use and free bytes kept; SQLite: bytes held, page-cache bytes), pymalloc's block
count and, with
``--trace-every S``, tracemalloc snapshot diffs by line (the growth since the first snapshot,
written to ``<csv stem>.probe.trace.txt``; tracemalloc slows the agent several-fold, so read the
memory figures of such a run, not its CPU). ``--trim-every S`` calls ``malloc_trim(0)`` in the
agent every S seconds: RSS that then falls back was free heap glibc kept, not live data.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

MB = 1024 * 1024


# ---------------------------------------------------------------- the agent-side probe


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _probe_loop(
    out: Path, every: float, trace_every: float, trim_every: float, stop: threading.Event
) -> None:
    import tracemalloc

    from outpost.agent.core.memory import HeapProbe

    heap = HeapProbe()
    first: Any = None
    t0 = time.monotonic()
    next_trace = t0 + trace_every if trace_every else float("inf")
    next_trim = t0 + trim_every if trim_every else float("inf")
    trace_path = out.with_suffix(".trace.txt")
    with out.open("a") as f:
        while not stop.wait(every):
            now = time.monotonic()
            trimmed = 0
            if now >= next_trim:
                next_trim += trim_every
                trimmed = int(heap.trim())
            row: dict[str, Any] = {
                "t": round(now - t0, 1),
                "trimmed": trimmed,
                **heap.read().as_dict(),
                # pymalloc's blocks in use (objects up to 512 bytes, in arenas of their own
                # outside malloc's figures): a count, not bytes
                "py_blocks": sys.getallocatedblocks(),
            }
            if tracemalloc.is_tracing():
                row["py_traced"] = tracemalloc.get_traced_memory()[0]
            f.write(json.dumps(row) + "\n")
            f.flush()
            if now >= next_trace and tracemalloc.is_tracing():
                next_trace += trace_every
                snap = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)]
                )
                if first is None:
                    first = snap
                    continue
                with trace_path.open("a") as tf:
                    total = sum(s.size for s in snap.statistics("filename"))
                    tf.write(f"== t={now - t0:.0f} s  traced {total / MB:.1f} MB; growth by line\n")
                    for stat in snap.compare_to(first, "lineno")[:25]:
                        frame = stat.traceback[0]
                        tf.write(
                            f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d}  "
                            f"{stat.size / 1024:10.1f} KiB  "
                            f"{_short(frame.filename)}:{frame.lineno}\n"
                        )


def _agent_probe(argv: list[str]) -> None:
    """Run ``outpost <argv>`` in this process with the sampler thread beside it."""
    import runpy

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--trace-every", type=float, default=0.0)
    ap.add_argument("--trim-every", type=float, default=0.0)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.trace_every:
        import tracemalloc

        tracemalloc.start(1)
    stop = threading.Event()
    threading.Thread(
        target=_probe_loop,
        args=(args.out, args.every, args.trace_every, args.trim_every, stop),
        name="soak-probe",
        daemon=True,
    ).start()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    sys.argv = ["outpost", *rest]
    try:
        runpy.run_module("outpost.agent", run_name="__main__")
    finally:
        stop.set()


# ---------------------------------------------------------------- the soak itself


def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and its parts (MB) and the thread count, from /proc/PID/status."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            number = int(value.split()[0])
            out[key] = number if key == "Threads" else number / 1024
    return out


def _counters(sock: Path) -> dict[str, float]:
    from poll_modbus import _status

    try:
        pipe = _status(sock)["pipeline"]
    except Exception:  # the agent is busy or gone: the sample says so with NaN
        return {"readings": float("nan"), "stored": float("nan")}
    return {"readings": pipe["readings"], "stored": pipe["stored"]}


def _file_mb(path: Path) -> float:
    try:
        return path.stat().st_size / MB
    except FileNotFoundError:
        return 0.0


def _slope_mb_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per hour."""
    n = len(points)
    if n < 2:
        return float("nan")
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return float("nan")
    return sum((t - mt) * (v - mv) for t, v in points) / var * 3600


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT end the sampling early; the summary of what was sampled still prints."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _open_csv(path: Path | None) -> tuple[TextIO | None, Any]:
    if path is None:
        return None, None
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("w", newline="")
    return f, csv.writer(f)


def main() -> None:
    if sys.argv[1:2] == ["--agent-probe"]:
        _agent_probe(sys.argv[2:])
        return
    from poll_modbus import _cpu_seconds, _write_site, responder_command

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--kind", choices=["mixed", "uint16"], default="uint16")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--warmup-minutes", type=float, default=2.0)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--report-min", type=float, default=5.0)
    ap.add_argument(
        "--status-every-s",
        type=float,
        default=0.0,
        help="also read /status every S s (0: only at the window's start and the end). A "
        "/status call sorts every job's jitter samples, a transient of ~40 MB at 500 devices "
        "that the RSS keeps: periodic calls measure that, not the agent",
    )
    ap.add_argument("--base-port", type=int, default=27000)
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="extra agent environment"
    )
    ap.add_argument("--cpu", default=None, help="pin the agent to these CPUs (taskset -c)")
    ap.add_argument("--probe", action="store_true", help="record heap and SQLite counters")
    ap.add_argument("--trace-every", type=float, default=0.0, help="tracemalloc diff every S s")
    ap.add_argument("--trim-every", type=float, default=0.0, help="malloc_trim(0) every S s")
    ap.add_argument("--keep", type=Path, default=None, help="use this directory, keep it")
    args = ap.parse_args()
    probe = args.probe or bool(args.trace_every) or bool(args.trim_every)
    # SIGTERM before the sampling starts (nohup runs get stopped that way): unwind through
    # the ``finally`` below so the agent and the responder do not outlive this process
    signal.signal(signal.SIGTERM, _exit_on_signal)

    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = args.keep
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="outpost-soak-")))
        cfg = _write_site(tmp, args.devices, args.points, args.base_port, args.interval, args.kind)
        sim = subprocess.Popen(
            responder_command(args.devices, args.points, args.kind, args.base_port),
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(sim.wait)
        stack.callback(sim.kill)  # no-op once the finally below has ended it
        assert sim.stdout is not None
        if sim.stdout.readline().strip() != "ready":
            raise SystemExit("responder failed to start")
        probe_path = (args.csv or tmp / "soak.csv").with_suffix(".probe.jsonl")
        if probe:
            probe_path.parent.mkdir(parents=True, exist_ok=True)
            probe_path.write_text("")
            probe_path.with_suffix(".trace.txt").unlink(missing_ok=True)
            head = [
                sys.executable,
                __file__,
                "--agent-probe",
                "--out",
                str(probe_path),
                "--every",
                str(args.sample_s),
                "--trace-every",
                str(args.trace_every),
                "--trim-every",
                str(args.trim_every),
                "--",
            ]
        else:
            head = [sys.executable, "-m", "outpost.agent"]
        env = dict(os.environ)
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--env {item!r}: expected KEY=VALUE")
            env[key] = value
        pin = ["taskset", "-c", args.cpu] if args.cpu else []
        log = (tmp / "agent.log").open("wb")
        agent = subprocess.Popen(
            [*pin, *head, "run", "-c", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        sock = tmp / "var" / "outpost.sock"
        db = tmp / "var" / "buffer.db"
        f_csv, w_csv = _open_csv(args.csv)
        columns = [
            "t_s",
            "rss_mb",
            "anon_mb",
            "file_mb",
            "shmem_mb",
            "threads",
            "cpu_s",
            "db_mb",
            "wal_mb",
            "readings",
            "stored",
        ]
        if w_csv is not None:
            w_csv.writerow(columns)
        samples: list[dict[str, float]] = []
        config_line = (
            f"{args.devices} devices x {args.points} {args.kind} every {args.interval} s "
            f"({args.devices * args.points / args.interval:,.0f} points/s offered); "
            f"env {' '.join(args.env) or '-'}; probe {'on' if probe else 'off'}"
        )
        print(config_line, flush=True)
        try:
            deadline = time.monotonic() + 60
            while not sock.exists():
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise SystemExit("agent did not start:\n" + (tmp / "agent.log").read_text())
                time.sleep(0.1)
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            warm = args.warmup_minutes * 60
            next_report = warm
            next_status = warm
            with _stop_on_sigterm() as stop:
                while True:
                    now = time.monotonic()
                    t = now - t0
                    if agent.poll() is not None:
                        print(f"agent exited with {agent.returncode} at {t:.0f} s", flush=True)
                        break
                    counters = {"readings": float("nan"), "stored": float("nan")}
                    if t >= next_status:
                        next_status += args.status_every_s or float("inf")
                        counters = _counters(sock)
                    st = _proc_status(agent.pid)
                    row = {
                        "t_s": round(t, 1),
                        "rss_mb": round(st["VmRSS"], 2),
                        "anon_mb": round(st.get("RssAnon", float("nan")), 2),
                        "file_mb": round(st.get("RssFile", float("nan")), 2),
                        "shmem_mb": round(st.get("RssShmem", float("nan")), 2),
                        "threads": st.get("Threads", 0),
                        "cpu_s": round(_cpu_seconds(agent.pid), 2),
                        "db_mb": round(_file_mb(db), 2),
                        "wal_mb": round(_file_mb(db.with_name(db.name + "-wal")), 2),
                        **counters,
                    }
                    samples.append(row)
                    if w_csv is not None and f_csv is not None:
                        w_csv.writerow([row[c] for c in columns])
                        f_csv.flush()
                    if t >= next_report:
                        next_report += args.report_min * 60
                        print(
                            f"{t / 60:6.1f} min  RSS {row['rss_mb']:7.1f} MB "
                            f"(anon {row['anon_mb']:.1f}, file {row['file_mb']:.1f}, "
                            f"shmem {row['shmem_mb']:.1f})  cpu {row['cpu_s']:.0f} s  "
                            f"db {row['db_mb']:.0f} MB  stored {row['stored']:,.0f}",
                            flush=True,
                        )
                    if now >= end or stop.wait(max(0.0, min(args.sample_s, end - now))):
                        break
            # the counters at the end, after the last RSS sample (see --status-every-s)
            if agent.poll() is None and samples:
                samples[-1].update(_counters(sock))
                if w_csv is not None:
                    w_csv.writerow(["end", *(samples[-1][c] for c in columns[1:])])
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            sim.kill()
            sim.wait()
            if f_csv is not None:
                f_csv.close()

    _summarise(samples, args.warmup_minutes * 60, args.interval, probe, probe_path)


def _summarise(
    samples: list[dict[str, float]], warm: float, interval: float, probe: bool, probe_path: Path
) -> None:
    if not samples:
        return
    window = [s for s in samples if s["t_s"] >= warm] or samples
    first, last = window[0], window[-1]
    span = last["t_s"] - first["t_s"]
    result: dict[str, Any] = {
        "window_min": [round(first["t_s"] / 60, 1), round(last["t_s"] / 60, 1)],
        "rss_start_end_max_mb": [
            first["rss_mb"],
            last["rss_mb"],
            max(s["rss_mb"] for s in window),
        ],
        "slope_mb_per_h": {
            key: round(_slope_mb_per_h([(s["t_s"], s[key]) for s in window]), 1)
            for key in ("rss_mb", "anon_mb", "file_mb", "shmem_mb")
        },
        "agent_cpu_cores": round((last["cpu_s"] - first["cpu_s"]) / span, 3) if span else None,
        "db_mb_end": last["db_mb"],
    }
    if span and not math.isnan(first["stored"]) and not math.isnan(last["stored"]):
        result["stored_per_s"] = round((last["stored"] - first["stored"]) / span)
    if probe and probe_path.exists():
        rows = [json.loads(line) for line in probe_path.read_text().splitlines() if line]
        rows = [r for r in rows if r["t"] >= warm] or rows
        if rows:
            sized = [k for k in rows[0] if k not in ("t", "trimmed", "py_blocks")]
            sized = [k for k in sized if all(r[k] is not None for r in rows)]
            result["probe_slope_mb_per_h"] = {
                key: round(_slope_mb_per_h([(r["t"], r[key] / MB) for r in rows]), 1)
                for key in sized
            }
            result["probe_end_mb"] = {key: round(rows[-1][key] / MB, 1) for key in sized}
            result["py_blocks_start_end"] = [rows[0]["py_blocks"], rows[-1]["py_blocks"]]
        result["probe_file"] = str(probe_path)
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
