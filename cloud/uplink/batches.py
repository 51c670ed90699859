"""Batch choice and encoding: what goes in the next request, and its body.

Oldest first, live first: without a backlog every batch is simply the next unsynced rows.
With a backlog (a full batch came back) fresh batches (the newest unsynced rows, via
``SyncSource.read_latest``) alternate with backlog batches, so the dashboard stays current
while history drains; the source keeps the out-of-order acknowledgements as islands.

Backfill: while more than ``BACKFILL_AFTER`` readings wait beyond the read position (and no
bandwidth cap is set), backlog batches grow to ``BACKFILL_BATCH`` readings. Each batch costs
a request, a receiver transaction (a commit: an fsync) and an ack commit here whatever its
size; measured on a 10 M backlog, 50,000-reading batches drain ~1.5x faster than 5,000 ones
and compress a third smaller (bench/backfill.py). Live batches keep ``batch_size``.

Events ride in at most one batch in flight (their cursor is a single "through id", so their
acks must stay in order). Point metadata goes along when a point is new or changed.

A batch without readings carries the range 0..0: acknowledging or dead-lettering it can never
touch a reading's sync state. :func:`split` halves a refused batch kind by kind, so one bad
row costs only itself.

Runs in a worker thread (``asyncio.to_thread``): SQLite reads and zstd are blocking.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from pydantic import ValidationError

from outpost.buffer.models import EventRow, ReadingColumns, ReadingRows
from outpost.buffer.source import SyncSource
from outpost.cloud.uplink.columnar_body import ColumnarEncoder
from outpost.cloud.uplink.session import Session
from outpost.cloud.wire import (
    COLUMNAR_CONTENT_TYPE,
    COLUMNAR_ZSTD_LEVEL,
    IngestBatch,
    PointMeta,
    WireEvent,
    columnar_readings,
    compress_body,
    encode_body,
)

log = structlog.get_logger(__name__)

BatchKind = Literal["backlog", "live", "split"]

#: Most metadata entries carried by one batch; more changed points go in the following batches.
_META_PER_BATCH = 2000
#: How often the (possibly large) point metadata is refreshed.
_META_REFRESH_S = 5.0
#: Under a bandwidth cap, aim for batches of about this many seconds of link time, so a fresh
#: batch is never stuck behind minutes of backlog upload and requests stay within timeouts.
_CAPPED_BATCH_SECONDS = 4.0
#: Backlog batch size during a backfill, and the backlog (readings beyond the read position)
#: that makes one. 50,000 readings are ~0.15 MB compressed, 1.5 MB of columns in memory, and
#: stay within the columnar encoder's fast path (<= 65,536 readings per batch).
BACKFILL_BATCH = 50_000
BACKFILL_AFTER = 500_000


@dataclass
class Batch:
    kind: BatchKind
    #: typed columns with the binary body (the default), rows with the JSON fallback
    rows: ReadingColumns | ReadingRows
    events: list[EventRow]
    metas: list[dict[str, Any]]
    first_seq: int
    last_seq: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the last refusal, for the log and the dead-letter table
    status: int = 0
    #: Data acknowledged (readings + events) when server errors on this batch (or the batch it
    #: was split from) began: a later ack proves the receiver stores data meanwhile.
    acked_before_5xx: int | None = None

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.events) + len(self.metas)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "readings": len(self.rows),
            "events": len(self.events),
            "points": len(self.metas),
        }


@dataclass
class ReadState:
    """In-memory read positions of one run(); after any restart the persisted cursor rules."""

    pos: int | None = None  # highest seq handed to a backlog batch (None: from the cursor)
    high: int = 0  # highest seq handed to any batch
    ev_high: int = 0  # highest event id handed to any batch
    behind: bool = False  # the last backlog read was full: there is more
    turn_live: bool = False
    events_in_flight: bool = False
    meta_sent: dict[str, str] = field(default_factory=dict)
    meta_cache: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    meta_at: float = -1e9
    meta_invalid: set[str] = field(default_factory=set)


class Planner:
    def __init__(
        self,
        session: Session,
        source: SyncSource,
        point_metadata: Callable[[], list[dict[str, Any]]] | None,
    ) -> None:
        self._session = session
        self._source = source
        self._point_metadata = point_metadata
        self._bytes_per_row = 8.0  # running estimate (compressed), sizes batches under a cap
        self._encoder = ColumnarEncoder()
        self.backfill_batch = BACKFILL_BATCH
        self.backfill_after = BACKFILL_AFTER

    def row_limit(self) -> int:
        limit = self._session.config.batch_size
        bucket = self._session.bucket
        if bucket is not None:
            fit = int(bucket.rate * _CAPPED_BATCH_SECONDS / max(self._bytes_per_row, 0.5))
            limit = max(50, min(limit, fit))
        return limit

    def prepare(self, st: ReadState) -> Batch | None:
        """Pick, read and encode the next batch. Runs in a worker thread."""
        cfg = self._session.config
        source = self._source
        limit = self.row_limit()
        binary = self._session.wire == "columnar"
        rows: ReadingColumns | ReadingRows | None = None
        kind: BatchKind = "backlog"
        if cfg.live_first and st.behind and st.turn_live:
            st.turn_live = False
            # Only rows committed after everything handed out so far count as fresh; skip the
            # read entirely when there are none (the common case during a pure backfill).
            newer = source.last_seq - st.high
            if newer > 0:
                latest = (source.read_latest_columns if binary else source.read_latest)(
                    min(limit, newer)
                )
                fresh = rows_after(latest, st.high)
                if len(fresh):
                    rows, kind = fresh, "live"
        if rows is None:
            read = source.read_unsynced_columns if binary else source.read_unsynced
            want = self._backlog_limit(st, limit)
            rows = read(want, after_seq=st.pos)
            st.behind = len(rows) >= want
            st.turn_live = True
            if len(rows):
                st.pos = rows.seq[-1]
        if len(rows):
            st.high = max(st.high, rows.seq[-1])
        events: list[EventRow] = []
        if not st.events_in_flight:
            events = [
                e for e in source.read_unsynced_events(cfg.event_batch_size) if e.id > st.ev_high
            ]
        if events:
            st.ev_high = events[-1].id
            st.events_in_flight = True
        metas = self._changed_metas(st)
        if not len(rows) and not events and not metas:
            return None
        first, last = (rows.seq[0], rows.seq[-1]) if len(rows) else (0, 0)
        batch = Batch(kind, rows, events, metas, first, last)
        self.encode(batch)
        return batch

    def _backlog_limit(self, st: ReadState, limit: int) -> int:
        """``limit``, or the backfill batch size while a large backlog waits (see the module
        docstring); never under a bandwidth cap, whose batches are sized by link time."""
        if (
            st.behind
            and st.pos is not None
            and self._session.bucket is None
            and self._source.last_seq - st.pos > self.backfill_after
        ):
            return max(limit, self.backfill_batch)
        return limit

    def _changed_metas(self, st: ReadState) -> list[dict[str, Any]]:
        if self._point_metadata is None:
            return []
        now = time.monotonic()
        if now - st.meta_at >= _META_REFRESH_S:
            st.meta_at = now
            cache = []
            for raw in self._point_metadata():
                try:
                    meta = PointMeta.model_validate(meta_clean(raw), strict=False)
                except ValidationError as exc:
                    pid = str(raw.get("point_id"))
                    if pid not in st.meta_invalid:
                        st.meta_invalid.add(pid)
                        log.warning(
                            "uplink.point_meta_invalid",
                            point_id=pid,
                            error=str(exc).replace("\n", " "),
                        )
                    continue
                dumped = meta.model_dump(mode="json")
                digest = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
                cache.append((meta.point_id, digest, dumped))
            st.meta_cache = cache
        out = []
        for pid, digest, dumped in st.meta_cache:
            if st.meta_sent.get(pid) != digest:
                # Optimistic: every prepared batch is delivered or dead-lettered, and a
                # restart of run() forgets this map and sends everything once more.
                st.meta_sent[pid] = digest
                out.append(dumped)
                if len(out) >= _META_PER_BATCH:
                    break
        return out

    def encode(self, batch: Batch) -> None:
        if self._session.wire == "columnar":
            self._encode_columnar(batch)
        else:
            self._encode_json(batch)
        n = len(batch.rows)
        if n >= 100:
            per_row = len(batch.body) / n
            self._bytes_per_row = 0.7 * self._bytes_per_row + 0.3 * per_row

    def _encode_columnar(self, batch: Batch) -> None:
        rows = batch.rows
        cols = rows if isinstance(rows, ReadingColumns) else ReadingColumns.from_rows(rows)
        extras: dict[str, Any] = {}
        if batch.events:
            extras["events"] = [
                {
                    "id": e.id,
                    "ts": round(e.ts * 1000.0),
                    "kind": e.kind,
                    "source": e.source or "",
                    "actor": e.actor or "",
                    "detail": e.detail,
                }
                for e in batch.events
            ]
        if batch.metas:
            extras["points"] = batch.metas
        raw = self._encoder.encode(
            self._session.gateway_id, batch.first_seq, batch.last_seq, cols, extras
        )
        batch.body, batch.headers = compress_body(
            raw, self._session.compression, zstd_level=COLUMNAR_ZSTD_LEVEL
        )
        batch.headers["Content-Type"] = COLUMNAR_CONTENT_TYPE

    def _encode_json(self, batch: Batch) -> None:
        rows = batch.rows.to_rows()
        readings = columnar_readings(rows.point_id, rows.ts, rows.value, rows.quality)
        events = [
            WireEvent.model_construct(
                id=e.id,
                ts=round(e.ts * 1000.0),
                kind=e.kind,
                source=e.source or "",
                actor=e.actor or "",
                detail=e.detail,
            )
            for e in batch.events
        ]
        points = [PointMeta.model_construct(**m) for m in batch.metas]
        model = IngestBatch.model_construct(
            gateway_id=self._session.gateway_id,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            readings=readings,
            events=events,
            points=points,
            schedule_version=None,
        )
        batch.body, batch.headers = encode_body(model, self._session.compression)


Rows = ReadingColumns | ReadingRows


def rows_after(rows: Rows, seq: int) -> Rows:
    if not len(rows) or rows.seq[0] > seq:
        return rows
    return rows.slice(bisect_right(rows.seq, seq), len(rows))  # seq is strictly increasing


def _slice(rows: Rows, a: int, b: int) -> Rows:
    return rows.slice(a, b)


def split(batch: Batch) -> list[Batch]:
    """Halves of a refused batch, kind by kind, so one bad row costs only itself."""
    parts = _halves(batch)
    for part in parts:
        part.acked_before_5xx = batch.acked_before_5xx
    return parts


def _halves(batch: Batch) -> list[Batch]:
    kinds = [bool(len(batch.rows)), bool(batch.events), bool(batch.metas)]
    if sum(kinds) > 1:
        parts = []
        if len(batch.rows):
            parts.append(Batch("split", batch.rows, [], [], batch.first_seq, batch.last_seq))
        if batch.events:
            parts.append(Batch("split", ReadingRows(), batch.events, [], 0, 0))
        if batch.metas:
            parts.append(Batch("split", ReadingRows(), [], batch.metas, 0, 0))
        return parts
    if len(batch.rows) > 1:
        mid = len(batch.rows) // 2
        lo, hi = _slice(batch.rows, 0, mid), _slice(batch.rows, mid, len(batch.rows))
        return [
            Batch("split", lo, [], [], lo.seq[0], lo.seq[-1]),
            Batch("split", hi, [], [], hi.seq[0], hi.seq[-1]),
        ]
    if len(batch.events) > 1:
        mid = len(batch.events) // 2
        return [
            Batch("split", ReadingRows(), half, [], batch.first_seq, batch.last_seq)
            for half in (batch.events[:mid], batch.events[mid:])
        ]
    if len(batch.metas) > 1:
        mid = len(batch.metas) // 2
        return [
            Batch("split", ReadingRows(), [], half, batch.first_seq, batch.last_seq)
            for half in (batch.metas[:mid], batch.metas[mid:])
        ]
    return []


def meta_clean(raw: dict[str, Any]) -> dict[str, Any]:
    known = PointMeta.model_fields
    out = {k: v for k, v in raw.items() if k in known and v is not None}
    for key in ("device", "units", "description"):
        if key in out:
            out[key] = str(out[key])
    if isinstance(out.get("tags"), dict):
        out["tags"] = {str(k): "" if v is None else str(v) for k, v in out["tags"].items()}
    return out
