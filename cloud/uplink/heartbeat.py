"""The heartbeat: every ``heartbeat_interval`` seconds, the gateway's health for the fleet view
(mode, devices, backlog, uplink counters, active alarms). Independent of the data sync: a
failing heartbeat (or a faulty heartbeat source) never stops it, and vice versa."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import structlog
from pydantic import ValidationError

from outpost.cloud.uplink.session import Session, describe, detail
from outpost.cloud.wire import Heartbeat, encode_body

log = structlog.get_logger(__name__)

#: The uplink status keys the heartbeat carries.
_UPLINK_KEYS = (
    "connected",
    "last_success_ts",
    "last_error",
    "rejected_batches",
    "bytes_sent",
    "readings_sent",
    "backlog_rows",
)


class Heartbeats:
    def __init__(
        self,
        session: Session,
        source: Callable[[], dict[str, Any]],
        *,
        stats: Callable[[], dict[str, Any]],
        status: Callable[[], dict[str, Any]],
        refresh_stats: Callable[[], Awaitable[None]],
    ) -> None:
        self._session = session
        self._source = source
        self._stats = stats
        self._status = status
        self._refresh_stats = refresh_stats

    async def loop(self, client: httpx.AsyncClient) -> None:
        while True:
            try:
                await self.send(client)
            except httpx.HTTPError as exc:
                self._session.counters.connected = False
                log.warning("uplink.heartbeat_failed", error=describe(exc))
            except Exception as exc:  # a faulty heartbeat source must not stop the data sync
                log.exception("uplink.heartbeat_error", error=describe(exc))
            await asyncio.sleep(self._session.config.heartbeat_interval)

    def payload(self) -> Heartbeat:
        src = dict(self._source())
        st = self._stats()
        devices = {}
        for name, dev in (src.get("devices") or {}).items():
            devices[name] = {
                "connected": bool(dev.get("connected")),
                "last_ok_ts": _epoch_ms(dev.get("last_ok_ts")),
                "error": dev.get("error"),
            }
        uplink = {k: v for k, v in self._status().items() if k in _UPLINK_KEYS}
        data = {
            "gateway_id": self._session.gateway_id,
            "ts": round(time.time() * 1000),
            "site": src.get("site"),
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

    async def send(self, client: httpx.AsyncClient) -> None:
        session = self._session
        c = session.counters
        await self._refresh_stats()
        try:
            hb = self.payload()
        except (ValidationError, TypeError, ValueError) as exc:
            log.error("uplink.heartbeat_invalid", error=str(exc).replace("\n", " "))
            return
        body, headers = encode_body(hb, session.compression)
        if session.bucket is not None:
            await session.bucket.acquire(len(body))
        resp = await client.post(
            f"/api/v1/gateways/{session.gateway_id}/heartbeat",
            content=body,
            headers=session.auth(headers),
        )
        c.bytes_sent += len(body)
        if resp.status_code >= 300:
            session.error(f"heartbeat: HTTP {resp.status_code}: {detail(resp)}")
            if resp.status_code in (401, 403):
                c.connected = False
            log.warning("uplink.heartbeat_refused", status=resp.status_code, detail=detail(resp))
            return
        c.heartbeats_sent += 1
        c.last_heartbeat_ts = time.time()
        c.connected = True


def _epoch_ms(ts: Any) -> int | None:
    if ts is None:
        return None
    t = float(ts)
    # Seconds (the agent's clock values) or already milliseconds.
    return round(t * 1000.0) if t < 1e11 else round(t)
