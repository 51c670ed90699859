"""The buffer's single writer: an in-memory queue and ONE thread that group-commits it.

Guarantees:

- :meth:`Writer.append` / :meth:`Writer.append_event` never block on I/O: they copy the
  columns into the queue and return. The thread commits the queue every ``commit_interval``
  seconds, or as soon as ``commit_rows`` readings wait, or on flush, and assigns ``seq`` in
  append order (events keep their place between readings). A backlog is committed back to
  back (at most 20 transactions between maintenance turns), never waiting for the timer.
- A flush (:meth:`Writer.flush_future`) resolves once everything appended before it is
  committed (or dropped as malformed); it fails if the writer stops first.
- A transient SQLite error (locked, I/O, disk full) keeps the queue, in order, and retries
  once a second (an append or a flush arriving meanwhile does not hurry it). While it fails,
  ``commit_failing`` is true, ``commit_failing_since`` says since when, ``commit_failures``
  counts the attempts, ``on_commit_failure(True, error)`` was called once for the streak and
  ``last_commit_monotonic`` stops advancing (what the watchdog should see);
  ``on_commit_failure(False, None)`` follows the first commit that works again. A corrupt file is replaced (:mod:`.recovery`) and the queue goes into the fresh
  one. A malformed item (a NaN timestamp, a value that is not a number) is dropped, counted
  in ``dropped_rows`` and logged, never blocking the rest.
- The queue is bounded (``max_pending_rows`` readings): beyond it readings are dropped and
  counted rather than exhausting memory while the disk stalls. Events are never dropped for
  queue space (they are few, and the contract says so).
- Maintenance (:mod:`.maintenance`) runs in this thread between commits, so the single-writer
  rule holds without a lock on the writer connection.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path

import structlog

from outpost.buffer import schema
from outpost.buffer.files import BufferClosedError, BufferFiles
from outpost.buffer.maintenance import Maintenance
from outpost.buffer.points import PointNames
from outpost.buffer.recovery import replace_running
from outpost.buffer.schema import set_meta, transaction

log = structlog.get_logger(__name__)

_INSERT_READING = "INSERT INTO readings(seq, ts, point, value, quality) VALUES (?, ?, ?, ?, ?)"
_INSERT_EVENT = "INSERT INTO events(ts, kind, source, actor, detail) VALUES (?, ?, ?, ?, ?)"


class ReadingBatch:
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


class EventItem:
    __slots__ = ("actor", "detail", "kind", "source", "ts")

    def __init__(self, ts: float, kind: str, source: str, actor: str | None, detail: str) -> None:
        self.ts = ts
        self.kind = kind
        self.source = source
        self.actor = actor
        self.detail = detail


Item = ReadingBatch | EventItem
#: Stores reading batches after ``seq`` inside the writer's transaction; returns the new last
#: seq. The row layout (:func:`insert_rows`) by default; the columnar one stores chunks.
InsertReadings = Callable[[sqlite3.Connection, list[ReadingBatch], int], int]


class Writer:
    def __init__(
        self,
        files: BufferFiles,
        names: PointNames,
        maintenance: Maintenance,
        *,
        commit_interval: float,
        commit_rows: int,
        maintenance_interval: float,
        max_pending_rows: int,
        on_corrupt_recovered: Callable[[Path], None],
        on_commit_failure: Callable[[bool, str | None], None] | None = None,
        insert_readings: InsertReadings | None = None,
        init_layout: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self._files = files
        self._insert = insert_readings or insert_rows
        self._init_layout = init_layout
        self._names = names
        self._maintenance = maintenance
        self.commit_interval = commit_interval
        self.commit_rows = commit_rows
        self.maintenance_interval = maintenance_interval
        self.max_pending_rows = max_pending_rows
        self._on_corrupt_recovered = on_corrupt_recovered
        self.on_commit_failure = on_commit_failure

        self._lock = threading.Lock()  # guards the queue and the counters below
        self._queue: deque[Item] = deque()
        self._appended = 0  # items ever queued (tickets)
        self._committed = 0  # items committed
        self._pending_rows = 0
        self._dropped_rows = 0
        self._waiters: list[tuple[int, concurrent.futures.Future[None]]] = []
        self._wake = threading.Event()
        self._stopping = False
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._last_commit = time.monotonic()
        self._last_drop_log = 0.0
        self._maint_request: threading.Event | None = None
        self._last_runtime_recovery = -1e9
        self._failing_since: float | None = None
        self._failures = 0
        self._last_error: str | None = None
        self.last_seq = 0
        self.last_event_id = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, last_seq: int, last_event_id: int) -> None:
        self.last_seq = last_seq
        self.last_event_id = last_event_id
        self._last_commit = time.monotonic()
        with self._lock:
            self._accepting = True
        self._thread = threading.Thread(target=self._run, name="buffer-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit everything queued, then stop the thread."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def last_commit_monotonic(self) -> float:
        return self._last_commit

    @property
    def commit_failing(self) -> bool:
        """The last commit attempt failed and its items wait for the retry."""
        return self._failing_since is not None

    @property
    def commit_failing_since(self) -> float | None:
        """``time.monotonic()`` of the first failed attempt of the current streak."""
        return self._failing_since

    @property
    def commit_failures(self) -> int:
        """Failed commit attempts since the writer started (each retry counts)."""
        return self._failures

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    @property
    def dropped_rows(self) -> int:
        return self._dropped_rows

    # ------------------------------------------------------------------ producers (any thread)

    def append(
        self,
        ts: Sequence[float],
        keys: Sequence[int],
        values: Sequence[float],
        quality: Sequence[int],
    ) -> None:
        n = len(values)
        if n == 0:
            return
        if not (len(ts) == len(keys) == len(quality) == n):
            raise ValueError(
                f"append: columns differ in length (ts={len(ts)}, keys={len(keys)}, "
                f"values={n}, quality={len(quality)})"
            )
        batch = ReadingBatch(ts[:], keys[:], values[:], quality[:])
        with self._lock:
            if self._stopping or not self._accepting:
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

    def append_event(self, item: EventItem) -> None:
        with self._lock:
            if self._stopping or not self._accepting:
                raise BufferClosedError("buffer is not open")
            self._queue.append(item)
            self._appended += 1

    def _log_drop_locked(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log > 10.0:
            self._last_drop_log = now
            log.error(
                "buffer.queue_full",
                dropped_rows=self._dropped_rows,
                pending_rows=self._pending_rows,
                writer_alive=self.alive,
            )

    def flush_future(self) -> concurrent.futures.Future[None]:
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

    def request_maintenance(self, timeout: float) -> None:
        """Run maintenance in the writer thread now; blocks until done."""
        done = threading.Event()
        with self._lock:
            self._maint_request = done
        self._wake.set()
        # The writer checks the request after its next commit.
        if not done.wait(timeout):
            raise TimeoutError(f"buffer maintenance did not run within {timeout:.0f} s")

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        next_maint = time.monotonic() + self.maintenance_interval
        inflight: list[Item] = []
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
                if time.monotonic() < retry_at:
                    continue  # woken early (an append, a flush, close): the retry waits its second
                ok = self._commit_queue(inflight)
                if not ok:
                    retry_at = time.monotonic() + 1.0
                    self._failed(inflight)
                    if stopping:
                        log.error("buffer.close_with_uncommitted", items=len(inflight))
                        break
                    continue
                retry_at = 0.0
                self._recovered_commits()
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
            log.exception("buffer.writer_crashed", path=str(self._files.path))
        finally:
            self._fail_waiters()

    def _failed(self, inflight: list[Item]) -> None:
        self._failures += 1
        if self._failing_since is not None:
            return
        self._failing_since = time.monotonic()
        error = self._last_error or "commit failed"
        log.error(
            "buffer.commit_failing",
            error=error,
            items=len(inflight),
            pending_rows=self._pending_rows,
            hint="readings wait in memory (bounded by max_pending_rows) until a commit works",
        )
        self._notify_commit_failure(True, error)

    def _recovered_commits(self) -> None:
        if self._failing_since is None:
            return
        log.warning(
            "buffer.commit_recovered",
            failing_s=round(time.monotonic() - self._failing_since, 1),
            attempts=self._failures,
        )
        self._failing_since = None
        self._notify_commit_failure(False, None)

    def _notify_commit_failure(self, failing: bool, error: str | None) -> None:
        if self.on_commit_failure is None:
            return
        try:
            self.on_commit_failure(failing, error)
        except Exception:
            log.exception("buffer.on_commit_failure_failed")

    def _maintain(self, inflight: list[Item]) -> None:
        conn = self._files.writer

        def between() -> bool:
            self._last_commit = time.monotonic()  # eviction/retention is progress too
            return self._commit_queue(inflight) and self._files.writer is conn

        try:
            self._maintenance.run(between)
        except sqlite3.Error as exc:
            if schema.is_corruption(exc) and self._recover(str(exc)):
                return
            log.error("buffer.maintenance_failed", error=str(exc))

    def _take(self, inflight: list[Item]) -> None:
        """Move up to ~commit_rows readings from the queue into ``inflight``."""
        rows = sum(it.n for it in inflight if isinstance(it, ReadingBatch))
        with self._lock:
            q = self._queue
            while q and rows < self.commit_rows:
                it = q.popleft()
                inflight.append(it)
                if isinstance(it, ReadingBatch):
                    rows += it.n

    def _commit_queue(self, inflight: list[Item]) -> bool:
        """Commit what is queued in transactions of ~commit_rows (a bounded number of them, so
        maintenance and the heartbeat still get their turn under overload). False on a write
        error: ``inflight`` keeps the uncommitted items, in order, for the retry."""
        for _ in range(20):
            self._take(inflight)
            if not inflight:
                return True
            conn = self._files.writer
            if conn is None:
                # A recovery failed half-way: try again to get a usable file.
                if self._recover("no usable buffer file after a failed recovery"):
                    continue
                return False
            try:
                self._commit_items(conn, inflight)
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
                if schema.is_corruption(exc):
                    if self._recover(str(exc)):
                        continue  # the same items go into the fresh file
                    return False
                if isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError):
                    # Locked, I/O error, disk full: transient; keep the items and retry.
                    self._last_error = str(exc)
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
        with self._lock:
            behind = bool(self._queue)
        if behind:
            # The round limit is there so maintenance and the heartbeat get their turn, not to
            # sleep: without this, a backlog whose producer has stopped appending (a flush
            # waiting on it) would wait a whole commit_interval per 20 transactions.
            self._wake.set()
        return True

    def _commit_separately(
        self,
        conn: sqlite3.Connection,
        inflight: list[Item],
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
                    self._last_error = str(err)
                    log.error("buffer.commit_failed", error=str(err), items=len(inflight))
                    return False
                self._drop(item, err)
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as err:
                self._drop(item, err)
            self._settle([item])
            inflight.pop(0)
        return True

    def _drop(self, item: Item, err: BaseException) -> None:
        rows = item.n if isinstance(item, ReadingBatch) else 0
        with self._lock:
            self._dropped_rows += rows
        log.error(
            "buffer.item_dropped",
            error=repr(err),
            rows=rows,
            kind=None if isinstance(item, ReadingBatch) else item.kind,
        )

    def _settle(self, items: list[Item]) -> None:
        """Book items as done (committed or dropped) and wake the flushes they satisfy."""
        done_rows = sum(it.n for it in items if isinstance(it, ReadingBatch))
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

    def _commit_items(self, conn: sqlite3.Connection, items: list[Item]) -> None:
        seq = self.last_seq
        first = seq + 1
        last_event = self.last_event_id
        with transaction(conn):
            batches = [it for it in items if isinstance(it, ReadingBatch)]
            if len(batches) == len(items):
                seq = self._insert(conn, batches, seq)
            else:
                # Keep events interleaved with readings in append order.
                run: list[ReadingBatch] = []
                for it in items:
                    if isinstance(it, ReadingBatch):
                        run.append(it)
                        continue
                    seq = self._insert(conn, run, seq)
                    run = []
                    cur = conn.execute(
                        _INSERT_EVENT,
                        (round(it.ts * 1000.0), it.kind, it.source, it.actor, it.detail),
                    )
                    last_event = cur.lastrowid or last_event
                seq = self._insert(conn, run, seq)
            if seq != self.last_seq:
                set_meta(conn, "last_seq", seq)
        self.last_event_id = last_event
        if seq != self.last_seq:
            self.last_seq = seq
            log.debug("buffer.commit", first_seq=first, last_seq=seq)

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

    # ------------------------------------------------------------------ recovery

    def _recover(self, reason: str) -> bool:
        """The file went bad under us: continue in a fresh one (see :mod:`.recovery`).

        False (retry later) if it happened moments ago already or the fresh file cannot be
        made; the writer then keeps its queue and retries.
        """
        now = time.monotonic()
        if now - self._last_runtime_recovery < 10.0:
            return False
        self._last_runtime_recovery = now
        try:
            moved = replace_running(
                self._files,
                reason,
                last_seq=self.last_seq,
                last_event_id=self.last_event_id,
                names=self._names.snapshot(),
                init_layout=self._init_layout,
            )
        except Exception:
            log.exception("buffer.recovery_failed", path=str(self._files.path))
            return False
        self._on_corrupt_recovered(moved)
        return True


def insert_rows(conn: sqlite3.Connection, batches: list[ReadingBatch], seq: int) -> int:
    """One ``readings`` row per reading, one ``blocks`` row per call (the row layout)."""
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
