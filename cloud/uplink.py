"""The agent's uplink: forwards what the buffer stored to the central receiver, exactly once.

Guarantees and how they are kept:

- Nothing is lost: the buffer's cursor moves only when the receiver acknowledged exactly the
  range of a batch (``IngestAck.first_seq/last_seq`` must echo the batch). A request that
  fails, times out or is cancelled leaves the cursor where it was, so the rows go again.
- Nothing is duplicated: a replay is harmless because the receiver writes idempotently
  (unique on point and time, events on gateway and event id). Replays happen after a lost
  ack, a SIGKILL between the receiver's commit and our ``mark_range_synced``, and so on.
- Oldest first, live first: without a backlog every batch is simply the next unsynced rows.
  With a backlog (a full batch came back) fresh batches (newest unsynced rows, via
  ``Buffer.read_latest``) alternate with backlog batches, so the dashboard stays current while
  history drains. Live ranges are acknowledged out of order; the buffer keeps them as islands.
- A batch the receiver refuses for its content (400/413/422) is bisected until the offending
  rows are isolated; those go to the buffer's dead-letter table (``outpost buffer stats``) and
  the rest is delivered. Auth failures (401/403) and everything transient (408, 429, 5xx,
  transport errors) are retried with capped, jittered exponential backoff, honouring
  ``Retry-After``. Data is never dead-lettered because of a credentials or link problem.

Up to ``max_in_flight`` batches (default 2) travel at once: the next batch is read from SQLite
and encoded in a worker thread, and parsed by the receiver, while the previous one is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import structlog
from pydantic import ValidationError

from outpost.buffer.models import EventRow, ReadingRows
from outpost.buffer.store import Buffer
from outpost.cloud.config import CloudConfig
from outpost.cloud.uplink_support import Backoff, TokenBucket, parse_retry_after, read_token, write_token
from outpost.cloud.wire import (
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    IngestAck,
    IngestBatch,
    PointMeta,
    WireEvent,
    columnar_readings,
    encode_body,
)

log = structlog.get_logger(__name__)

BatchKind = Literal["backlog", "live", "split"]

#: Statuses that mean "this batch's content is unacceptable": bisect, then dead-letter.
_BAD_BATCH = frozenset({400, 413, 422})
#: Most metadata entries carried by one batch; more changed points go in the following batches.
_META_PER_BATCH = 2000
#: How often the (possibly large) point metadata and buffer statistics are refreshed.
_META_REFRESH_S = 5.0
_STATS_REFRESH_S = 5.0
#: Under a bandwidth cap, aim for batches of about this many seconds of link time, so a fresh
#: batch is never stuck behind minutes of backlog upload and requests stay within timeouts.
_CAPPED_BATCH_SECONDS = 4.0


class UplinkConfigError(Exception):
    """The [cloud] configuration cannot work as given (e.g. an unreadable CA bundle)."""


class UplinkAuthError(Exception):
    """The receiver refused our credentials (401/403)."""


@dataclass
class _Batch:
    kind: BatchKind
    rows: ReadingRows
    events: list[EventRow]
    metas: list[dict[str, Any]]
    first_seq: int
    last_seq: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the last refusal, for the log and the dead-letter table
    status: int = 0

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
class _ReadState:
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


@dataclass
class _Counters:
    connected: bool = False
    enrolled: bool = False
    last_success_ts: float | None = None
    last_error: str | None = None
    last_error_ts: float | None = None
    retry_at: float | None = None
    bytes_sent: int = 0
    readings_sent: int = 0
    events_sent: int = 0
    batches_sent: int = 0
    batches_failed: int = 0
    duplicates_acked: int = 0
    rejected_batches: int = 0
    rejected_rows: int = 0
    heartbeats_sent: int = 0
    last_heartbeat_ts: float | None = None


class Uplink:
    def __init__(
        self,
        config: CloudConfig,
        *,
        gateway_id: str,
        data_dir: Path,
        buffer: Buffer,
        heartbeat_source: Callable[[], dict[str, Any]],
        point_metadata: Callable[[], list[dict[str, Any]]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` replaces httpx's default transport (tests may pass a real one with
        special socket options); everything else comes from ``config``."""
        self.config = config
        self.gateway_id = gateway_id
        self.data_dir = Path(data_dir)
        self.buffer = buffer
        self.heartbeat_source = heartbeat_source
        self.point_metadata = point_metadata
        self._transport = transport
        self._c = _Counters()
        self._stats: dict[str, Any] = {}
        self._stats_at = 0.0
        self._wake = asyncio.Event()
        self._token: str | None = None
        self._bucket = (
            TokenBucket(config.max_bytes_per_s) if config.max_bytes_per_s is not None else None
        )
        self._compression = config.compression
        self._bytes_per_row = 8.0  # running estimate (compressed), sizes batches under a cap
        self._reset_positions()

    # ------------------------------------------------------------------ public

    def notify(self) -> None:
        """Hint that new rows were committed (optional: the uplink also polls)."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        c = self._c
        now = time.time()
        st = self._stats
        return {
            "url": self.config.url,
            "enrolled": c.enrolled,
            "connected": c.connected,
            "last_success_ts": c.last_success_ts,
            "last_success_age_s": (
                round(now - c.last_success_ts, 1) if c.last_success_ts is not None else None
            ),
            "last_error": c.last_error,
            "last_error_ts": c.last_error_ts,
            "retry_in_s": (
                round(max(0.0, c.retry_at - time.monotonic()), 1)
                if c.retry_at is not None
                else None
            ),
            "backlog_rows": st.get("unsynced_rows"),
            "oldest_unsynced_age_s": st.get("oldest_unsynced_age_s"),
            "unsynced_events": st.get("unsynced_events"),
            "rejected_batches": max(int(st.get("rejected_batches") or 0), c.rejected_batches),
            "bytes_sent": c.bytes_sent,
            "readings_sent": c.readings_sent,
            "events_sent": c.events_sent,
            "batches_sent": c.batches_sent,
            "batches_failed": c.batches_failed,
            "duplicates_acked": c.duplicates_acked,
            "heartbeats_sent": c.heartbeats_sent,
            "last_heartbeat_ts": c.last_heartbeat_ts,
            "max_bytes_per_s": self.config.max_bytes_per_s,
            "compression": self._compression,
        }

    async def run(self) -> None:
        """Enroll if needed, then sync and heartbeat until cancelled."""
        self._reset_positions()
        cfg = self.config
        timeout = httpx.Timeout(
            connect=cfg.connect_timeout,
            read=cfg.read_timeout,
            write=cfg.read_timeout,
            pool=cfg.connect_timeout,
        )
        verify: ssl.SSLContext | bool = True
        if cfg.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(cfg.ca_file))
            except (OSError, ssl.SSLError) as exc:
                self._error(f"[cloud] ca_file {cfg.ca_file}: {_describe(exc)}")
                raise UplinkConfigError(f"[cloud] ca_file {cfg.ca_file}: {exc}") from None
        limits = httpx.Limits(
            max_connections=cfg.max_in_flight + 2,
            max_keepalive_connections=cfg.max_in_flight + 1,
            keepalive_expiry=60,
        )
        # TCP_NODELAY: httpx writes headers and body separately; with Nagle and the peer's
        # delayed ACK every request would stall ~40 ms (measured: 50 ms per batch → 5 ms).
        transport = self._transport or httpx.AsyncHTTPTransport(
            verify=verify,
            limits=limits,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        async with httpx.AsyncClient(
            base_url=cfg.url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"outpost-uplink/{self.gateway_id}"},
        ) as client:
            await self._refresh_stats(force=True)
            self._token = await self._ensure_token(client)
            self._c.enrolled = True
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeat_loop(client), name="uplink-heartbeat")
                tg.create_task(self._sync_loop(client), name="uplink-sync")

    # ------------------------------------------------------------------ enrollment

    async def _ensure_token(self, client: httpx.AsyncClient) -> str:
        path = self.config.token_path(self.data_dir)
        backoff = Backoff(self.config.backoff_min, self.config.backoff_max)
        warned = False
        while True:
            token = await asyncio.to_thread(read_token, path)
            if token is not None:
                return token
            enrollment = self.config.resolve_enrollment_token()
            if enrollment is None:
                if not warned:
                    log.error(
                        "uplink.no_credentials",
                        token_file=str(path),
                        hint="set [cloud] enrollment_token (or _env/_file) from "
                        "`outpost cloud enroll GATEWAY_ID`, or place the gateway token "
                        "in token_file",
                    )
                    warned = True
                self._error("no gateway token and no enrollment token configured")
                await asyncio.sleep(self.config.backoff_max)
                continue
            try:
                token = await self._enroll(client, enrollment)
            except (httpx.HTTPError, UplinkAuthError, ValueError) as exc:
                self._error(f"enrollment failed: {_describe(exc)}")
                delay = backoff.next_delay()
                if isinstance(exc, UplinkAuthError):
                    # A refused token will not get better by hammering; an operator must act.
                    delay = max(delay, self.config.backoff_max)
                log.error("uplink.enroll_failed", error=_describe(exc), retry_in_s=round(delay, 1))
                await self._sleep_retry(delay)
                continue
            await asyncio.to_thread(write_token, path, token)
            log.info("uplink.enrolled", gateway=self.gateway_id, token_file=str(path))
            return token

    async def _enroll(self, client: httpx.AsyncClient, enrollment_token: str) -> str:
        req = EnrollRequest(gateway_id=self.gateway_id, enrollment_token=enrollment_token)
        resp = await client.post(
            "/api/v1/enroll",
            content=req.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
        if resp.status_code in (400, 401, 403, 404, 409, 410, 422):
            raise UplinkAuthError(f"HTTP {resp.status_code}: {_detail(resp)}")
        if resp.status_code >= 300:
            raise ValueError(f"HTTP {resp.status_code}: {_detail(resp)}")
        answer = EnrollResponse.model_validate_json(resp.content)
        if answer.gateway_id != self.gateway_id:
            raise ValueError(f"receiver enrolled {answer.gateway_id!r}, not {self.gateway_id!r}")
        return answer.gateway_token

    # ------------------------------------------------------------------ sync loop

    def _reset_positions(self) -> None:
        # A fresh object rather than fields reset in place: a worker thread of a cancelled
        # run() may still be finishing a _prepare on the old one and must not move ours.
        self._st = _ReadState()

    async def _sync_loop(self, client: httpx.AsyncClient) -> None:
        # Up to max_in_flight batches travel at once: while the receiver writes one, the next
        # is read, encoded and parsed. Acks may then arrive out of order, which the buffer's
        # range marks handle; events ride in at most one in-flight batch (their cursor is a
        # single "through id", so their acks must stay in order).
        st = self._st
        slots = asyncio.Semaphore(self.config.max_in_flight)
        inflight: set[asyncio.Task[None]] = set()

        async def deliver(batch: _Batch) -> None:
            try:
                await self._deliver(client, batch)
            finally:
                if batch.events:
                    st.events_in_flight = False
                slots.release()

        async with asyncio.TaskGroup() as tg:
            while True:
                await slots.acquire()
                try:
                    batch = await asyncio.to_thread(self._prepare, st)
                except BaseException:
                    slots.release()
                    raise
                if batch is None:
                    slots.release()
                    if not inflight:
                        # Idle with nothing in flight: read from the persisted cursor again
                        # (picks up anything an in-memory position skipped, e.g. eviction).
                        st.pos = None
                        st.ev_high = 0
                    await self._refresh_stats()
                    await self._idle()
                    continue
                task = tg.create_task(deliver(batch))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                await self._refresh_stats()

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.config.flush_interval)

    def _row_limit(self) -> int:
        limit = self.config.batch_size
        if self._bucket is not None:
            fit = int(self._bucket.rate * _CAPPED_BATCH_SECONDS / max(self._bytes_per_row, 0.5))
            limit = max(50, min(limit, fit))
        return limit

    # -- preparation (worker thread) ------------------------------------------------------

    def _prepare(self, st: _ReadState) -> _Batch | None:
        """Pick, read and encode the next batch. Runs in a worker thread."""
        limit = self._row_limit()
        rows: ReadingRows | None = None
        kind: BatchKind = "backlog"
        if self.config.live_first and st.behind and st.turn_live:
            st.turn_live = False
            # Only rows committed after everything handed out so far count as fresh; skip the
            # read entirely when there are none (the common case during a pure backfill).
            newer = self.buffer.last_seq - st.high
            if newer > 0:
                fresh = _rows_after(self.buffer.read_latest(min(limit, newer)), st.high)
                if len(fresh):
                    rows, kind = fresh, "live"
        if rows is None:
            rows = self.buffer.read_unsynced(limit, after_seq=st.pos)
            st.behind = len(rows) >= limit
            st.turn_live = True
            if len(rows):
                st.pos = rows.seq[-1]
        if len(rows):
            st.high = max(st.high, rows.seq[-1])
        events: list[EventRow] = []
        if not st.events_in_flight:
            events = [
                e
                for e in self.buffer.read_unsynced_events(self.config.event_batch_size)
                if e.id > st.ev_high
            ]
        if events:
            st.ev_high = events[-1].id
            st.events_in_flight = True
        metas = self._changed_metas(st)
        if not len(rows) and not events and not metas:
            return None
        # A batch without readings carries the range 0..0: acknowledging or dead-lettering it
        # can never touch a reading's sync state.
        first, last = (rows.seq[0], rows.seq[-1]) if len(rows) else (0, 0)
        batch = _Batch(kind, rows, events, metas, first, last)
        self._encode(batch)
        return batch

    def _changed_metas(self, st: _ReadState) -> list[dict[str, Any]]:
        if self.point_metadata is None:
            return []
        now = time.monotonic()
        if now - st.meta_at >= _META_REFRESH_S:
            st.meta_at = now
            cache = []
            for raw in self.point_metadata():
                try:
                    meta = PointMeta.model_validate(_meta_clean(raw), strict=False)
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

    def _encode(self, batch: _Batch) -> None:
        rows = batch.rows
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
            gateway_id=self.gateway_id,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            readings=readings,
            events=events,
            points=points,
            schedule_version=None,
        )
        batch.body, batch.headers = encode_body(model, self._compression)
        if len(rows) >= 100:
            per_row = len(batch.body) / len(rows)
            self._bytes_per_row = 0.7 * self._bytes_per_row + 0.3 * per_row

    # -- delivery ---------------------------------------------------------------------------

    async def _deliver(self, client: httpx.AsyncClient, batch: _Batch) -> None:
        """Send until acknowledged or dead-lettered; only cancellation ends it otherwise."""
        backoff = Backoff(self.config.backoff_min, self.config.backoff_max)
        while True:
            outcome, delay_hint = await self._attempt(client, batch)
            if outcome == "acked":
                return
            if outcome == "rejected":
                # Only this batch, or everything? A front end or a receiver in trouble can
                # answer 400 to anything; bisecting and dead-lettering would then throw
                # good data away row by row. A well-formed empty batch tells them apart.
                if await self._probe(client):
                    await self._reject_or_split(client, batch)
                    return
                log.error(
                    "uplink.refusal_not_batch_specific", error=batch.error, **batch.describe()
                )
            self._c.batches_failed += 1
            delay = backoff.next_delay(delay_hint)
            if outcome == "auth":
                # An operator may have re-enrolled by hand and replaced the token file.
                path = self.config.token_path(self.data_dir)
                fresh = await asyncio.to_thread(read_token, path)
                if fresh is not None and fresh != self._token:
                    log.info("uplink.token_reloaded", token_file=str(path))
                    self._token = fresh
                    continue
                delay = max(delay, min(self.config.backoff_max, 30.0))
            log.warning(
                "uplink.retry",
                retry_in_s=round(delay, 2),
                error=batch.error,
                **batch.describe(),
            )
            await self._sleep_retry(delay)

    async def _attempt(self, client: httpx.AsyncClient, batch: _Batch) -> tuple[str, float | None]:
        """One POST. Returns (outcome, retry-after seconds)."""
        if self._bucket is not None:
            await self._bucket.acquire(len(batch.body))
        headers = dict(batch.headers)
        headers["Authorization"] = f"Bearer {self._token}"
        t0 = time.perf_counter()
        try:
            resp = await client.post("/api/v1/ingest", content=batch.body, headers=headers)
        except httpx.HTTPError as exc:
            self._c.connected = False
            batch.error, batch.status = f"ingest: {_describe(exc)}", 0
            self._error(batch.error)
            return "transient", None
        self._c.bytes_sent += len(batch.body)
        status = resp.status_code
        if status in (200, 201):
            try:
                ack = IngestAck.model_validate_json(resp.content)
            except ValidationError as exc:
                self._error(f"ingest: unreadable acknowledgment: {exc.error_count()} error(s)")
                return "transient", None
            if (ack.gateway_id, ack.first_seq, ack.last_seq) != (
                self.gateway_id,
                batch.first_seq,
                batch.last_seq,
            ):
                # Never advance on an ack for something else: resend and let dedup sort it out.
                self._error(
                    f"ingest: ack for {ack.gateway_id} {ack.first_seq}..{ack.last_seq} does not "
                    f"match the batch {batch.first_seq}..{batch.last_seq}"
                )
                return "transient", None
            await self._mark_delivered(batch)
            c = self._c
            c.connected = True
            c.last_success_ts = time.time()
            c.retry_at = None
            c.batches_sent += 1
            c.readings_sent += len(batch.rows)
            c.events_sent += len(batch.events)
            c.duplicates_acked += ack.readings_duplicate
            log.debug(
                "uplink.batch_acked",
                ms=round((time.perf_counter() - t0) * 1000, 1),
                bytes=len(batch.body),
                inserted=ack.readings_inserted,
                duplicate=ack.readings_duplicate,
                **batch.describe(),
            )
            return "acked", None
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        detail = _detail(resp)
        batch.error, batch.status = f"ingest: HTTP {status}: {detail}", status
        self._error(batch.error)
        if status in (401, 403):
            self._c.connected = False
            log.error(
                "uplink.auth_rejected",
                status=status,
                detail=detail,
                hint="the gateway token was refused (revoked or re-enrolled elsewhere?); "
                "data stays buffered. To re-enroll, delete the token file and "
                "configure a fresh enrollment token.",
                token_file=str(self.config.token_path(self.data_dir)),
            )
            return "auth", retry_after
        self._c.connected = status < 500
        if status == 415 and self._compression == "zstd":
            log.warning("uplink.zstd_refused", hint="receiver does not take zstd; using gzip")
            self._compression = "gzip"
            await asyncio.to_thread(self._encode, batch)
            return "transient", 0.0
        if status in _BAD_BATCH:
            return "rejected", None
        # 404/405/408/409/429/5xx...: a link, deployment or load problem, not this batch.
        return "transient", retry_after

    async def _mark_delivered(self, batch: _Batch) -> None:
        def mark() -> None:
            if len(batch.rows):
                self.buffer.mark_range_synced(batch.first_seq, batch.last_seq)
            if batch.events:
                self.buffer.mark_events_synced(batch.events[-1].id)

        # Shielded: once the receiver has the batch, recording that is always worth finishing
        # (the thread would run to completion anyway; this keeps the counters truthful).
        await asyncio.shield(asyncio.to_thread(mark))

    async def _probe(self, client: httpx.AsyncClient) -> bool:
        """Does the receiver accept a well-formed empty batch right now?"""
        empty = IngestBatch(gateway_id=self.gateway_id, first_seq=0, last_seq=0)
        body, headers = encode_body(empty, self._compression)
        headers["Authorization"] = f"Bearer {self._token}"
        try:
            resp = await client.post("/api/v1/ingest", content=body, headers=headers)
        except httpx.HTTPError:
            return False
        self._c.bytes_sent += len(body)
        return resp.status_code in (200, 201)

    async def _reject_or_split(self, client: httpx.AsyncClient, batch: _Batch) -> None:
        parts = _split(batch)
        if parts:
            log.warning(
                "uplink.batch_bisect",
                error=batch.error,
                parts=len(parts),
                **batch.describe(),
            )
            for part in parts:
                await asyncio.to_thread(self._encode, part)
                await self._deliver(client, part)
            return
        reason = batch.error or "rejected"
        status = batch.status
        if batch.events:
            reason += f" (events {batch.events[0].id}..{batch.events[-1].id})"
        if batch.metas:
            reason += f" (point metadata: {', '.join(m['point_id'] for m in batch.metas[:5])})"
        await asyncio.to_thread(
            self.buffer.add_rejected, batch.first_seq, batch.last_seq, status, reason, batch.body
        )
        if batch.events:
            await asyncio.to_thread(self.buffer.mark_events_synced, batch.events[-1].id)
        self._c.rejected_batches += 1
        self._c.rejected_rows += batch.size
        log.error("uplink.batch_dead_lettered", reason=reason, **batch.describe())

    async def _sleep_retry(self, delay: float) -> None:
        self._c.retry_at = time.monotonic() + delay
        try:
            await asyncio.sleep(delay)
        finally:
            self._c.retry_at = None

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat_loop(self, client: httpx.AsyncClient) -> None:
        while True:
            try:
                await self._send_heartbeat(client)
            except httpx.HTTPError as exc:
                self._c.connected = False
                log.warning("uplink.heartbeat_failed", error=_describe(exc))
            except Exception as exc:  # a faulty heartbeat source must not stop the data sync
                log.exception("uplink.heartbeat_error", error=_describe(exc))
            await asyncio.sleep(self.config.heartbeat_interval)

    def heartbeat_payload(self) -> Heartbeat:
        src = dict(self.heartbeat_source())
        st = self._stats
        devices = {}
        for name, dev in (src.get("devices") or {}).items():
            last_ok = dev.get("last_ok_ts")
            devices[name] = {
                "connected": bool(dev.get("connected")),
                "last_ok_ts": _epoch_ms(last_ok),
                "error": dev.get("error"),
            }
        uplink = {
            k: v
            for k, v in self.status().items()
            if k
            in (
                "connected",
                "last_success_ts",
                "last_error",
                "rejected_batches",
                "bytes_sent",
                "readings_sent",
                "backlog_rows",
            )
        }
        data = {
            "gateway_id": self.gateway_id,
            "ts": round(time.time() * 1000),
            "mode": str(src.get("mode") or "normal"),
            "agent_version": str(src.get("agent_version") or "unknown"),
            "schedule_version": src.get("schedule_version"),
            "devices": devices,
            "buffer_rows": int(st.get("rows") or 0),
            "unsynced_rows": int(st.get("unsynced_rows") or 0),
            "oldest_unsynced_age_s": st.get("oldest_unsynced_age_s"),
            "uplink": uplink,
            "active_alarms": {str(k): int(v) for k, v in (src.get("active_alarms") or {}).items()},
        }
        return Heartbeat.model_validate(data, strict=False)

    async def _send_heartbeat(self, client: httpx.AsyncClient) -> None:
        await self._refresh_stats()
        try:
            hb = self.heartbeat_payload()
        except (ValidationError, TypeError, ValueError) as exc:
            log.error("uplink.heartbeat_invalid", error=str(exc).replace("\n", " "))
            return
        body, headers = encode_body(hb, self._compression)
        if self._bucket is not None:
            await self._bucket.acquire(len(body))
        headers["Authorization"] = f"Bearer {self._token}"
        resp = await client.post(
            f"/api/v1/gateways/{self.gateway_id}/heartbeat", content=body, headers=headers
        )
        self._c.bytes_sent += len(body)
        if resp.status_code >= 300:
            self._error(f"heartbeat: HTTP {resp.status_code}: {_detail(resp)}")
            if resp.status_code in (401, 403):
                self._c.connected = False
            log.warning("uplink.heartbeat_refused", status=resp.status_code, detail=_detail(resp))
            return
        self._c.heartbeats_sent += 1
        self._c.last_heartbeat_ts = time.time()
        self._c.connected = True

    # ------------------------------------------------------------------ helpers

    async def _refresh_stats(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._stats_at < _STATS_REFRESH_S:
            return
        self._stats_at = now
        try:
            st = await asyncio.to_thread(self.buffer.stats)
        except Exception as exc:  # stats are cosmetic; never let them stop the sync
            log.warning("uplink.stats_failed", error=_describe(exc))
            return
        self._stats = st.to_dict()

    def _error(self, message: str) -> None:
        self._c.last_error = message
        self._c.last_error_ts = time.time()


# ---------------------------------------------------------------------- module helpers


def _rows_after(rows: ReadingRows, seq: int) -> ReadingRows:
    if not len(rows) or rows.seq[0] > seq:
        return rows
    i = 0
    n = len(rows.seq)
    while i < n and rows.seq[i] <= seq:
        i += 1
    return _slice(rows, i, n)


def _slice(rows: ReadingRows, a: int, b: int) -> ReadingRows:
    return ReadingRows(
        seq=rows.seq[a:b],
        ts=rows.ts[a:b],
        point_id=rows.point_id[a:b],
        value=rows.value[a:b],
        quality=rows.quality[a:b],
    )


def _split(batch: _Batch) -> list[_Batch]:
    """Halves of a refused batch, kind by kind, so one bad row costs only itself."""
    kinds = [bool(len(batch.rows)), bool(batch.events), bool(batch.metas)]
    if sum(kinds) > 1:
        parts = []
        if len(batch.rows):
            parts.append(_Batch("split", batch.rows, [], [], batch.first_seq, batch.last_seq))
        if batch.events:
            parts.append(_Batch("split", ReadingRows(), batch.events, [], 0, 0))
        if batch.metas:
            parts.append(_Batch("split", ReadingRows(), [], batch.metas, 0, 0))
        return parts
    if len(batch.rows) > 1:
        mid = len(batch.rows) // 2
        lo, hi = _slice(batch.rows, 0, mid), _slice(batch.rows, mid, len(batch.rows))
        return [
            _Batch("split", lo, [], [], lo.seq[0], lo.seq[-1]),
            _Batch("split", hi, [], [], hi.seq[0], hi.seq[-1]),
        ]
    for name in ("events", "metas"):
        items = getattr(batch, name)
        if len(items) > 1:
            mid = len(items) // 2
            out = []
            for half in (items[:mid], items[mid:]):
                part = _Batch("split", ReadingRows(), [], [], batch.first_seq, batch.last_seq)
                setattr(part, name, half)
                out.append(part)
            return out
    return []


def _meta_clean(raw: dict[str, Any]) -> dict[str, Any]:
    known = PointMeta.model_fields
    out = {k: v for k, v in raw.items() if k in known and v is not None}
    for key in ("device", "units", "description"):
        if key in out:
            out[key] = str(out[key])
    if isinstance(out.get("tags"), dict):
        out["tags"] = {str(k): "" if v is None else str(v) for k, v in out["tags"].items()}
    return out


def _epoch_ms(ts: Any) -> int | None:
    if ts is None:
        return None
    t = float(ts)
    # Seconds (the agent's clock values) or already milliseconds.
    return round(t * 1000.0) if t < 1e11 else round(t)


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)[:500]
    return json.dumps(body)[:300]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
