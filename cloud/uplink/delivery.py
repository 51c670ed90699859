"""Delivery of one batch: send until acknowledged or dead-lettered.

Guarantees:

- Nothing is lost: the source's cursor moves only when the receiver acknowledged exactly the
  range of a batch (``IngestAck.first_seq/last_seq`` must echo the batch). A request that
  fails, times out or is cancelled leaves the cursor where it was, so the rows go again.
- Nothing is duplicated: a replay is harmless because the receiver writes idempotently
  (unique on point and time, events on gateway and event id).
- Each answer is classified: acknowledged; refused for its content (400/413/422); auth
  (401/403); server error (a 5xx other than 503, without Retry-After); transient (transport
  errors, 408, 429, 503, anything with Retry-After, anything else). A content refusal is
  checked against a well-formed empty batch first (a front end or a receiver in trouble can
  answer 400 to anything): only if the receiver accepts that is the batch bisected until the
  offending rows are isolated; those go to the source's dead letters and the rest is
  delivered. Data is never dead-lettered because of a credentials or link problem.
- A batch that keeps failing with a server error (3 times; once for a part of a batch
  already being bisected) while the empty batch is accepted is batch-specific too (a row the
  receiver cannot store makes it fail every time, and would stall the sync for good): it is
  bisected the same way. A single row or event is dead-lettered for a server error only once
  the receiver has acknowledged other data since the failures began, so a receiver that
  fails every write (but answers the empty batch) costs delay, never data.
- Retries use one policy (:func:`~outpost.cloud.uplink.support.retry_backoff`): capped exponential
  backoff with full jitter, never below the receiver's ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import httpx
import structlog
from pydantic import ValidationError

from outpost.buffer.models import ReadingColumns
from outpost.buffer.source import SyncSource
from outpost.cloud.uplink.batches import Batch, Planner, split
from outpost.cloud.uplink.columnar_body import encode_columnar
from outpost.cloud.uplink.session import Session, describe, detail
from outpost.cloud.uplink.support import parse_retry_after, read_token, retry_backoff
from outpost.cloud.wire import (
    COLUMNAR_CONTENT_TYPE,
    IngestAck,
    IngestBatch,
    compress_body,
    encode_body,
)

log = structlog.get_logger(__name__)

Outcome = Literal["acked", "rejected", "server_error", "auth", "transient"]

#: Statuses that mean "this batch's content is unacceptable": bisect, then dead-letter.
_BAD_BATCH = frozenset({400, 413, 422})
#: Server errors in a row before a batch (not yet being bisected) counts as the cause.
_SERVER_ERROR_STRIKES = 3


class Delivery:
    def __init__(self, session: Session, source: SyncSource, planner: Planner) -> None:
        self._session = session
        self._source = source
        self._planner = planner

    async def deliver(self, client: httpx.AsyncClient, batch: Batch) -> None:
        """Send until acknowledged or dead-lettered; only cancellation ends it otherwise."""
        session = self._session
        cfg = session.config
        backoff = retry_backoff(cfg.backoff_min, cfg.backoff_max)
        c = session.counters
        strikes = 0
        while True:
            acked = c.readings_sent + c.events_sent  # other data stored before this attempt
            outcome, delay_hint = await self._attempt(client, batch)
            if outcome == "acked":
                return
            if outcome == "server_error":
                strikes += 1
                if await self._server_error_is_batch_specific(client, batch, strikes, acked):
                    await self._reject_or_split(client, batch)
                    return
            if outcome == "rejected":
                if await self._binary_refused(client, batch):
                    continue
                # Only this batch, or everything? A well-formed empty batch tells them apart.
                if await self._probe(client):
                    await self._reject_or_split(client, batch)
                    return
                log.error(
                    "uplink.refusal_not_batch_specific", error=batch.error, **batch.describe()
                )
            session.counters.batches_failed += 1
            delay = backoff.next_delay(delay_hint)
            if outcome == "auth":
                # An operator may have re-enrolled by hand and replaced the token file.
                fresh = await asyncio.to_thread(read_token, session.token_path)
                if fresh is not None and fresh != session.token:
                    log.info("uplink.token_reloaded", token_file=str(session.token_path))
                    session.token = fresh
                    continue
                delay = max(delay, min(cfg.backoff_max, 30.0))
            log.warning(
                "uplink.retry",
                retry_in_s=round(delay, 2),
                error=batch.error,
                **batch.describe(),
            )
            await session.sleep_retry(delay)

    async def _attempt(
        self, client: httpx.AsyncClient, batch: Batch
    ) -> tuple[Outcome, float | None]:
        """One POST. Returns (outcome, retry-after seconds)."""
        session = self._session
        c = session.counters
        if session.bucket is not None:
            await session.bucket.acquire(len(batch.body))
        t0 = time.perf_counter()
        try:
            resp = await client.post(
                "/api/v1/ingest", content=batch.body, headers=session.auth(batch.headers)
            )
        except httpx.HTTPError as exc:
            c.connected = False
            batch.error, batch.status = f"ingest: {describe(exc)}", 0
            session.error(batch.error)
            return "transient", None
        c.bytes_sent += len(batch.body)
        status = resp.status_code
        if status in (200, 201):
            try:
                ack = IngestAck.model_validate_json(resp.content)
            except ValidationError as exc:
                session.error(f"ingest: unreadable acknowledgment: {exc.error_count()} error(s)")
                return "transient", None
            if (ack.gateway_id, ack.first_seq, ack.last_seq) != (
                session.gateway_id,
                batch.first_seq,
                batch.last_seq,
            ):
                # Never advance on an ack for something else: resend and let dedup sort it out.
                session.error(
                    f"ingest: ack for {ack.gateway_id} {ack.first_seq}..{ack.last_seq} does not "
                    f"match the batch {batch.first_seq}..{batch.last_seq}"
                )
                return "transient", None
            await self._mark_delivered(batch)
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
        why = detail(resp)
        batch.error, batch.status = f"ingest: HTTP {status}: {why}", status
        session.error(batch.error)
        if status in (401, 403):
            c.connected = False
            log.error(
                "uplink.auth_rejected",
                status=status,
                detail=why,
                hint="the gateway token was refused (revoked or re-enrolled elsewhere?); "
                "data stays buffered. To re-enroll, delete the token file and "
                "configure a fresh enrollment token.",
                token_file=str(session.token_path),
            )
            return "auth", retry_after
        c.connected = status < 500
        if status == 415 and session.compression == "zstd":
            log.warning("uplink.zstd_refused", hint="receiver does not take zstd; using gzip")
            session.compression = "gzip"
            await asyncio.to_thread(self._planner.encode, batch)
            return "transient", 0.0
        if status in _BAD_BATCH:
            return "rejected", None
        if status >= 500 and status != 503 and retry_after is None:
            return "server_error", None
        # 404/405/408/409/429/503...: a link, deployment or load problem, not this batch.
        return "transient", retry_after

    async def _server_error_is_batch_specific(
        self, client: httpx.AsyncClient, batch: Batch, strikes: int, acked: int
    ) -> bool:
        """``acked``: data acknowledged before the attempt that just failed. A single row is
        blamed only if other data was stored after the failures began and before it failed
        again (an ack that comes later may just mean the receiver has recovered)."""
        if batch.acked_before_5xx is None:
            batch.acked_before_5xx = acked
        if strikes < (1 if batch.kind == "split" else _SERVER_ERROR_STRIKES):
            return False
        if not await self._probe(client):
            return False  # the receiver is in trouble, not this batch
        if split(batch) or acked > batch.acked_before_5xx:
            log.error(
                "uplink.server_error_batch_specific",
                error=batch.error,
                strikes=strikes,
                **batch.describe(),
            )
            return True
        log.warning(
            "uplink.server_error_unproven",
            hint="no data acknowledged since the failures began: retrying, not dead-lettering",
            error=batch.error,
            **batch.describe(),
        )
        return False

    async def _mark_delivered(self, batch: Batch) -> None:
        source = self._source

        def mark() -> None:
            if len(batch.rows):
                source.mark_range_synced(batch.first_seq, batch.last_seq)
            if batch.events:
                source.mark_events_synced(batch.events[-1].id)

        # Shielded: once the receiver has the batch, recording that is always worth finishing
        # (the thread would run to completion anyway; this keeps the counters truthful).
        await asyncio.shield(asyncio.to_thread(mark))

    async def _binary_refused(self, client: httpx.AsyncClient, batch: Batch) -> bool:
        """A receiver that predates the binary body refuses every one of them (it reads them
        as JSON): when an empty binary batch is refused but an empty JSON batch accepted,
        switch this session to JSON and re-encode, so nothing is bisected or dead-lettered."""
        session = self._session
        if batch.headers.get("Content-Type") != COLUMNAR_CONTENT_TYPE:
            return False
        if session.wire == "json":  # switched while this batch was in flight
            await asyncio.to_thread(self._planner.encode, batch)
            return True
        if await self._probe(client):
            return False
        session.wire = "json"
        if not await self._probe(client):
            session.wire = "columnar"  # nothing is accepted: not a question of the format
            return False
        log.warning(
            "uplink.columnar_refused",
            hint="the receiver does not take the binary columnar body; sending JSON",
            error=batch.error,
        )
        await asyncio.to_thread(self._planner.encode, batch)
        return True

    async def _probe(self, client: httpx.AsyncClient) -> bool:
        """Does the receiver accept a well-formed empty batch (in the session's body format)
        right now?"""
        session = self._session
        if session.wire == "columnar":
            raw = encode_columnar(session.gateway_id, 0, 0, ReadingColumns())
            body, headers = compress_body(raw, session.compression)
            headers["Content-Type"] = COLUMNAR_CONTENT_TYPE
        else:
            empty = IngestBatch(gateway_id=session.gateway_id, first_seq=0, last_seq=0)
            body, headers = encode_body(empty, session.compression)
        try:
            resp = await client.post("/api/v1/ingest", content=body, headers=session.auth(headers))
        except httpx.HTTPError:
            return False
        session.counters.bytes_sent += len(body)
        return resp.status_code in (200, 201)

    async def _reject_or_split(self, client: httpx.AsyncClient, batch: Batch) -> None:
        parts = split(batch)
        if parts:
            log.warning(
                "uplink.batch_bisect",
                error=batch.error,
                parts=len(parts),
                **batch.describe(),
            )
            for part in parts:
                await asyncio.to_thread(self._planner.encode, part)
            if sum(1 for p in parts if p.events) > 1:
                # Event halves go in order: their cursor is a single "through id".
                for part in parts:
                    await self.deliver(client, part)
                return
            # The others side by side: the good part's ack does not wait behind the bad
            # part's retries (and proves that the receiver stores data meanwhile).
            async with asyncio.TaskGroup() as tg:
                for part in parts:
                    tg.create_task(self.deliver(client, part))
            return
        reason = batch.error or "rejected"
        if batch.events:
            reason += f" (events {batch.events[0].id}..{batch.events[-1].id})"
        if batch.metas:
            reason += f" (point metadata: {', '.join(m['point_id'] for m in batch.metas[:5])})"
        await asyncio.to_thread(
            self._source.add_rejected,
            batch.first_seq,
            batch.last_seq,
            batch.status,
            reason,
            batch.body,
        )
        if batch.events:
            await asyncio.to_thread(self._source.mark_events_synced, batch.events[-1].id)
        c = self._session.counters
        c.rejected_batches += 1
        c.rejected_rows += batch.size
        log.error("uplink.batch_dead_lettered", reason=reason, **batch.describe())
