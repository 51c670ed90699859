"""Corruption recovery: a bad buffer file never stops the agent and is never deleted.

Guarantees:

- At open, a file that is not a healthy Outpost buffer (bad header, failed ``quick_check``,
  SQLITE_CORRUPT/NOTADB on first use, another application's database) is renamed to
  ``<name>.corrupt-<UTC timestamp>`` (with its WAL) and a fresh file takes its place. Errors
  that do not mean corruption (locked, I/O, disk full, permissions) propagate: moving a
  healthy file aside for those would be wrong.
- The same happens when the file goes bad under the running writer; the writer's queue goes
  into the fresh file, and the point keys carried by queued readings stay valid.
- Sequence numbers and event ids never repeat across a recovery: the fresh file continues
  after the old one's when it can still be read, otherwise above anything it can have held
  (wall-clock microseconds).
- Event ids never repeat across a reset either (the file deleted or truncated to zero
  length, which leaves nothing to continue from): every new file starts its event ids at the
  wall-clock microsecond of its creation. The receiver keeps events unique on (gateway, event
  id) and ignores repeats, so ids that restarted at 1 would silently drop every new event.
  This assumes the clock never goes back past the old file's last event, microsecond for
  event (a gateway whose clock is that wrong sends readings the receiver refuses anyway).
  Readings need no such floor: the receiver keeps them unique on point and time, not seq.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from outpost.buffer import schema
from outpost.buffer.files import BufferFiles
from outpost.buffer.schema import transaction


def open_checked(path: Path, *, quick_check: bool) -> tuple[sqlite3.Connection, Path | None]:
    """Open the file for writing; a corrupt or foreign one is moved aside and a fresh one
    created. Returns the connection and where a bad file was moved (or None)."""
    reason = schema.header_problem(path)
    if reason is None:
        conn: sqlite3.Connection | None = None
        try:
            conn = schema.connect(path, cache_mb=2)
            reason = schema.check_database(conn, quick_check=quick_check)
            if reason is None:
                # Only read by a file without any table yet (a first start or a reset).
                schema.init_schema(conn, event_base=_id_floor())
                return conn, None
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            if not schema.is_corruption(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        else:
            conn.close()
    old = schema.read_old_ids(path)
    moved_to, count = schema.move_aside(path, reason)
    # Seq and event ids must never repeat: continue after the old file's when readable,
    # otherwise start above anything it can have held (wall-clock microseconds).
    seq_base, event_base = old if old is not None else (_id_floor(),) * 2
    conn = schema.connect(path, cache_mb=2)
    schema.init_schema(conn, seq_base=seq_base, event_base=event_base, corrupt_recoveries=count)
    return conn, moved_to


def _id_floor() -> int:
    """Above every id a previous file can have handed out: wall-clock microseconds."""
    return int(time.time() * 1_000_000)


def replace_running(
    files: BufferFiles,
    reason: str,
    *,
    last_seq: int,
    last_event_id: int,
    names: Sequence[str | None],
    init_layout: Callable[[sqlite3.Connection], None] | None = None,
) -> Path:
    """The file went bad under the running agent: move it aside and continue in a fresh one
    that continues ``last_seq``/``last_event_id`` and keeps the point keys ``names``.

    Called from the writer thread; holds both reader locks while the connections change.
    Raises if the fresh file cannot be made (the caller keeps its queue and retries).
    """
    with files.sync_lock, files.query_lock:
        files.close_all()
        moved, count = schema.move_aside(files.path, reason)
        conn = schema.connect(files.path, cache_mb=2)
        schema.init_schema(
            conn, seq_base=last_seq, event_base=last_event_id, corrupt_recoveries=count
        )
        if init_layout is not None:
            init_layout(conn)
        with transaction(conn):
            conn.executemany(
                "INSERT INTO points(key, point_id) VALUES (?, ?)",
                [(k, n) for k, n in enumerate(names) if n is not None],
            )
        files.attach(conn)
    return moved
