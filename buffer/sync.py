"""The uplink's side of the buffer: read batches, acknowledge ranges, dead-letter.

Sync cursor: ``synced_through`` — every seq at or below it is handled. The uplink may
acknowledge ranges out of order (live-first sends the newest batch before the backlog):
:meth:`SyncReader.mark_range_synced` records such a range in ``synced_ranges`` and folds it into
the cursor as soon as it touches it, so the table holds only the few "islands" above the
cursor. An ack costs one small transaction whatever its size (~3 ns per acknowledged reading
measured); a per-row "synced" flag would rewrite every acknowledged row (~570 ns per reading
measured, about what reading it for the uplink costs in the first place).

Events have their own cursor, ``events_synced_through`` (a single "through id": event acks
arrive in order). A batch the receiver refuses for good goes to the ``rejected`` table with its
payload (dead letters, ``outpost buffer stats``) and its range counts as handled.

Every call is blocking (meant for ``asyncio.to_thread``) and runs on the sync connection.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import structlog

from outpost.buffer.files import BufferFiles
from outpost.buffer.models import EventRow, ReadingColumns, ReadingRows
from outpost.buffer.points import PointNames
from outpost.buffer.schema import bump_meta, set_meta, transaction

log = structlog.get_logger(__name__)

# ts / 1000.0 in SQL: the float is made while the row is built instead of a second Python
# pass over the column (~10 % of the drain's CPU).
SELECT_COLS = "SELECT seq, ts / 1000.0, point, value, quality FROM readings"


class SyncReader:
    def __init__(self, files: BufferFiles, names: PointNames) -> None:
        self._files = files
        self._names = names

    def read_unsynced(self, limit: int, after_seq: int | None = None) -> ReadingRows:
        """Up to ``limit`` unsynced readings, oldest first, above the cursor (or ``after_seq``
        if that is higher), skipping ranges acknowledged out of order."""
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn, "DEFERRED"):
            pos = cursor(conn) if after_seq is None else max(cursor(conn), after_seq)
            islands = conn.execute(
                "SELECT first_seq, last_seq FROM synced_ranges WHERE last_seq > ? "
                "ORDER BY first_seq",
                (pos,),
            ).fetchall()
            rows: list[tuple[Any, ...]] = []
            for first, last in [*islands, (None, None)]:
                want = limit - len(rows)
                if want <= 0:
                    break
                if first is None:
                    rows += conn.execute(
                        SELECT_COLS + " WHERE seq > ? ORDER BY seq LIMIT ?", (pos, want)
                    ).fetchall()
                    break
                if first > pos + 1:
                    rows += conn.execute(
                        SELECT_COLS + " WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                        (pos, first, want),
                    ).fetchall()
                pos = max(pos, last)
        return self._names.rows(rows)

    def read_unsynced_columns(self, limit: int, after_seq: int | None = None) -> ReadingColumns:
        """:meth:`read_unsynced` as typed columns (the uplink's binary body)."""
        return ReadingColumns.from_rows(self.read_unsynced(limit, after_seq))

    def read_latest_columns(self, limit: int) -> ReadingColumns:
        """:meth:`read_latest` as typed columns."""
        return ReadingColumns.from_rows(self.read_latest(limit))

    def read_latest(self, limit: int) -> ReadingRows:
        """The newest ``limit`` unsynced readings (live-first sending), in seq order."""
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn, "DEFERRED"):
            cur = cursor(conn)
            islands = conn.execute(
                "SELECT first_seq, last_seq FROM synced_ranges WHERE last_seq > ? "
                "ORDER BY first_seq DESC",
                (cur,),
            ).fetchall()
            rows: list[tuple[Any, ...]] = []
            hi: int | None = None
            for first, last in [*islands, (None, None)]:
                want = limit - len(rows)
                if want <= 0:
                    break
                lo = cur if last is None else last
                if hi is None:
                    rows += conn.execute(
                        SELECT_COLS + " WHERE seq > ? ORDER BY seq DESC LIMIT ?", (lo, want)
                    ).fetchall()
                elif hi > lo:
                    rows += conn.execute(
                        SELECT_COLS + " WHERE seq > ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
                        (lo, hi, want),
                    ).fetchall()
                if first is None:
                    break
                hi = first - 1
        rows.reverse()
        return self._names.rows(rows)

    def mark_synced(self, through_seq: int) -> None:
        """Advance the cursor to ``through_seq`` (never backwards, never past the last seq)."""
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn):
            advance_cursor(conn, through_seq)

    def mark_range_synced(self, first_seq: int, last_seq: int) -> None:
        """Record the exact range ``first_seq..last_seq`` (inclusive) as acknowledged."""
        if last_seq < first_seq:
            raise ValueError(f"mark_range_synced: empty range {first_seq}..{last_seq}")
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn):
            add_range(conn, first_seq, last_seq)

    def synced_through(self) -> int:
        conn = self._files.sync()
        with self._files.sync_lock:
            return cursor(conn)

    def add_rejected(
        self, first_seq: int, last_seq: int, status: int, reason: str, payload: bytes
    ) -> None:
        """Dead-letter a batch the receiver refused for good: kept with its payload for
        inspection, counted, and its seqs count as handled so the uplink moves on."""
        if last_seq < first_seq:
            raise ValueError(f"add_rejected: empty range {first_seq}..{last_seq}")
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn):
            conn.execute(
                "INSERT INTO rejected(first_seq, last_seq, status, reason, payload, ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    first_seq,
                    last_seq,
                    int(status),
                    reason,
                    bytes(payload),
                    round(time.time() * 1000),
                ),
            )
            bump_meta(conn, "rejected_batches", 1)
            add_range(conn, first_seq, last_seq)
        log.error(
            "buffer.batch_rejected",
            first_seq=first_seq,
            last_seq=last_seq,
            status=status,
            reason=reason,
        )

    def read_rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        conn = self._files.query()
        with self._files.query_lock:
            rows = conn.execute(
                "SELECT id, first_seq, last_seq, status, reason, length(payload), ts "
                "FROM rejected ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        keys = ("id", "first_seq", "last_seq", "status", "reason", "payload_bytes", "ts_ms")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def read_unsynced_events(self, limit: int) -> list[EventRow]:
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn, "DEFERRED"):
            cur = events_cursor(conn)
            rows = conn.execute(
                "SELECT id, ts, kind, source, actor, detail FROM events WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (cur, limit),
            ).fetchall()
        return [_event(r) for r in rows]

    def mark_events_synced(self, through_id: int) -> None:
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn):
            advance_events_cursor(conn, through_id)


# ---------------------------------------------------------------------- cursor helpers
# Shared with maintenance (eviction moves the cursors past what it drops). Each runs inside
# the caller's transaction.


def cursor(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='synced_through'").fetchone()[0])


def events_cursor(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute("SELECT value FROM meta WHERE key='events_synced_through'").fetchone()[0]
    )


def last_event_id(conn: sqlite3.Connection) -> int:
    top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
    return int(top[0]) if top else 0


def _last_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])


def advance_events_cursor(conn: sqlite3.Connection, through_id: int) -> None:
    """Never backwards, never past the last event id."""
    target = min(through_id, last_event_id(conn))
    conn.execute(
        "UPDATE meta SET value = max(value, ?) WHERE key = 'events_synced_through'",
        (target,),
    )


def advance_cursor(conn: sqlite3.Connection, through: int) -> int:
    """Move the cursor up to ``through`` (clamped to the last committed seq), then fold in
    every island it now touches."""
    cur = cursor(conn)
    target = min(through, _last_seq(conn))
    if target <= cur:
        return cur
    cur = target
    while True:
        islands = conn.execute(
            "SELECT first_seq, last_seq FROM synced_ranges WHERE first_seq <= ? ORDER BY first_seq",
            (cur + 1,),
        ).fetchall()
        if not islands:
            break
        conn.execute("DELETE FROM synced_ranges WHERE first_seq <= ?", (cur + 1,))
        cur = max(cur, *(last for _, last in islands))
    set_meta(conn, "synced_through", cur)
    return cur


def add_range(conn: sqlite3.Connection, first: int, last: int) -> None:
    cur = cursor(conn)
    last = min(last, _last_seq(conn))
    first = max(first, cur + 1)
    if last < first:
        return
    if first == cur + 1:
        advance_cursor(conn, last)
        return
    # Merge with overlapping or adjacent islands.
    touching = conn.execute(
        "SELECT first_seq, last_seq FROM synced_ranges WHERE first_seq <= ? AND last_seq >= ?",
        (last + 1, first - 1),
    ).fetchall()
    for f, la in touching:
        first = min(first, f)
        last = max(last, la)
    conn.executemany("DELETE FROM synced_ranges WHERE first_seq = ?", [(f,) for f, _ in touching])
    conn.execute("INSERT INTO synced_ranges(first_seq, last_seq) VALUES (?, ?)", (first, last))


def _event(row: tuple[Any, ...]) -> EventRow:
    eid, ts, kind, source, actor, detail = row
    return EventRow(
        id=eid, ts=ts / 1000.0, kind=kind, source=source, actor=actor, detail=json.loads(detail)
    )
