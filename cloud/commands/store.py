"""What the agent has executed: ids and results, durable before anything is acknowledged.

One SQLite file (``commands.db`` in data_dir, WAL, ``synchronous=FULL``: every commit is
fsync'd). A command's life here: ``begin`` (committed BEFORE the action runs) -> ``finish``
with its result (committed before the result is posted) -> ``reported`` once the receiver
confirmed it. A row is never executed twice: a repeat delivery finds the row and re-sends the
stored result instead. A row left ``started`` by a crash (kill -9 mid-action) is not run
again either; it is finished as ``failed`` with "outcome unknown", because running an action
twice is worse than reporting honestly that it may have happened once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from outpost.cloud.wire_commands import CommandResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executed (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    actor        TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('started', 'done')),
    result       TEXT,
    received_at  REAL NOT NULL,
    finished_at  REAL,
    reported_at  REAL
);
CREATE INDEX IF NOT EXISTS executed_unreported ON executed (id)
    WHERE state = 'done' AND reported_at IS NULL;
"""
#: reported rows kept for look-ups beyond the cursor; the newest row always stays (the cursor)
KEEP_ROWS = 10_000
INTERRUPTED = (
    "the agent stopped while executing this command; its outcome is unknown and it was not "
    "run again"
)


@dataclass(frozen=True, slots=True)
class Executed:
    id: int
    kind: str
    state: str
    result: CommandResult | None
    reported: bool


class ExecutedStore:
    """Blocking SQLite calls; the channel runs them in a worker thread (one at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> list[int]:
        """Open (create) the file; finish rows a crash left ``started``. Returns their ids."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        with self._lock:
            ids = [r[0] for r in conn.execute("SELECT id FROM executed WHERE state = 'started'")]
            now = time.time()
            for cid in ids:
                result = CommandResult(
                    status="failed",
                    message=INTERRUPTED,
                    detail={"outcome": "interrupted"},
                    executed_at=int(now * 1000),
                )
                conn.execute(
                    "UPDATE executed SET state = 'done', result = ?, finished_at = ? WHERE id = ?",
                    (result.model_dump_json(), now, cid),
                )
            conn.execute(
                """DELETE FROM executed WHERE reported_at IS NOT NULL
                   AND id < (SELECT max(id) FROM executed) - ?""",
                (KEEP_ROWS,),
            )
        return ids

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "ExecutedStore.open() first"
        return self._conn

    def cursor(self) -> int:
        """The largest command id recorded: the receiver sends only newer ones."""
        with self._lock:
            row = self._db.execute("SELECT max(id) FROM executed").fetchone()
        return int(row[0] or 0)

    def lookup(self, command_id: int) -> Executed | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, kind, state, result, reported_at FROM executed WHERE id = ?",
                (command_id,),
            ).fetchone()
        if row is None:
            return None
        result = None if row[3] is None else CommandResult.model_validate_json(row[3])
        return Executed(row[0], row[1], row[2], result, row[4] is not None)

    def begin(self, command_id: int, kind: str, actor: str) -> bool:
        """Record that the command is about to run (durable on return). False if it is
        already recorded: then it must not run."""
        with self._lock:
            cur = self._db.execute(
                """INSERT OR IGNORE INTO executed (id, kind, actor, state, received_at)
                   VALUES (?, ?, ?, 'started', ?)""",
                (command_id, kind, actor, time.time()),
            )
            return cur.rowcount == 1

    def finish(self, command_id: int, result: CommandResult) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE executed SET state = 'done', result = ?, finished_at = ? WHERE id = ?",
                (result.model_dump_json(), time.time(), command_id),
            )

    def record(self, command_id: int, kind: str, actor: str, result: CommandResult) -> bool:
        """``begin`` + ``finish`` in one commit, for commands that are not run (expired,
        refused before any action)."""
        with self._lock:
            cur = self._db.execute(
                """INSERT OR IGNORE INTO executed
                       (id, kind, actor, state, result, received_at, finished_at)
                   VALUES (?, ?, ?, 'done', ?, ?, ?)""",
                (command_id, kind, actor, result.model_dump_json(), time.time(), time.time()),
            )
            return cur.rowcount == 1

    def unreported(self, limit: int = 100) -> list[tuple[int, CommandResult]]:
        with self._lock:
            rows = self._db.execute(
                """SELECT id, result FROM executed
                   WHERE state = 'done' AND reported_at IS NULL ORDER BY id LIMIT ?""",
                (limit,),
            ).fetchall()
        return [(r[0], CommandResult.model_validate_json(r[1])) for r in rows]

    def mark_reported(self, command_id: int) -> None:
        # Not worth an fsync: losing this mark only means the result is sent once more.
        with self._lock:
            self._db.execute(
                "UPDATE executed SET reported_at = ? WHERE id = ?", (time.time(), command_id)
            )

    def mark_unreported(self, command_id: int) -> None:
        """The receiver delivered it again: our confirmation was lost or belongs to a
        receiver that lost it; send the result once more."""
        with self._lock:
            self._db.execute(
                "UPDATE executed SET reported_at = NULL WHERE id = ? AND state = 'done'",
                (command_id,),
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            row = self._db.execute(
                """SELECT count(*),
                          count(*) FILTER (WHERE state = 'done' AND reported_at IS NULL)
                   FROM executed"""
            ).fetchone()
        return {"recorded": int(row[0]), "pending_results": int(row[1])}
