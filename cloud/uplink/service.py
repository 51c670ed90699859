"""The agent's uplink: forwards what the buffer stored to the central receiver, exactly once.

Guarantees and where they are kept:

- Nothing is lost, nothing is duplicated: cursors move only on an acknowledgement that echoes
  the batch's exact range; replays are harmless (:mod:`.delivery`).
- Oldest first, live first: with a backlog, fresh batches alternate with backlog batches so
  the dashboard stays current while history drains (:mod:`.batches`).
- A batch the receiver refuses for its content is bisected until the offending rows are
  isolated; those are dead-lettered and the rest is delivered. Auth and transient failures
  are retried with one backoff policy, honouring ``Retry-After`` (:mod:`.delivery`).
- Enrollment happens once; the gateway token is stored atomically, 0600 (:mod:`.enroll`).
- The heartbeat runs beside the sync and never stops it (:mod:`.heartbeat`).

The uplink reads from a :class:`~outpost.buffer.source.SyncSource` (the agent passes its
``Buffer``). Up to ``max_in_flight`` batches (default 2) travel at once, and one more is read
and encoded in a worker thread meanwhile, so the receiver is never idle waiting for the agent.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import structlog

from outpost.buffer.source import SyncSource
from outpost.cloud.config import CloudConfig
from outpost.cloud.uplink.batches import Batch, Planner, ReadState
from outpost.cloud.uplink.delivery import Delivery
from outpost.cloud.uplink.enroll import ensure_token
from outpost.cloud.uplink.heartbeat import Heartbeats
from outpost.cloud.uplink.session import Session, UplinkConfigError, describe
from outpost.cloud.uplink.support import TokenBucket
from outpost.cloud.wire import Heartbeat

log = structlog.get_logger(__name__)

#: How often the buffer statistics (backlog depth and age) are refreshed.
_STATS_REFRESH_S = 5.0


class Uplink:
    def __init__(
        self,
        config: CloudConfig,
        *,
        gateway_id: str,
        data_dir: Path,
        buffer: SyncSource,
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
        self._transport = transport
        self._session = Session(
            config,
            gateway_id,
            self.data_dir,
            bucket=(
                TokenBucket(config.max_bytes_per_s) if config.max_bytes_per_s is not None else None
            ),
            compression=config.compression,
        )
        self._stats: dict[str, Any] = {}
        self._stats_at = 0.0
        self._planner = Planner(self._session, buffer, point_metadata)
        self._delivery = Delivery(self._session, buffer, self._planner)
        self._heartbeats = Heartbeats(
            self._session,
            heartbeat_source,
            stats=lambda: self._stats,
            status=self.status,
            refresh_stats=self._refresh_stats,
        )
        self._reset_positions()

    # ------------------------------------------------------------------ public

    def status(self) -> dict[str, Any]:
        c = self._session.counters
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
            "compression": self._session.compression,
        }

    def heartbeat_payload(self) -> Heartbeat:
        return self._heartbeats.payload()

    async def run(self) -> None:
        """Enroll if needed, then sync and heartbeat until cancelled."""
        self._reset_positions()
        cfg = self.config
        session = self._session
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
                session.error(f"[cloud] ca_file {cfg.ca_file}: {describe(exc)}")
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
            session.token = await ensure_token(session, client)
            session.counters.enrolled = True
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeats.loop(client), name="uplink-heartbeat")
                tg.create_task(self._sync_loop(client), name="uplink-sync")

    # ------------------------------------------------------------------ sync loop

    def _reset_positions(self) -> None:
        # A fresh object rather than fields reset in place: a worker thread of a cancelled
        # run() may still be finishing a prepare on the old one and must not move ours.
        self._st = ReadState()

    async def _sync_loop(self, client: httpx.AsyncClient) -> None:
        # Up to max_in_flight batches travel at once: while the receiver writes one, the next
        # is read, encoded and parsed. Acks may then arrive out of order, which the source's
        # range marks handle; events ride in at most one in-flight batch (their cursor is a
        # single "through id", so their acks must stay in order).
        st = self._st
        slots = asyncio.Semaphore(self.config.max_in_flight)
        inflight: set[asyncio.Task[None]] = set()

        async def deliver(batch: Batch) -> None:
            try:
                await self._delivery.deliver(client, batch)
            finally:
                if batch.events:
                    st.events_in_flight = False
                slots.release()

        async with asyncio.TaskGroup() as tg:
            while True:
                # Read and encode the next batch while max_in_flight are out, then wait for a
                # slot: the worker thread's read + encode overlaps the requests instead of
                # following each ack. A batch prepared but never sent (cancellation) costs
                # nothing: the persisted cursor has not moved, a new run() reads it again.
                batch = await asyncio.to_thread(self._planner.prepare, st)
                if batch is None:
                    if not inflight:
                        # Idle with nothing in flight: read from the persisted cursor again
                        # (picks up anything an in-memory position skipped, e.g. eviction).
                        st.pos = None
                        st.ev_high = 0
                    await self._refresh_stats()
                    # Nothing to send: look again after flush_interval.
                    await asyncio.sleep(self.config.flush_interval)
                    continue
                try:
                    await slots.acquire()
                except BaseException:
                    if batch.events:
                        st.events_in_flight = False
                    raise
                task = tg.create_task(deliver(batch))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                await self._refresh_stats()

    async def _refresh_stats(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._stats_at < _STATS_REFRESH_S:
            return
        self._stats_at = now
        try:
            st = await asyncio.to_thread(self.buffer.stats)
        except Exception as exc:  # stats are cosmetic; never let them stop the sync
            log.warning("uplink.stats_failed", error=describe(exc))
            return
        self._stats = st.to_dict()
