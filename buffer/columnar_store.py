"""The columnar buffer (issue 14): :class:`ColumnarBuffer`, the same facade, API and
guarantees as :class:`~outpost.buffer.store.Buffer`, with readings stored as chunks (one per
group commit, :mod:`.chunks`, :mod:`.columnar`) instead of one SQLite row each.

The agent's default (``[buffer] layout = "columnar"``; ``"rows"`` selects
:class:`~outpost.buffer.store.Buffer`, which refuses a file holding chunks). A row-layout
file is converted in place when a ``ColumnarBuffer`` opens it (:func:`migrate_rows`, logged
as ``buffer.migrating_to_chunks`` every 5 s, resumed after a kill); the file tools (:mod:`.inspect`) read both layouts. What changes
against the row layout, module by module:

- writer: one ``chunks`` row per commit (plus the ``blocks`` row history and retention use);
- sync: seq windows decode the overlapping chunks and cut them; acks, islands, dead letters
  and events are unchanged (inherited);
- maintenance: the size bound and retention remove whole chunks, still counted per reading
  (a chunk partly acknowledged out of order counts its acknowledged readings as synced);
- history: the chunks of the blocks in the time window are decoded and filtered;
- stats: counts from the chunk rows (``n``), not from a row count.
"""

from __future__ import annotations

import math
import sqlite3
import time
from array import array
from collections.abc import Sequence
from typing import Any

import structlog

from outpost.buffer import columnar, schema
from outpost.buffer.chunks import Columns, seconds_to_ms
from outpost.buffer.files import BufferFiles
from outpost.buffer.history import History, _spans
from outpost.buffer.maintenance import Maintenance, _Step
from outpost.buffer.models import BufferStats, ReadingColumns, ReadingRows
from outpost.buffer.points import PointNames
from outpost.buffer.schema import bump_meta, transaction
from outpost.buffer.store import Buffer
from outpost.buffer.sync import SyncReader, advance_cursor, cursor
from outpost.buffer.writer import InsertReadings, ReadingBatch

log = structlog.get_logger(__name__)


def insert_chunk(conn: sqlite3.Connection, batches: list[ReadingBatch], seq: int) -> int:
    """The writer's insert for the columnar layout: one chunk per call.

    The batches' columns (the pipeline's typed arrays) are concatenated by memory copies and
    handed to the codec as they are; the only per-reading Python work left is converting
    timestamps that do not come in runs (:func:`~.chunks.seconds_to_ms`)."""
    if not batches:
        return seq
    ts_ms, lo, hi = seconds_to_ms(_concat("d", [b.ts for b in batches]))
    keys = batches[0].keys
    if len(batches) > 1:
        keys = _concat(keys.typecode if isinstance(keys, array) else "q", [b.keys for b in batches])
    last = columnar.insert(
        conn,
        seq + 1,
        ts_ms,
        keys,
        _concat("d", [b.values for b in batches]),
        _concat("B", [b.quality for b in batches]),
        ts_range=(lo, hi),
    )
    conn.execute(
        "INSERT OR REPLACE INTO blocks(first_seq, last_seq, min_ts, max_ts) VALUES (?,?,?,?)",
        (seq + 1, last, lo, hi),
    )
    return last


def _concat(typecode: str, cols: list[Sequence[Any]]) -> array[Any]:
    """One typed array from the batches' columns (a memcpy each where the typecode matches;
    a column of another kind is converted, and refused like ``array()`` refuses it)."""
    if len(cols) == 1 and isinstance(cols[0], array) and cols[0].typecode == typecode:
        return cols[0]
    out: array[Any] = array(typecode)
    for c in cols:
        if isinstance(c, array) and c.typecode != typecode:
            out.fromlist(c.tolist())
        else:
            out.extend(c)
    return out


def _rows(names: PointNames, parts: list[Columns]) -> ReadingRows:
    if not parts:
        return ReadingRows()
    seq: list[int] = []
    ts: list[float] = []
    keys: list[int] = []
    value: list[float | None] = []
    quality: list[int] = []
    for p in parts:
        seq += range(p.first_seq, p.first_seq + len(p))
        ts += [t / 1000.0 for t in p.ts_ms]
        keys += p.keys
        value += [None if math.isnan(v) else v for v in p.values]
        quality += p.quality
    return ReadingRows(seq=seq, ts=ts, point_id=names.names_for(keys), value=value, quality=quality)


def _columns(names: PointNames, parts: list[Columns]) -> ReadingColumns:
    """The parts' arrays concatenated (memory copies; only the seq column is generated)."""
    out = ReadingColumns(names_for=names.names_for)
    for p in parts:
        out.seq.extend(range(p.first_seq, p.first_seq + len(p)))
        out.ts_ms.extend(p.ts_ms)
        out.keys.extend(p.keys)
        out.value.extend(p.values)
        out.quality.extend(p.quality)
    return out


class ChunkSyncReader(SyncReader):
    def __init__(self, files: BufferFiles, names: PointNames) -> None:
        super().__init__(files, names)
        # Decoded chunks, used under the sync lock only (the uplink reads a chunk in windows).
        self._cache: dict[int, Columns] = {}

    def read_unsynced(self, limit: int, after_seq: int | None = None) -> ReadingRows:
        return _rows(self._names, self._unsynced(limit, after_seq))

    def read_unsynced_columns(self, limit: int, after_seq: int | None = None) -> ReadingColumns:
        return _columns(self._names, self._unsynced(limit, after_seq))

    def read_latest(self, limit: int) -> ReadingRows:
        return _rows(self._names, self._latest(limit))

    def read_latest_columns(self, limit: int) -> ReadingColumns:
        return _columns(self._names, self._latest(limit))

    def _unsynced(self, limit: int, after_seq: int | None) -> list[Columns]:
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn, "DEFERRED"):
            pos = cursor(conn) if after_seq is None else max(cursor(conn), after_seq)
            islands = conn.execute(
                "SELECT first_seq, last_seq FROM synced_ranges WHERE last_seq > ? "
                "ORDER BY first_seq",
                (pos,),
            ).fetchall()
            parts: list[Columns] = []
            got = 0
            for first, last in [*islands, (None, None)]:
                want = limit - got
                if want <= 0:
                    break
                if first is None:
                    parts += columnar.read_range(conn, pos, None, want, cache=self._cache)
                    break
                if first > pos + 1:
                    window = columnar.read_range(conn, pos, first - 1, want, cache=self._cache)
                    parts += window
                    got += sum(len(p) for p in window)
                pos = max(pos, last)
        return parts

    def _latest(self, limit: int) -> list[Columns]:
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn, "DEFERRED"):
            cur = cursor(conn)
            islands = conn.execute(
                "SELECT first_seq, last_seq FROM synced_ranges WHERE last_seq > ? "
                "ORDER BY first_seq DESC",
                (cur,),
            ).fetchall()
            windows: list[list[Columns]] = []
            got = 0
            hi: int | None = None
            for first, last in [*islands, (None, None)]:
                want = limit - got
                if want <= 0:
                    break
                lo = cur if last is None else last
                if hi is None or hi > lo:
                    window = columnar.read_range(conn, lo, hi, want, newest=True, cache=self._cache)
                    windows.append(window)
                    got += sum(len(p) for p in window)
                if first is None:
                    break
                hi = first - 1
        windows.reverse()
        return [p for w in windows for p in w]


class ChunkMaintenance(Maintenance):
    def _count_items(self, conn: sqlite3.Connection) -> int:
        return int(
            conn.execute(
                "SELECT (SELECT coalesce(sum(n), 0) FROM chunks) + (SELECT count(*) FROM events)"
            ).fetchone()[0]
        )

    def _evict_synced_readings(
        self, conn: sqlite3.Connection, cur: int, limit: int
    ) -> _Step | None:
        oldest = conn.execute(
            "SELECT first_seq, n FROM chunks ORDER BY first_seq LIMIT 1"
        ).fetchone()
        if oldest is None:
            return None
        first, n = oldest
        if first + n - 1 <= cur:
            self._drop_chunk(conn, first, first + n - 1)
            bump_meta(conn, "evicted_synced", n)
            return _Step(int(n))
        # A chunk wholly inside a range acknowledged out of order.
        inside = conn.execute(
            "SELECT c.first_seq, c.n FROM chunks c JOIN synced_ranges s "
            "ON c.first_seq >= s.first_seq AND c.first_seq + c.n - 1 <= s.last_seq "
            "WHERE s.last_seq > ? ORDER BY c.first_seq LIMIT 1",
            (cur,),
        ).fetchone()
        if inside is not None:
            f, m = inside
            self._drop_chunk(conn, f, f + m - 1)
            bump_meta(conn, "evicted_synced", m)
            return _Step(int(m))
        return _Step(0)

    def _evict_unsynced_readings(self, conn: sqlite3.Connection, cur: int, limit: int) -> _Step:
        first, n = conn.execute(
            "SELECT first_seq, n FROM chunks ORDER BY first_seq LIMIT 1"
        ).fetchone()
        last = first + n - 1
        # Readings of the chunk at or below the cursor, or in an island, were synced.
        synced = max(0, cur - first + 1)
        for f, la in conn.execute(
            "SELECT first_seq, last_seq FROM synced_ranges WHERE last_seq >= ? AND first_seq <= ?",
            (max(first, cur + 1), last),
        ):
            synced += min(la, last) - max(f, first, cur + 1) + 1
        self._drop_chunk(conn, first, last)
        bump_meta(conn, "evicted_synced", synced)
        bump_meta(conn, "evicted_unsynced", n - synced)
        advance_cursor(conn, last)
        if n - synced == 0:
            return _Step(int(n))
        return _Step(int(n - synced), last, "readings")

    def _drop_chunk(self, conn: sqlite3.Connection, first: int, last: int) -> None:
        conn.execute("DELETE FROM chunks WHERE first_seq = ?", (first,))
        conn.execute("DELETE FROM blocks WHERE last_seq <= ?", (last,))

    def _delete_block(self, conn: sqlite3.Connection, first: int, last: int) -> int:
        # One chunk per block, or several where a migrated block had gaps.
        n = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM chunks WHERE first_seq BETWEEN ? AND ?", (first, last)
        ).fetchone()[0]
        conn.execute("DELETE FROM chunks WHERE first_seq BETWEEN ? AND ?", (first, last))
        return int(n)


class ChunkHistory(History):
    def read_after(self, after_seq: int, limit: int, until_seq: int | None = None) -> ReadingRows:
        conn = self._files.query()
        with self._files.query_lock, transaction(conn, "DEFERRED"):
            parts = columnar.read_range(conn, after_seq, until_seq, limit)
        return _rows(self._names, parts)

    def history(
        self, point_id: str, since_ts: float, until_ts: float | None = None, limit: int = 10_000
    ) -> ReadingRows:
        conn = self._files.query()
        lo_ms = round(since_ts * 1000.0)
        hi_ms = round(until_ts * 1000.0) if until_ts is not None else 2**62
        rows: list[tuple[Any, ...]] = []  # newest first until the end
        with self._files.query_lock, transaction(conn, "DEFERRED"):
            row = conn.execute("SELECT key FROM points WHERE point_id = ?", (point_id,)).fetchone()
            if row is None:
                return ReadingRows()
            key = row[0]
            spans = _spans(
                conn.execute(
                    "SELECT first_seq, last_seq FROM blocks WHERE max_ts >= ? AND min_ts <= ? "
                    "ORDER BY first_seq DESC",
                    (lo_ms, hi_ms),
                ).fetchall()
            )
            for first, last in spans:
                if len(rows) >= limit:
                    break
                for part in reversed(columnar.read_range(conn, first - 1, last, 2**62)):
                    ts, keys, values, quality = part.ts_ms, part.keys, part.values, part.quality
                    for i in range(len(part) - 1, -1, -1):
                        if keys[i] == key and lo_ms <= ts[i] <= hi_ms:
                            v = values[i]
                            rows.append(
                                (
                                    part.first_seq + i,
                                    ts[i] / 1000.0,
                                    key,
                                    None if math.isnan(v) else v,
                                    quality[i],
                                )
                            )
                            if len(rows) >= limit:
                                break
                    if len(rows) >= limit:
                        break
        rows.reverse()
        return self._names.rows(rows)


class ColumnarBuffer(Buffer):
    """:class:`~outpost.buffer.store.Buffer` with readings stored as columnar chunks."""

    _maintenance_class = ChunkMaintenance
    _sync_class = ChunkSyncReader
    _history_class = ChunkHistory

    def _insert_layout(self) -> InsertReadings:
        return insert_chunk

    def _init_layout(self, conn: sqlite3.Connection) -> None:
        with transaction(conn):
            columnar.create(conn)
        migrate_rows(conn)

    def _collect_stats(self, conn: sqlite3.Connection) -> BufferStats:
        return schema.collect_stats(conn, self.path, counts=columnar.reading_counts)


#: Readings converted per migration transaction.
_MIGRATE_ROWS = 50_000


def migrate_rows(conn: sqlite3.Connection) -> int:
    """Convert a row-layout file in place, at open, before anything reads or writes it.

    Readings keep their seq (gaps left by eviction stay gaps: each contiguous run becomes a
    chunk), cursor, islands, dead letters, events and blocks are untouched. Each step moves
    up to 50,000 readings in one transaction (chunks in, rows out), so a kill during the
    migration loses nothing and the next open continues it. Returns the readings converted.
    """
    done = 0
    total: int | None = None
    t0 = time.monotonic()
    logged = t0
    while True:
        with transaction(conn):
            rows = conn.execute(
                "SELECT seq, ts, point, value, quality FROM readings ORDER BY seq LIMIT ?",
                (_MIGRATE_ROWS,),
            ).fetchall()
            if not rows:
                break
            if total is None:
                total = int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
                log.info("buffer.migrating_to_chunks", readings=total)
            start = 0
            for i in range(1, len(rows) + 1):
                if i == len(rows) or rows[i][0] != rows[i - 1][0] + 1:
                    run = rows[start:i]
                    columnar.insert(
                        conn,
                        run[0][0],
                        [r[1] for r in run],
                        [r[2] for r in run],
                        [math.nan if r[3] is None else r[3] for r in run],
                        [r[4] for r in run],
                    )
                    start = i
            conn.execute("DELETE FROM readings WHERE seq <= ?", (rows[-1][0],))
        done += len(rows)
        now = time.monotonic()
        if now - logged >= 5.0:
            logged = now
            log.info("buffer.migrating_to_chunks", done=done, readings=total)
    if done:
        log.info("buffer.migrated_to_chunks", readings=done, s=round(time.monotonic() - t0, 2))
    return done
