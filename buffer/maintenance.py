"""Size bound and retention. Runs in the writer thread, on the writer connection, in bounded
chunks (~20-40 ms each) with the queued appends committed in between, so appends never wait
long behind it.

Size bound (``max_size_mb``), in this order (DESIGN.md): synced readings oldest first (at or
below the cursor, then the islands acknowledged out of order), synced events oldest first,
then unsynced readings oldest first — counted in ``evicted_unsynced``, reported through
``on_unsynced_evicted`` and the cursor moves past them (they cannot be sent any more) — and
last, once no reading is left, unsynced events oldest first, likewise counted
(``evicted_unsynced_events``), reported (``on_unsynced_events_evicted``) and passed by the
events cursor. Events go last because they are few and carry what people did and saw
(alarms, modes, writes); but a bound that holds only until an alarm storm is no bound. Once
over the bound it evicts down to 90 % of it, so it does not evict on every tick.

Retention (``retention_days``): synced rows (whole commit blocks) and synced events older than
the limit are dropped, in chunks; unsynced data is never expired. After retention frees a lot,
pages are given back to the file system in small steps.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

import structlog

from outpost.buffer.files import BufferFiles
from outpost.buffer.schema import bump_meta, transaction
from outpost.buffer.sync import advance_cursor, advance_events_cursor, cursor, events_cursor

log = structlog.get_logger(__name__)

# Rows deleted per eviction/retention transaction: ~20-40 ms of work, then queued appends go
# first again.
EVICT_CHUNK = 20_000
# Low-water mark: once over the bound, evict down to this fraction so we don't evict every tick.
LOW_WATER = 0.9

#: Called after each chunk: record the progress (for the watchdog) and commit what was appended
#: meanwhile; False means stop for now (a commit failed or the file was replaced by a recovery).
Between = Callable[[], bool]


class _Step(NamedTuple):
    """One eviction step: how many went and, if they were unsynced, the last seq or event
    id lost and which kind."""

    n: int
    lost_through: int | None = None
    kind: Literal["readings", "events"] = "readings"


class Maintenance:
    def __init__(
        self,
        files: BufferFiles,
        *,
        max_bytes: int,
        retention_s: float,
        on_unsynced_evicted: Callable[[int], None] | None,
        on_unsynced_events_evicted: Callable[[int], None] | None = None,
    ) -> None:
        self._files = files
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self.on_unsynced_evicted = on_unsynced_evicted
        self.on_unsynced_events_evicted = on_unsynced_events_evicted

    def run(self, between: Between) -> None:
        """Size bound, then retention, then give pages back. sqlite3 errors propagate (the
        writer decides between recovery and a log line)."""
        conn = self._files.writer
        if conn is None:
            return
        self.enforce_size(conn, between)
        if conn is self._files.writer:
            self.expire(conn, between)
        if conn is self._files.writer:
            self._give_back_pages(conn)

    # ------------------------------------------------------------------ size bound

    def enforce_size(self, conn: sqlite3.Connection, between: Between) -> None:
        used = self._files.used_bytes(conn)
        if used <= self.max_bytes:
            return
        target = int(self.max_bytes * LOW_WATER)
        for _ in range(1000):
            rows = self._count_items(conn)
            if rows == 0 or used <= target:
                break
            per_row = max(1.0, used / rows)
            need = max(1, min(rows, int((used - target) / per_row) + 1))
            while need > 0:
                n = self._evict_chunk(conn, min(need, EVICT_CHUNK))
                if n == 0:
                    break
                need -= n
                # Appends that queued meanwhile go in before the next chunk.
                if not between() or conn is not self._files.writer:
                    return
            new_used = self._files.used_bytes(conn)
            if new_used >= used:
                # Deleting rows freed no whole page yet (or the WAL dominates): stop, try later.
                break
            used = new_used
        log.info("buffer.size_enforced", used_bytes=used, max_bytes=self.max_bytes)

    def _evict_chunk(self, conn: sqlite3.Connection, limit: int) -> int:
        """Delete up to ``limit`` readings or events, in the order of the module docstring."""
        with transaction(conn):
            step = self._evict_in(conn, limit)
        if step.lost_through is not None:
            self._report_lost(step)
        return step.n

    def _evict_in(self, conn: sqlite3.Connection, limit: int) -> _Step:
        """One eviction step inside the caller's transaction."""
        cur = cursor(conn)
        step = self._evict_synced_readings(conn, cur, limit)
        if step is None:  # no reading left at all
            return self._evict_events(conn, limit, synced_only=False)
        if step.n:
            return step
        step = self._evict_events(conn, limit, synced_only=True)
        if step.n:
            return step
        return self._evict_unsynced_readings(conn, cur, limit)

    # The reading layout's part: rows here, whole chunks in the columnar layout.

    def _count_items(self, conn: sqlite3.Connection) -> int:
        return int(
            conn.execute(
                "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM events)"
            ).fetchone()[0]
        )

    def _evict_synced_readings(
        self, conn: sqlite3.Connection, cur: int, limit: int
    ) -> _Step | None:
        """Synced readings oldest first (below the cursor, then islands); None if no reading
        is left, a step of 0 if every reading left is unsynced."""
        lo = conn.execute("SELECT min(seq) FROM readings").fetchone()[0]
        if lo is None:
            return None
        if lo <= cur:
            hi = min(cur, lo + limit - 1)
            n = conn.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (lo, hi)).rowcount
            conn.execute("DELETE FROM blocks WHERE last_seq <= ?", (hi,))
            bump_meta(conn, "evicted_synced", n)
            return _Step(int(n))
        island = conn.execute(
            "SELECT m, last_seq FROM (SELECT (SELECT min(seq) FROM readings r "
            "WHERE r.seq BETWEEN s.first_seq AND s.last_seq) AS m, s.last_seq "
            "FROM synced_ranges s WHERE s.last_seq > ? ORDER BY s.first_seq) "
            "WHERE m IS NOT NULL LIMIT 1",
            (cur,),
        ).fetchone()
        if island is not None:
            m, last = island
            n = conn.execute(
                "DELETE FROM readings WHERE seq BETWEEN ? AND ?", (m, min(last, m + limit - 1))
            ).rowcount
            bump_meta(conn, "evicted_synced", n)
            return _Step(int(n))
        return _Step(0)

    def _evict_unsynced_readings(self, conn: sqlite3.Connection, cur: int, limit: int) -> _Step:
        lo = conn.execute("SELECT min(seq) FROM readings").fetchone()[0]
        hi = lo + limit - 1
        n = conn.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (lo, hi)).rowcount
        conn.execute("DELETE FROM blocks WHERE last_seq <= ?", (hi,))
        bump_meta(conn, "evicted_unsynced", n)
        # Lost for good: the cursor moves past them so the uplink does not wait for them.
        advance_cursor(conn, hi)
        return _Step(int(n), hi, "readings")

    def _delete_block(self, conn: sqlite3.Connection, first: int, last: int) -> int:
        """Retention: the readings of one commit block."""
        return int(
            conn.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (first, last)).rowcount
        )

    def _report_lost(self, step: _Step) -> None:
        """After the commit: log and report unsynced data the bound dropped."""
        n, through = step.n, step.lost_through
        if step.kind == "readings":
            log.warning(
                "buffer.evicted_unsynced", rows=n, through_seq=through, path=str(self._files.path)
            )
            callback = self.on_unsynced_evicted
        else:
            log.warning(
                "buffer.evicted_unsynced_events",
                events=n,
                through_id=through,
                path=str(self._files.path),
            )
            callback = self.on_unsynced_events_evicted
        if callback is not None:
            try:
                callback(n)
            except Exception:
                log.exception("buffer.on_unsynced_evicted_failed", kind=step.kind)

    def _evict_events(self, conn: sqlite3.Connection, limit: int, *, synced_only: bool) -> _Step:
        """Synced events oldest first; then, unless ``synced_only``, unsynced ones oldest
        first (the events cursor moves past them)."""
        ev_cur = events_cursor(conn)
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM events WHERE id <= ? ORDER BY id LIMIT ?", (ev_cur, limit)
            )
        ]
        if ids:
            conn.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
            bump_meta(conn, "evicted_events", len(ids))
            return _Step(len(ids))
        if synced_only:
            return _Step(0)
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?", (ev_cur, limit)
            )
        ]
        if not ids:
            return _Step(0)
        conn.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
        bump_meta(conn, "evicted_unsynced_events", len(ids))
        # Lost for good: the uplink must not wait for them.
        advance_events_cursor(conn, ids[-1])
        return _Step(len(ids), ids[-1], "events")

    # ------------------------------------------------------------------ retention

    def expire(self, conn: sqlite3.Connection, between: Between) -> None:
        """Retention: drop synced rows (and synced events) older than ``retention_days``, whole
        commit blocks at a time, in chunks."""
        cutoff = round((time.time() - self.retention_s) * 1000.0)
        total = 0
        while True:
            with transaction(conn):
                cur = cursor(conn)
                # The oldest blocks only, up to the first one still needed: a bounded read per
                # tick instead of scanning every block for a match.
                blocks = []
                for first, last, max_ts in conn.execute(
                    "SELECT first_seq, last_seq, max_ts FROM blocks ORDER BY first_seq LIMIT 64"
                ):
                    if max_ts >= cutoff or last > cur:
                        break
                    blocks.append((first, last))
                if not blocks:
                    break
                n = 0
                taken = []
                for first, last in blocks:
                    n += self._delete_block(conn, first, last)
                    taken.append((first,))
                    if n >= EVICT_CHUNK:
                        break
                conn.executemany("DELETE FROM blocks WHERE first_seq = ?", taken)
                bump_meta(conn, "expired_rows", n)
            total += n
            if not between() or conn is not self._files.writer:
                return
        with transaction(conn):
            ne = conn.execute(
                "DELETE FROM events WHERE id <= ? AND ts < ?", (events_cursor(conn), cutoff)
            ).rowcount
            if ne:
                bump_meta(conn, "expired_events", ne)
        if total or ne:
            log.info("buffer.expired", rows=total, events=ne)

    def _give_back_pages(self, conn: sqlite3.Connection) -> None:
        """Return free pages to the file system in small steps once a lot is free (after
        retention); below that, free pages are simply reused by new rows."""
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if count and free > count // 4:
            conn.execute("PRAGMA incremental_vacuum(2048)").fetchall()
