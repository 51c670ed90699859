"""The store-and-forward buffer of the running agent: the :class:`Buffer` facade.

Guarantees (each kept by one module):

- Appends never block on I/O; ONE writer thread group-commits them, assigns ``seq`` in
  append order (contiguous, strictly increasing, never reused) and survives transient write
  errors (disk full, I/O) by keeping its queue and retrying once a second, visibly:
  ``commit_failing``, ``on_commit_failure``, a ``last_commit_monotonic`` that stands still
  (:mod:`.writer`).
- A committed reading survives ``kill -9`` of the agent (WAL, :mod:`.schema`).
- A corrupt file never stops the agent and is never deleted: it is moved aside and a fresh
  file continues seq, event ids and point keys; event ids never repeat after a reset
  (deleted or zero-length file) either (:mod:`.recovery`).
- The uplink reads oldest-first or live-first and acknowledges exact ranges, in any order;
  refused batches are dead-lettered with their payload (:mod:`.sync`).
- The file stays within ``max_size_mb``: synced rows go first, then unsynced readings oldest
  first, then unsynced events oldest first, counted and reported; synced data older than
  ``retention_days`` expires (:mod:`.maintenance`).
- History queries and statistics never delay the uplink (their own connection,
  :mod:`.history`, :mod:`.files`).

Threads and connections:

- The asyncio loop calls :meth:`Buffer.append` / :meth:`Buffer.append_event`: they only copy
  the columns into an in-memory queue (no SQLite, no waiting).
- The writer thread owns the writer connection: group commits (every ``commit_interval``
  seconds, or as soon as ``commit_rows`` readings wait, or on flush) and maintenance in
  bounded chunks between commits, so appends never wait long.
- The uplink's calls (read_unsynced, mark_range_synced, ...) are blocking and meant for
  ``asyncio.to_thread``; they share one connection behind a lock. ``stats``/``history``
  (status page, CLI) use another.

What the uplink needs of the buffer is :class:`outpost.buffer.source.SyncSource`; ``Buffer``
satisfies it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from outpost.buffer import columnar, schema
from outpost.buffer.files import BufferClosedError, BufferFiles
from outpost.buffer.history import History
from outpost.buffer.maintenance import Maintenance
from outpost.buffer.models import BufferStats, EventRow, ReadingColumns, ReadingRows
from outpost.buffer.points import PointNames
from outpost.buffer.recovery import open_checked
from outpost.buffer.schema import BufferFileError
from outpost.buffer.source import SyncSource
from outpost.buffer.sync import SyncReader, last_event_id
from outpost.buffer.writer import EventItem, InsertReadings, Writer, insert_rows

__all__ = ["Buffer", "BufferClosedError"]

log = structlog.get_logger(__name__)


class Buffer:
    # The reading layout: one row per reading here; ColumnarBuffer (outpost.buffer.columnar)
    # swaps these for chunks and keeps everything else.
    _maintenance_class: type[Maintenance] = Maintenance
    _sync_class: type[SyncReader] = SyncReader
    _history_class: type[History] = History

    def _insert_layout(self) -> InsertReadings:
        return insert_rows

    def _init_layout(self, conn: sqlite3.Connection) -> None:
        """Create what the layout needs in a freshly opened file (the row layout: nothing).

        A file the columnar layout has written is refused: its chunks would be invisible here
        (never synced, never evicted). Converting back is not offered; the columnar layout
        reads everything the row layout wrote."""
        if columnar.present(conn) and conn.execute("SELECT 1 FROM chunks LIMIT 1").fetchone():
            conn.close()
            raise BufferFileError(
                f"{self.path}: holds columnar chunks; open it with [buffer] layout = "
                '"columnar" (the row layout cannot read them)'
            )

    def _collect_stats(self, conn: sqlite3.Connection) -> BufferStats:
        return schema.collect_stats(conn, self.path)

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
        on_commit_failure: Callable[[bool, str | None], None] | None = None,
        on_unsynced_events_evicted: Callable[[int], None] | None = None,
    ) -> None:
        """``on_unsynced_evicted(n)`` / ``on_unsynced_events_evicted(n)`` are called from the
        writer thread when the size bound drops unsynced readings / events (use
        ``loop.call_soon_threadsafe`` to get back onto the loop). ``max_pending_rows`` bounds
        the in-memory queue if the disk stalls: beyond it appends are dropped and counted
        (``stats().dropped_rows``) rather than exhausting memory. ``quick_check`` runs
        ``PRAGMA quick_check`` at open (~1.3 s per 300 MB); a failed check moves the file aside.
        ``on_corrupt_recovered(moved_to)`` is called after a corrupt file was moved aside and a
        fresh one started (from ``open()``'s thread, or the writer thread if it happens later),
        so the agent can raise its alarm; ``stats().corrupt_recoveries`` counts them.
        ``on_commit_failure(failing, error)`` is called from the writer thread when commits
        start failing (``True`` and the SQLite error: disk full, I/O error, locked) and once
        when they work again (``False, None``): the agent's system alarm and ``degraded``
        mode. Between the two, ``commit_failing`` is true and ``last_commit_monotonic`` stands
        still, so a watchdog fed from it stops.
        """
        self.path = Path(path)
        self.max_bytes = int(max_size_mb * 1024 * 1024)
        self.retention_s = float(retention_days) * 86400.0
        self.quick_check = quick_check
        self.on_corrupt_recovered = on_corrupt_recovered
        #: Where a corrupt file was moved by the last recovery (for the agent's alarm), or None.
        self.corrupt_moved_to: Path | None = None

        self._files = BufferFiles(self.path, max_bytes=self.max_bytes)
        self._names = PointNames(self._files)
        self._maintenance = self._maintenance_class(
            self._files,
            max_bytes=self.max_bytes,
            retention_s=self.retention_s,
            on_unsynced_evicted=on_unsynced_evicted,
            on_unsynced_events_evicted=on_unsynced_events_evicted,
        )
        self._writer = Writer(
            self._files,
            self._names,
            self._maintenance,
            commit_interval=float(commit_interval),
            commit_rows=int(commit_rows),
            maintenance_interval=float(maintenance_interval),
            max_pending_rows=int(max_pending_rows),
            on_corrupt_recovered=self._recovered,
            on_commit_failure=on_commit_failure,
            insert_readings=self._insert_layout(),
            init_layout=self._init_layout,
        )
        self._sync = self._sync_class(self._files, self._names)
        self._history = self._history_class(self._files, self._names)
        self._opened = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        if self._opened:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn, moved_to = open_checked(self.path, quick_check=self.quick_check)
        self._init_layout(conn)
        self._files.attach(conn)
        meta = schema.read_meta(conn)
        top = conn.execute("SELECT max(seq) FROM readings").fetchone()[0] or 0
        last_seq = max(meta["last_seq"], int(top))
        self._names.load()
        self._opened = True
        self._writer.start(last_seq=last_seq, last_event_id=last_event_id(conn))
        log.info(
            "buffer.open",
            path=str(self.path),
            last_seq=last_seq,
            synced_through=meta["synced_through"],
        )
        if moved_to is not None:
            self._recovered(moved_to)

    def close(self) -> None:
        """Commit everything queued, stop the writer, close the connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._writer.stop()
        self._files.close_all()
        log.info("buffer.closed", path=str(self.path), last_seq=self._writer.last_seq)

    def __enter__(self) -> Buffer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recovered(self, moved: Path) -> None:
        self.corrupt_moved_to = moved
        if self.on_corrupt_recovered is None:
            return
        try:
            self.on_corrupt_recovered(moved)
        except Exception:
            log.exception("buffer.on_corrupt_recovered_failed")

    # ------------------------------------------------------------------ settings

    @property
    def commit_interval(self) -> float:
        return self._writer.commit_interval

    @property
    def commit_rows(self) -> int:
        return self._writer.commit_rows

    @property
    def maintenance_interval(self) -> float:
        return self._writer.maintenance_interval

    @property
    def max_pending_rows(self) -> int:
        return self._writer.max_pending_rows

    @property
    def on_unsynced_evicted(self) -> Callable[[int], None] | None:
        return self._maintenance.on_unsynced_evicted

    # ------------------------------------------------------------------ hot path

    def point_keys(self, point_ids: Sequence[str]) -> list[int]:
        """Idempotent registration: point_id -> small integer key stored in each reading."""
        return self._names.register(point_ids)

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
        self._writer.append(ts, keys, values, quality)

    def append_event(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        detail_json = json.dumps(dict(detail), separators=(",", ":"), default=str)
        self._writer.append_event(EventItem(ts, kind, source, actor, detail_json))

    async def flush(self) -> None:
        """Resolves once everything appended before the call is committed."""
        await asyncio.wrap_future(self._writer.flush_future())

    def flush_sync(self, timeout: float | None = None) -> None:
        self._writer.flush_future().result(timeout)

    # ------------------------------------------------------------------ health

    @property
    def last_commit_monotonic(self) -> float:
        return self._writer.last_commit_monotonic

    @property
    def commit_failing(self) -> bool:
        """The writer cannot commit right now (disk full, I/O error, locked); rows wait."""
        return self._writer.commit_failing

    @property
    def commit_failing_since(self) -> float | None:
        """``time.monotonic()`` when the current streak of failed commits began, or None."""
        return self._writer.commit_failing_since

    @property
    def commit_failures(self) -> int:
        """Failed commit attempts since open (the retry runs once a second)."""
        return self._writer.commit_failures

    @property
    def writer_alive(self) -> bool:
        return self._writer.alive

    @property
    def pending_rows(self) -> int:
        return self._writer.pending_rows

    @property
    def dropped_rows(self) -> int:
        return self._writer.dropped_rows

    @property
    def last_seq(self) -> int:
        """Highest committed seq."""
        return self._writer.last_seq

    def run_maintenance(self) -> None:
        """Run the size bound and retention now (normally periodic in the writer).

        Goes through the writer thread so the single-writer rule holds; blocks until done.
        """
        self._writer.request_maintenance(60.0)

    # ------------------------------------------------------------------ sync side (uplink)

    def read_unsynced(self, limit: int, after_seq: int | None = None) -> ReadingRows:
        """Up to ``limit`` unsynced readings, oldest first, above the cursor (or ``after_seq``
        if that is higher), skipping ranges acknowledged out of order."""
        return self._sync.read_unsynced(limit, after_seq)

    def read_unsynced_columns(self, limit: int, after_seq: int | None = None) -> ReadingColumns:
        """:meth:`read_unsynced` as typed columns (what the uplink's binary body is made of)."""
        return self._sync.read_unsynced_columns(limit, after_seq)

    def read_latest_columns(self, limit: int) -> ReadingColumns:
        """:meth:`read_latest` as typed columns."""
        return self._sync.read_latest_columns(limit)

    def read_latest(self, limit: int) -> ReadingRows:
        """The newest ``limit`` unsynced readings (live-first sending), in seq order."""
        return self._sync.read_latest(limit)

    def read_after(self, after_seq: int, limit: int, until_seq: int | None = None) -> ReadingRows:
        """Up to ``limit`` readings with ``after_seq < seq <= until_seq``, oldest first,
        ignoring the sync cursor: for a consumer keeping its own cursor over seq (Sparkplug).
        Blocking (query connection)."""
        return self._history.read_after(after_seq, limit, until_seq)

    def mark_synced(self, through_seq: int) -> None:
        """Advance the cursor to ``through_seq`` (never backwards, never past the last seq)."""
        self._sync.mark_synced(through_seq)

    def mark_range_synced(self, first_seq: int, last_seq: int) -> None:
        """Record the exact range ``first_seq..last_seq`` (inclusive) as acknowledged."""
        self._sync.mark_range_synced(first_seq, last_seq)

    def synced_through(self) -> int:
        return self._sync.synced_through()

    def add_rejected(
        self, first_seq: int, last_seq: int, status: int, reason: str, payload: bytes
    ) -> None:
        """Dead-letter a batch the receiver refused for good: kept with its payload for
        inspection, counted, and its seqs count as handled so the uplink moves on."""
        self._sync.add_rejected(first_seq, last_seq, status, reason, payload)

    def read_rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._sync.read_rejected(limit)

    def read_unsynced_events(self, limit: int) -> list[EventRow]:
        return self._sync.read_unsynced_events(limit)

    def mark_events_synced(self, through_id: int) -> None:
        """Advance the events cursor (never backwards, never past the last event id)."""
        self._sync.mark_events_synced(through_id)

    # ------------------------------------------------------------------ local queries

    def stats(self) -> BufferStats:
        conn = self._files.query()
        with self._files.query_lock:
            st = self._collect_stats(conn)
        st.pending_rows = self._writer.pending_rows
        st.dropped_rows = self._writer.dropped_rows
        return st

    def history(
        self, point_id: str, since_ts: float, until_ts: float | None = None, limit: int = 10_000
    ) -> ReadingRows:
        """Readings of one point with ``since_ts <= ts <= until_ts`` (epoch seconds), in seq
        order; if more than ``limit`` match, the newest ``limit``."""
        return self._history.history(point_id, since_ts, until_ts, limit)


def _buffer_is_a_sync_source(buffer: Buffer) -> SyncSource:
    # Checked by mypy (make typecheck): Buffer must keep satisfying what the uplink needs.
    return buffer
