"""The store-and-forward buffer of the running agent.

Threads and connections:

- The asyncio loop calls :meth:`Buffer.append` / :meth:`Buffer.append_event`: they only copy
  the columns into an in-memory queue (no SQLite, no waiting).
- ONE writer thread owns the writer connection: it group-commits the queue (every
  ``commit_interval`` seconds, or as soon as ``commit_rows`` readings wait, or on flush),
  assigns ``seq`` in append order, and runs maintenance (size bound, retention) in bounded
  chunks between commits so appends never wait long.
- The uplink's calls (read_unsynced, mark_synced, ...) are blocking and meant for
  ``asyncio.to_thread``; they share one connection behind a lock. ``stats``/``history``
  (status page, CLI) use another, so a long history scan never delays the uplink.

Sync cursor: ``synced_through`` — every seq at or below it is handled. The uplink may
acknowledge ranges out of order (live-first sends the newest batch before the backlog):
:meth:`Buffer.mark_range_synced` records such a range in ``synced_ranges`` and folds it into the
cursor as soon as it touches it, so the table holds only the few "islands" above the cursor.
An ack costs one small transaction whatever its size (~3 ns per acknowledged reading measured);
a per-row "synced" flag would rewrite every acknowledged row (~570 ns per reading measured,
about what reading it for the uplink costs in the first place).

Size bound, in this order (DESIGN.md): synced rows oldest first (at or below the cursor, then
the islands), then unsynced rows oldest first — counted, reported through
``on_unsynced_evicted`` and the cursor moves past them (they cannot be sent any more).
Unsynced events are never evicted (they are few, and the contract says never dropped).

Failure handling in the writer: a transient SQLite error (locked, I/O, disk full) keeps the
queue and retries every second (``last_commit_monotonic`` then stops advancing, which is what
the watchdog should see); a corrupt file is moved aside and the queue goes into a fresh one
that continues seq, event ids and point keys; a malformed item (a NaN timestamp, a value that
is not a number) is dropped, counted in ``dropped_rows`` and logged, never blocking the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import structlog

from outpost.buffer import schema
from outpost.buffer.models import BufferStats, EventRow, ReadingRows
from outpost.buffer.schema import bump_meta, set_meta, transaction

log = structlog.get_logger(__name__)

_INSERT_READING = "INSERT INTO readings(seq, ts, point, value, quality) VALUES (?, ?, ?, ?, ?)"
_INSERT_EVENT = "INSERT INTO events(ts, kind, source, actor, detail) VALUES (?, ?, ?, ?, ?)"
# ts / 1000.0 in SQL: the float is made while the row is built instead of a second Python
# pass over the column (~10 % of the drain's CPU).
_SELECT_COLS = "SELECT seq, ts / 1000.0, point, value, quality FROM readings"

# Rows deleted per eviction/retention transaction: ~20-40 ms of work, then queued appends go
# first again.
_EVICT_CHUNK = 20_000
# Low-water mark: once over the bound, evict down to this fraction so we don't evict every tick.
_LOW_WATER = 0.9


class _ReadingBatch:
    __slots__ = ("keys", "n", "quality", "ts", "values")

    def __init__(
        self,
        ts: Sequence[float],
        keys: Sequence[int],
        values: Sequence[float],
        quality: Sequence[int],
    ) -> None:
        self.ts = ts
        self.keys = keys
        self.values = values
        self.quality = quality
        self.n = len(values)


class _EventItem:
    __slots__ = ("actor", "detail", "kind", "source", "ts")

    def __init__(self, ts: float, kind: str, source: str, actor: str | None, detail: str) -> None:
        self.ts = ts
        self.kind = kind
        self.source = source
        self.actor = actor
        self.detail = detail


class BufferClosedError(RuntimeError):
    pass


class Buffer:
    def __init__(
        self,
        path: Path,
        *,
        max_size_mb: float = 1024,
        retention_days: float = 7,
        commit_interval: float = 1.0,
        commit_rows: int = 50_000,
        on_unsynced_evicted: Callable[[int], None] | None = None,
        maintenance_interval: float = 5.0,
        max_pending_rows: int = 5_000_000,
        quick_check: bool = True,
        on_corrupt_recovered: Callable[[Path], None] | None = None,
    ) -> None:
        """``on_unsynced_evicted(n)`` is called from the writer thread (use
        ``loop.call_soon_threadsafe`` to get back onto the loop). ``max_pending_rows`` bounds
        the in-memory queue if the disk stalls: beyond it appends are dropped and counted
        (``stats().dropped_rows``) rather than exhausting memory. ``quick_check`` runs
        ``PRAGMA quick_check`` at open (~1.3 s per 300 MB); a failed check moves the file aside.
        ``on_corrupt_recovered(moved_to)`` is called after a corrupt file was moved aside and a
        fresh one started (from ``open()``'s thread, or the writer thread if it happens later),
        so the agent can raise its alarm; ``stats().corrupt_recoveries`` counts them.
        """
        self.path = Path(path)
        self.max_bytes = int(max_size_mb * 1024 * 1024)
        self.retention_s = float(retention_days) * 86400.0
        self.commit_interval = float(commit_interval)
        self.commit_rows = int(commit_rows)
        self.maintenance_interval = float(maintenance_interval)
        self.max_pending_rows = int(max_pending_rows)
        self.quick_check = quick_check
        self.on_unsynced_evicted = on_unsynced_evicted
        self.on_corrupt_recovered = on_corrupt_recovered

        self._lock = threading.Lock()  # guards the queue and the counters below
        self._queue: deque[_ReadingBatch | _EventItem] = deque()
        self._appended = 0  # items ever queued (tickets)
        self._committed = 0  # items committed
        self._pending_rows = 0
        self._dropped_rows = 0
        self._waiters: list[tuple[int, concurrent.futures.Future[None]]] = []
        self._wake = threading.Event()
        self._stopping = False
        self._opened = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._last_commit = time.monotonic()

        self._wconn: sqlite3.Connection | None = None
        self._sconn: sqlite3.Connection | None = None
        self._sync_lock = threading.Lock()
        self._qconn: sqlite3.Connection | None = None
        self._query_lock = threading.Lock()
        self._names: list[str | None] = []
        self._names_lock = threading.Lock()
        self._last_seq = 0
        self._last_drop_log = 0.0
        self._maint_request: threading.Event | None = None
        self._wal_limit = 8 * 1024 * 1024
        self._last_event_id = 0
        self._last_runtime_recovery = -1e9
        #: Where a corrupt file was moved by the last recovery (for the agent's alarm), or None.
        self.corrupt_moved_to: Path | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        if self._opened:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._open_checked()
        self._wconn = conn
        self._tune_writer(conn)
        meta = schema.read_meta(conn)
        top = conn.execute("SELECT max(seq) FROM readings").fetchone()[0] or 0
        self._last_seq = max(meta["last_seq"], int(top))
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        self._last_event_id = int(row[0]) if row else 0
        self._sconn = schema.connect(self.path, cache_mb=4)
        self._qconn = schema.connect(self.path, cache_mb=2)
        with self._names_lock:
            self._names = schema.point_names(self._sconn)
        self._opened = True
        self._last_commit = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="buffer-writer", daemon=True)
        self._thread.start()
        log.info(
            "buffer.open",
            path=str(self.path),
            last_seq=self._last_seq,
            synced_through=meta["synced_through"],
        )
        if self.corrupt_moved_to is not None:
            self._notify_corrupt(self.corrupt_moved_to)

    def _open_checked(self) -> sqlite3.Connection:
        """Open the file; a corrupt or foreign one is moved aside and a fresh one created."""
        reason = schema.header_problem(self.path)
        if reason is None:
            conn: sqlite3.Connection | None = None
            try:
                conn = schema.connect(self.path, cache_mb=8)
                reason = schema.check_database(conn, quick_check=self.quick_check)
                if reason is None:
                    schema.init_schema(conn)
                    return conn
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
        old = schema.read_old_ids(self.path)
        self.corrupt_moved_to, count = schema.move_aside(self.path, reason)
        # Seq and event ids must never repeat: continue after the old file's when readable,
        # otherwise start above anything it can have held (wall-clock microseconds).
        seq_base, event_base = old if old is not None else (int(time.time() * 1_000_000),) * 2
        conn = schema.connect(self.path, cache_mb=8)
        schema.init_schema(conn, seq_base=seq_base, event_base=event_base, corrupt_recoveries=count)
        return conn

    def _tune_writer(self, conn: sqlite3.Connection) -> None:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        # Keep the WAL small relative to the bound (it counts against it), at most 8 MB
        # (SQLite's default checkpoint point is 4 MB; a bigger WAL slows every read a little).
        wal_limit = max(64 * 1024, min(8 * 1024 * 1024, self.max_bytes // 16))
        self._wal_limit = wal_limit
        conn.execute(f"PRAGMA journal_size_limit = {wal_limit}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(16, wal_limit // page)}")

    def close(self) -> None:
        """Commit everything queued, stop the writer, close the connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        for conn in (self._sconn, self._qconn, self._wconn):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._sconn = self._qconn = self._wconn = None
        log.info("buffer.closed", path=str(self.path), last_seq=self._last_seq)

    def __enter__(self) -> Buffer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hot path

    def point_keys(self, point_ids: Sequence[str]) -> list[int]:
        """Idempotent registration: point_id -> small integer key stored in each reading."""
        conn = self._sync()
        with self._sync_lock, transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO points(point_id) VALUES (?)", [(p,) for p in point_ids]
            )
            known = dict(conn.execute("SELECT point_id, key FROM points").fetchall())
            names = schema.point_names(conn)
        with self._names_lock:
            self._names = names
        return [known[p] for p in point_ids]

    def append(
        self,
        ts: Sequence[float],
        keys: Sequence[int],
        values: Sequence[float],
        quality: Sequence[int],
    ) -> None:
        """Queue readings (columnar, aligned; ts = epoch seconds UTC). Never blocks on I/O.

        The columns are copied (a slice: a memcpy for arrays), so the caller may reuse them.
        """
        n = len(values)
        if n == 0:
            return
        if not (len(ts) == len(keys) == len(quality) == n):
            raise ValueError(
                f"append: columns differ in length (ts={len(ts)}, keys={len(keys)}, "
                f"values={n}, quality={len(quality)})"
            )
        batch = _ReadingBatch(ts[:], keys[:], values[:], quality[:])
        with self._lock:
            if self._stopping or not self._opened:
                raise BufferClosedError("buffer is not open")
            if self._pending_rows + n > self.max_pending_rows:
                self._dropped_rows += n
                self._log_drop_locked()
                return
            self._queue.append(batch)
            self._appended += 1
            self._pending_rows += n
            full = self._pending_rows >= self.commit_rows
        if full:
            self._wake.set()

    def _log_drop_locked(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log > 10.0:
            self._last_drop_log = now
            log.error(
                "buffer.queue_full",
                dropped_rows=self._dropped_rows,
                pending_rows=self._pending_rows,
                writer_alive=self.writer_alive,
            )

    def append_event(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        item = _EventItem(
            ts, kind, source, actor, json.dumps(dict(detail), separators=(",", ":"), default=str)
        )
        with self._lock:
            if self._stopping or not self._opened:
                raise BufferClosedError("buffer is not open")
            # Events are never dropped for queue space: they are few and the contract says so.
            self._queue.append(item)
            self._appended += 1

    def _flush_future(self) -> concurrent.futures.Future[None]:
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._writer_error is not None:
                fut.set_exception(BufferClosedError(f"buffer writer failed: {self._writer_error}"))
                return fut
            target = self._appended
            if self._committed >= target:
                fut.set_result(None)
                return fut
            if self._thread is None or not self._thread.is_alive():
                fut.set_exception(BufferClosedError("buffer writer is not running"))
                return fut
            self._waiters.append((target, fut))
        self._wake.set()
        return fut

    async def flush(self) -> None:
        """Resolves once everything appended before the call is committed."""
        await asyncio.wrap_future(self._flush_future())

    def flush_sync(self, timeout: float | None = None) -> None:
        self._flush_future().result(timeout)

    @property
    def last_commit_monotonic(self) -> float:
        return self._last_commit

    @property
    def writer_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    @property
    def dropped_rows(self) -> int:
        return self._dropped_rows

    @property
    def last_seq(self) -> int:
        """Highest committed seq."""
        return self._last_seq

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        next_maint = time.monotonic() + self.maintenance_interval
        inflight: list[_ReadingBatch | _EventItem] = []
        retry_at = 0.0
        try:
            while True:
                now = time.monotonic()
                deadline = min(next_maint, now + self.commit_interval)
                if retry_at > now:
                    deadline = min(deadline, retry_at)
                self._wake.wait(max(0.0, deadline - now))
                self._wake.clear()
                with self._lock:
                    stopping = self._stopping
                if time.monotonic() >= retry_at:
                    ok = self._commit_queue(inflight)
                    if not ok:
                        retry_at = time.monotonic() + 1.0
                        if stopping:
                            log.error("buffer.close_with_uncommitted", items=len(inflight))
                            break
                        continue
                retry_at = 0.0
                if stopping:
                    with self._lock:
                        drained = not self._queue
                    if drained:
                        break
                    self._wake.set()  # more than one round of transactions was queued
                    continue
                self._last_commit = time.monotonic()  # idle heartbeat for the watchdog
                with self._lock:
                    request, self._maint_request = self._maint_request, None
                if request is not None or time.monotonic() >= next_maint:
                    self._maintain(inflight)
                    next_maint = time.monotonic() + self.maintenance_interval
                    if request is not None:
                        request.set()
        except BaseException as exc:
            self._writer_error = exc
            log.exception("buffer.writer_crashed", path=str(self.path))
        finally:
            self._fail_waiters()

    def _take(self, inflight: list[_ReadingBatch | _EventItem]) -> None:
        """Move up to ~commit_rows readings from the queue into ``inflight``."""
        rows = sum(it.n for it in inflight if isinstance(it, _ReadingBatch))
        with self._lock:
            q = self._queue
            while q and rows < self.commit_rows:
                it = q.popleft()
                inflight.append(it)
                if isinstance(it, _ReadingBatch):
                    rows += it.n

    def _commit_queue(self, inflight: list[_ReadingBatch | _EventItem]) -> bool:
        """Commit what is queued in transactions of ~commit_rows (a bounded number of them, so
        maintenance and the heartbeat still get their turn under overload). False on a write
        error: ``inflight`` keeps the uncommitted items, in order, for the retry."""
        for _ in range(20):
            self._take(inflight)
            if not inflight:
                return True
            conn = self._wconn
            assert conn is not None
            try:
                self._commit_items(conn, inflight)
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
                if schema.is_corruption(exc):
                    if self._recover_runtime(str(exc)):
                        continue  # the same items go into the fresh file
                    return False
                if isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError):
                    # Locked, I/O error, disk full: transient; keep the items and retry.
                    log.error(
                        "buffer.commit_failed",
                        error=str(exc),
                        items=len(inflight),
                        pending_rows=self._pending_rows,
                    )
                    return False
                if not self._commit_separately(conn, inflight, exc):
                    return False
                continue
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                if not self._commit_separately(conn, inflight, exc):
                    return False
                continue
            self._settle(inflight)
            inflight.clear()
        return True

    def _commit_separately(
        self,
        conn: sqlite3.Connection,
        inflight: list[_ReadingBatch | _EventItem],
        exc: BaseException,
    ) -> bool:
        """A malformed item (NaN timestamp, a value that is not a number, a constraint) must not
        stall everything queued behind it: commit item by item and drop, count and log the bad
        ones. False on a transient error (what is left stays in ``inflight``)."""
        log.error("buffer.bad_items", error=repr(exc), items=len(inflight))
        while inflight:
            item = inflight[0]
            try:
                self._commit_items(conn, [item])
            except sqlite3.DatabaseError as err:
                if isinstance(err, sqlite3.OperationalError | sqlite3.InternalError) or (
                    schema.is_corruption(err)
                ):
                    log.error("buffer.commit_failed", error=str(err), items=len(inflight))
                    return False
                self._drop(item, err)
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as err:
                self._drop(item, err)
            self._settle([item])
            inflight.pop(0)
        return True

    def _drop(self, item: _ReadingBatch | _EventItem, err: BaseException) -> None:
        rows = item.n if isinstance(item, _ReadingBatch) else 0
        with self._lock:
            self._dropped_rows += rows
        log.error(
            "buffer.item_dropped",
            error=repr(err),
            rows=rows,
            kind=None if rows else getattr(item, "kind", None),
        )

    def _settle(self, items: list[_ReadingBatch | _EventItem]) -> None:
        """Book items as done (committed or dropped) and wake the flushes they satisfy."""
        done_rows = sum(it.n for it in items if isinstance(it, _ReadingBatch))
        self._last_commit = time.monotonic()
        ready: list[concurrent.futures.Future[None]] = []
        with self._lock:
            self._committed += len(items)
            self._pending_rows -= done_rows
            committed = self._committed
            keep: list[tuple[int, concurrent.futures.Future[None]]] = []
            for target, fut in self._waiters:
                if target <= committed:
                    ready.append(fut)
                else:
                    keep.append((target, fut))
            self._waiters = keep
        for fut in ready:
            if not fut.done():
                fut.set_result(None)

    def _commit_items(
        self, conn: sqlite3.Connection, items: list[_ReadingBatch | _EventItem]
    ) -> None:
        seq = self._last_seq
        first = seq + 1
        last_event = self._last_event_id
        with transaction(conn):
            batches = [it for it in items if isinstance(it, _ReadingBatch)]
            if len(batches) == len(items):
                seq = self._insert_readings(conn, batches, seq)
            else:
                # Keep events interleaved with readings in append order.
                run: list[_ReadingBatch] = []
                for it in items:
                    if isinstance(it, _ReadingBatch):
                        run.append(it)
                        continue
                    seq = self._insert_readings(conn, run, seq)
                    run = []
                    cur = conn.execute(
                        _INSERT_EVENT,
                        (round(it.ts * 1000.0), it.kind, it.source, it.actor, it.detail),
                    )
                    last_event = cur.lastrowid or last_event
                seq = self._insert_readings(conn, run, seq)
            if seq != self._last_seq:
                set_meta(conn, "last_seq", seq)
        self._last_event_id = last_event
        if seq != self._last_seq:
            self._last_seq = seq
            log.debug("buffer.commit", first_seq=first, last_seq=seq)

    def _insert_readings(
        self, conn: sqlite3.Connection, batches: list[_ReadingBatch], seq: int
    ) -> int:
        if not batches:
            return seq
        n = sum(b.n for b in batches)
        if len(batches) == 1:
            b = batches[0]
            ts_iter: Iterable[float] = b.ts
            keys: Iterable[int] = b.keys
            values: Iterable[float] = b.values
            quality: Iterable[int] = b.quality
        else:
            ts_iter = chain.from_iterable(b.ts for b in batches)
            keys = chain.from_iterable(b.keys for b in batches)
            values = chain.from_iterable(b.values for b in batches)
            quality = chain.from_iterable(b.quality for b in batches)
        ms = [round(t * 1000.0) for t in ts_iter]
        conn.executemany(
            _INSERT_READING,
            zip(range(seq + 1, seq + n + 1), ms, keys, values, quality, strict=True),
        )
        conn.execute(
            "INSERT OR REPLACE INTO blocks(first_seq, last_seq, min_ts, max_ts) VALUES (?,?,?,?)",
            (seq + 1, seq + n, min(ms), max(ms)),
        )
        return seq + n

    def _fail_waiters(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
            committed = self._committed
        for target, fut in waiters:
            if fut.done():
                continue
            if target <= committed:
                fut.set_result(None)
            else:
                fut.set_exception(BufferClosedError("buffer writer stopped before the commit"))

    # ------------------------------------------------------------------ maintenance

    def _maintain(self, inflight: list[_ReadingBatch | _EventItem]) -> None:
        conn = self._wconn
        assert conn is not None
        try:
            self._enforce_size(conn, inflight)
            if conn is self._wconn:
                self._expire(conn, inflight)
            if conn is self._wconn:
                self._give_back_pages(conn)
        except sqlite3.Error as exc:
            if schema.is_corruption(exc) and self._recover_runtime(str(exc)):
                return
            log.error("buffer.maintenance_failed", error=str(exc))

    def _recover_runtime(self, reason: str) -> bool:
        """The file went bad under the running agent: move it aside, continue in a fresh one.

        The fresh file continues the seq and event ids and keeps the point keys (queued
        readings carry them). Returns False (retry later) if it happened moments ago already
        or the fresh file cannot be made; the writer then keeps its queue and retries.
        """
        now = time.monotonic()
        if now - self._last_runtime_recovery < 10.0:
            return False
        self._last_runtime_recovery = now
        try:
            with self._sync_lock, self._query_lock:
                for c in (self._sconn, self._qconn, self._wconn):
                    if c is not None:
                        with contextlib.suppress(sqlite3.Error):
                            c.close()
                moved, count = schema.move_aside(self.path, reason)
                conn = schema.connect(self.path, cache_mb=8)
                schema.init_schema(
                    conn,
                    seq_base=self._last_seq,
                    event_base=self._last_event_id,
                    corrupt_recoveries=count,
                )
                with transaction(conn):
                    conn.executemany(
                        "INSERT INTO points(key, point_id) VALUES (?, ?)",
                        [(k, n) for k, n in enumerate(self._names) if n is not None],
                    )
                self._tune_writer(conn)
                self._wconn = conn
                self._sconn = schema.connect(self.path, cache_mb=4)
                self._qconn = schema.connect(self.path, cache_mb=2)
        except Exception:
            log.exception("buffer.recovery_failed", path=str(self.path))
            return False
        self.corrupt_moved_to = moved
        self._notify_corrupt(moved)
        return True

    def _notify_corrupt(self, moved: Path) -> None:
        if self.on_corrupt_recovered is None:
            return
        try:
            self.on_corrupt_recovered(moved)
        except Exception:
            log.exception("buffer.on_corrupt_recovered_failed")

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        """Bytes counted against the bound: live pages (free pages are reused by new rows) plus
        the WAL up to its size limit. A WAL above the limit is transient (one big transaction;
        it is cut back at the next checkpoint) and evicting rows would not shrink it."""
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        wal = schema.file_size(schema.sibling(self.path, "-wal"))
        return int((count - free) * page + min(wal, self._wal_limit))

    def _enforce_size(
        self, conn: sqlite3.Connection, inflight: list[_ReadingBatch | _EventItem]
    ) -> None:
        used = self._used_bytes(conn)
        if used <= self.max_bytes:
            return
        target = int(self.max_bytes * _LOW_WATER)
        for _ in range(1000):
            rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
            if rows == 0 or used <= target:
                break
            per_row = max(1.0, used / rows)
            need = max(1, min(rows, int((used - target) / per_row) + 1))
            while need > 0:
                n = self._evict_chunk(conn, min(need, _EVICT_CHUNK))
                if n == 0:
                    break
                need -= n
                self._last_commit = time.monotonic()  # progress, for the watchdog
                # Appends that queued meanwhile go in before the next chunk.
                if not self._commit_queue(inflight) or conn is not self._wconn:
                    return
            new_used = self._used_bytes(conn)
            if new_used >= used:
                # Deleting rows freed no whole page yet (or the WAL dominates): stop, try later.
                break
            used = new_used
        log.info("buffer.size_enforced", used_bytes=used, max_bytes=self.max_bytes)

    def _evict_chunk(self, conn: sqlite3.Connection, limit: int) -> int:
        """Delete up to ``limit`` rows, synced first (oldest first), then unsynced oldest first."""
        unsynced = 0
        with transaction(conn):
            cursor = conn.execute("SELECT value FROM meta WHERE key='synced_through'").fetchone()[0]
            lo = conn.execute("SELECT min(seq) FROM readings").fetchone()[0]
            if lo is None:
                return 0
            if lo <= cursor:
                hi = min(cursor, lo + limit - 1)
                n = conn.execute(
                    "DELETE FROM readings WHERE seq BETWEEN ? AND ?", (lo, hi)
                ).rowcount
                conn.execute("DELETE FROM blocks WHERE last_seq <= ?", (hi,))
                bump_meta(conn, "evicted_synced", n)
                return n
            island = conn.execute(
                "SELECT m, last_seq FROM (SELECT (SELECT min(seq) FROM readings r "
                "WHERE r.seq BETWEEN s.first_seq AND s.last_seq) AS m, s.last_seq "
                "FROM synced_ranges s WHERE s.last_seq > ? ORDER BY s.first_seq) "
                "WHERE m IS NOT NULL LIMIT 1",
                (cursor,),
            ).fetchone()
            if island is not None:
                m, last = island
                n = conn.execute(
                    "DELETE FROM readings WHERE seq BETWEEN ? AND ?", (m, min(last, m + limit - 1))
                ).rowcount
                bump_meta(conn, "evicted_synced", n)
                return n
            hi = lo + limit - 1
            n = conn.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (lo, hi)).rowcount
            conn.execute("DELETE FROM blocks WHERE last_seq <= ?", (hi,))
            bump_meta(conn, "evicted_unsynced", n)
            # Lost for good: the cursor moves past them so the uplink does not wait for them.
            _advance_cursor(conn, hi)
            unsynced = n
        if unsynced:
            log.warning(
                "buffer.evicted_unsynced", rows=unsynced, through_seq=hi, path=str(self.path)
            )
            if self.on_unsynced_evicted is not None:
                try:
                    self.on_unsynced_evicted(unsynced)
                except Exception:
                    log.exception("buffer.on_unsynced_evicted_failed")
        return unsynced

    def _expire(self, conn: sqlite3.Connection, inflight: list[_ReadingBatch | _EventItem]) -> None:
        """Retention: drop synced rows (and synced events) older than ``retention_days``, whole
        commit blocks at a time, in chunks."""
        cutoff = round((time.time() - self.retention_s) * 1000.0)
        total = 0
        while True:
            with transaction(conn):
                cursor = conn.execute(
                    "SELECT value FROM meta WHERE key='synced_through'"
                ).fetchone()[0]
                # The oldest blocks only, up to the first one still needed: a bounded read per
                # tick instead of scanning every block for a match.
                blocks = []
                for first, last, max_ts in conn.execute(
                    "SELECT first_seq, last_seq, max_ts FROM blocks ORDER BY first_seq LIMIT 64"
                ):
                    if max_ts >= cutoff or last > cursor:
                        break
                    blocks.append((first, last))
                if not blocks:
                    break
                n = 0
                taken = []
                for first, last in blocks:
                    n += conn.execute(
                        "DELETE FROM readings WHERE seq BETWEEN ? AND ?", (first, last)
                    ).rowcount
                    taken.append((first,))
                    if n >= _EVICT_CHUNK:
                        break
                conn.executemany("DELETE FROM blocks WHERE first_seq = ?", taken)
                bump_meta(conn, "expired_rows", n)
            total += n
            self._last_commit = time.monotonic()
            if not self._commit_queue(inflight) or conn is not self._wconn:
                return
        with transaction(conn):
            ev_cursor = conn.execute(
                "SELECT value FROM meta WHERE key='events_synced_through'"
            ).fetchone()[0]
            ne = conn.execute(
                "DELETE FROM events WHERE id <= ? AND ts < ?", (ev_cursor, cutoff)
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

    def run_maintenance(self) -> None:
        """Run the size bound and retention now (normally periodic in the writer).

        Goes through the writer thread so the single-writer rule holds; blocks until done.
        """
        done = threading.Event()
        with self._lock:
            self._maint_request = done
        self._wake.set()
        # The writer checks the request after its next commit.
        if not done.wait(60.0):
            raise TimeoutError("buffer maintenance did not run within 60 s")

    # ------------------------------------------------------------------ sync side

    def _sync(self) -> sqlite3.Connection:
        if self._sconn is None:
            raise BufferClosedError("buffer is not open")
        return self._sconn

    def _query(self) -> sqlite3.Connection:
        if self._qconn is None:
            raise BufferClosedError("buffer is not open")
        return self._qconn

    def _names_for(self, keys: Sequence[int]) -> list[str]:
        names = self._names
        try:
            out = [names[k] for k in keys]
            if None not in out:
                return out  # type: ignore[return-value]
        except IndexError:
            pass
        with self._names_lock:
            conn = self._query()
            with self._query_lock:
                self._names = names = schema.point_names(conn)
        size = len(names)
        return [(names[k] if k < size and names[k] is not None else f"#{k}") for k in keys]  # type: ignore[misc]

    def _rows(self, rows: list[tuple[Any, ...]]) -> ReadingRows:
        if not rows:
            return ReadingRows()
        # One list comprehension per column: cheaper than zip(*rows) + list() (measured).
        seq = [r[0] for r in rows]
        ts = [r[1] for r in rows]
        keys = [r[2] for r in rows]
        values = [r[3] for r in rows]
        quality = [r[4] for r in rows]
        return ReadingRows(
            seq=seq, ts=ts, point_id=self._names_for(keys), value=values, quality=quality
        )

    def read_unsynced(self, limit: int, after_seq: int | None = None) -> ReadingRows:
        """Up to ``limit`` unsynced readings, oldest first, above the cursor (or ``after_seq``
        if that is higher), skipping ranges acknowledged out of order."""
        conn = self._sync()
        with self._sync_lock, transaction(conn, "DEFERRED"):
            cursor = _cursor(conn)
            pos = cursor if after_seq is None else max(cursor, after_seq)
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
                        _SELECT_COLS + " WHERE seq > ? ORDER BY seq LIMIT ?", (pos, want)
                    ).fetchall()
                    break
                if first > pos + 1:
                    rows += conn.execute(
                        _SELECT_COLS + " WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                        (pos, first, want),
                    ).fetchall()
                pos = max(pos, last)
        return self._rows(rows)

    def read_latest(self, limit: int) -> ReadingRows:
        """The newest ``limit`` unsynced readings (live-first sending), in seq order."""
        conn = self._sync()
        with self._sync_lock, transaction(conn, "DEFERRED"):
            cursor = _cursor(conn)
            islands = conn.execute(
                "SELECT first_seq, last_seq FROM synced_ranges WHERE last_seq > ? "
                "ORDER BY first_seq DESC",
                (cursor,),
            ).fetchall()
            rows: list[tuple[Any, ...]] = []
            hi: int | None = None
            for first, last in [*islands, (None, None)]:
                want = limit - len(rows)
                if want <= 0:
                    break
                lo = cursor if last is None else last
                if hi is None:
                    rows += conn.execute(
                        _SELECT_COLS + " WHERE seq > ? ORDER BY seq DESC LIMIT ?", (lo, want)
                    ).fetchall()
                elif hi > lo:
                    rows += conn.execute(
                        _SELECT_COLS + " WHERE seq > ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
                        (lo, hi, want),
                    ).fetchall()
                if first is None:
                    break
                hi = first - 1
        rows.reverse()
        return self._rows(rows)

    def mark_synced(self, through_seq: int) -> None:
        """Advance the cursor to ``through_seq`` (never backwards, never past the last seq)."""
        conn = self._sync()
        with self._sync_lock, transaction(conn):
            _advance_cursor(conn, through_seq)

    def mark_range_synced(self, first_seq: int, last_seq: int) -> None:
        """Record the exact range ``first_seq..last_seq`` (inclusive) as acknowledged."""
        if last_seq < first_seq:
            raise ValueError(f"mark_range_synced: empty range {first_seq}..{last_seq}")
        conn = self._sync()
        with self._sync_lock, transaction(conn):
            _add_range(conn, first_seq, last_seq)

    def synced_through(self) -> int:
        conn = self._sync()
        with self._sync_lock:
            return _cursor(conn)

    def add_rejected(
        self, first_seq: int, last_seq: int, status: int, reason: str, payload: bytes
    ) -> None:
        """Dead-letter a batch the receiver refused for good (4xx): kept with its payload for
        inspection, counted, and its seqs count as handled so the uplink moves on."""
        if last_seq < first_seq:
            raise ValueError(f"add_rejected: empty range {first_seq}..{last_seq}")
        conn = self._sync()
        with self._sync_lock, transaction(conn):
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
            _add_range(conn, first_seq, last_seq)
        log.error(
            "buffer.batch_rejected",
            first_seq=first_seq,
            last_seq=last_seq,
            status=status,
            reason=reason,
        )

    def read_rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        conn = self._query()
        with self._query_lock:
            rows = conn.execute(
                "SELECT id, first_seq, last_seq, status, reason, length(payload), ts "
                "FROM rejected ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        keys = ("id", "first_seq", "last_seq", "status", "reason", "payload_bytes", "ts_ms")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def read_unsynced_events(self, limit: int) -> list[EventRow]:
        conn = self._sync()
        with self._sync_lock, transaction(conn, "DEFERRED"):
            cur = conn.execute(
                "SELECT value FROM meta WHERE key='events_synced_through'"
            ).fetchone()[0]
            rows = conn.execute(
                "SELECT id, ts, kind, source, actor, detail FROM events WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (cur, limit),
            ).fetchall()
        return [_event(r) for r in rows]

    def mark_events_synced(self, through_id: int) -> None:
        conn = self._sync()
        with self._sync_lock, transaction(conn):
            top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            target = min(through_id, int(top[0]) if top else 0)
            conn.execute(
                "UPDATE meta SET value = max(value, ?) WHERE key = 'events_synced_through'",
                (target,),
            )

    def stats(self) -> BufferStats:
        conn = self._query()
        with self._query_lock:
            st = schema.collect_stats(conn, self.path)
        st.pending_rows = self._pending_rows
        st.dropped_rows = self._dropped_rows
        return st

    def history(
        self, point_id: str, since_ts: float, until_ts: float | None = None, limit: int = 10_000
    ) -> ReadingRows:
        """Readings of one point with ``since_ts <= ts <= until_ts`` (epoch seconds), in seq
        order; if more than ``limit`` match, the newest ``limit``."""
        conn = self._query()
        lo_ms = round(since_ts * 1000.0)
        hi_ms = round(until_ts * 1000.0) if until_ts is not None else 2**62
        with self._query_lock, transaction(conn, "DEFERRED"):
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
            rows: list[tuple[Any, ...]] = []
            for first, last in spans:
                want = limit - len(rows)
                if want <= 0:
                    break
                part = conn.execute(
                    _SELECT_COLS + " WHERE seq BETWEEN ? AND ? AND point = ? AND ts BETWEEN ? AND ?"
                    " ORDER BY seq DESC LIMIT ?",
                    (first, last, key, lo_ms, hi_ms, want),
                ).fetchall()
                rows += part
        rows.reverse()
        return self._rows(rows)


# ---------------------------------------------------------------------- cursor helpers


def _cursor(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='synced_through'").fetchone()[0])


def _last_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])


def _advance_cursor(conn: sqlite3.Connection, through: int) -> int:
    """Move the cursor up to ``through`` (clamped to the last committed seq), then fold in
    every island it now touches. Inside the caller's write transaction."""
    cursor = _cursor(conn)
    target = min(through, _last_seq(conn))
    if target <= cursor:
        return cursor
    cursor = target
    while True:
        islands = conn.execute(
            "SELECT first_seq, last_seq FROM synced_ranges WHERE first_seq <= ? ORDER BY first_seq",
            (cursor + 1,),
        ).fetchall()
        if not islands:
            break
        conn.execute("DELETE FROM synced_ranges WHERE first_seq <= ?", (cursor + 1,))
        cursor = max(cursor, *(last for _, last in islands))
    set_meta(conn, "synced_through", cursor)
    return cursor


def _add_range(conn: sqlite3.Connection, first: int, last: int) -> None:
    cursor = _cursor(conn)
    last = min(last, _last_seq(conn))
    first = max(first, cursor + 1)
    if last < first:
        return
    if first == cursor + 1:
        _advance_cursor(conn, last)
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


def _spans(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge adjacent seq ranges (given newest first) into as few scans as possible."""
    out: list[tuple[int, int]] = []
    for first, last in blocks:
        if out and last + 1 >= out[-1][0]:
            out[-1] = (min(first, out[-1][0]), out[-1][1])
        else:
            out.append((first, last))
    return out


def _event(row: tuple[Any, ...]) -> EventRow:
    eid, ts, kind, source, actor, detail = row
    return EventRow(
        id=eid, ts=ts / 1000.0, kind=kind, source=source, actor=actor, detail=json.loads(detail)
    )
