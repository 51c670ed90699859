"""The agent's executed-commands store: what is recorded before an action survives kill -9,
and a command is never handed out for running twice."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from outpost.cloud.commands.store import INTERRUPTED, ExecutedStore
from outpost.cloud.wire_commands import CommandResult

_KILLED_MID_ACTION = """
import os, signal, sys
from pathlib import Path
from outpost.cloud.commands.store import ExecutedStore
from outpost.cloud.wire_commands import CommandResult
store = ExecutedStore(Path(sys.argv[1]))
store.open()
store.record(4, "ack", "bob@fleet", CommandResult(status="succeeded", executed_at=1))
assert store.begin(5, "write", "alice@fleet")
os.kill(os.getpid(), signal.SIGKILL)  # the write is under way: no finish, no close
"""


def test_begun_command_survives_kill_and_is_never_run_again(tmp_path: Path) -> None:
    path = tmp_path / "commands.db"
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_ACTION, str(path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    store = ExecutedStore(path)
    assert store.open() == [5]  # the interrupted one, finished as such
    try:
        assert store.cursor() == 5
        row = store.lookup(5)
        assert row is not None and row.state == "done" and not row.reported
        assert row.result is not None and row.result.status == "failed"
        assert row.result.message == INTERRUPTED
        assert row.result.detail == {"outcome": "interrupted"}
        assert not store.begin(5, "write", "alice@fleet")  # never run again
        assert [cid for cid, _ in store.unreported()] == [4, 5]
        store.mark_reported(4)
        store.mark_reported(5)
        assert store.counts() == {"recorded": 2, "pending_results": 0}
        store.mark_unreported(5)  # delivered again: send the stored result once more
        assert [(cid, r.status) for cid, r in store.unreported()] == [(5, "failed")]
    finally:
        store.close()
    again = ExecutedStore(path)
    assert again.open() == []  # nothing left half-done
    again.close()


def test_record_is_once(tmp_path: Path) -> None:
    store = ExecutedStore(tmp_path / "c.db")
    store.open()
    try:
        expired = CommandResult(status="expired", message="late", executed_at=2)
        assert store.record(9, "reload", "a@fleet", expired)
        assert not store.record(9, "reload", "a@fleet", expired)
        assert not store.begin(9, "reload", "a@fleet")
        row = store.lookup(9)
        assert row is not None and row.result == expired
        assert store.lookup(10) is None
    finally:
        store.close()
