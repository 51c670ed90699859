"""Read routes of the local API, shared by the Unix socket and the status page (``/api`` on
``[api] bind``): status, live points, a point's trend from the buffer, and the live stream.

The status page reads exactly these routes (and the control routes of ``api.control``), so
what the page shows, the CLI can ask for too.

``GET /live`` is a Server-Sent Events stream in the UI kit's vocabulary (``cloud/ui``):
``ready`` once; ``reading`` ``{"gw", "pts": {point_id: [ts_ms, value, quality]}, "more"}``
with the points whose value changed since the last message (at most ``LIVE_BATCH``;
``more`` = re-read ``/points``); ``alarm`` ``{"gw", "n"}`` when the alarm list changed;
``gateway`` ``{"gw"}`` every ``STATUS_EVERY_S`` so status panels re-read themselves.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from outpost.agent.api.http import json_response, query
from outpost.agent.api.view import AgentView
from outpost.agent.control.local import LocalControl

LIVE_PERIOD_S = 1.0
STATUS_EVERY_S = 5.0
LIVE_BATCH = 2_000
HISTORY_LIMIT = 20_000
CHART_BUCKETS = 1_000
LIMIT_KEYS = ("alarm_hh", "alarm_h", "alarm_l", "alarm_ll")


async def full_status(view: AgentView) -> dict[str, Any]:
    body = view.status()
    stats = await view.buffer_stats()
    if stats is not None:
        body["buffer"] = stats
        uplink = body.get("uplink")
        if isinstance(uplink, dict):
            # The uplink refreshes its copy of the backlog every few seconds; the figures
            # just read win, so the uplink line and the buffer line always agree.
            uplink["backlog_rows"] = stats.get("unsynced_rows")
            uplink["oldest_unsynced_age_s"] = stats.get("oldest_unsynced_age_s")
            uplink["unsynced_events"] = stats.get("unsynced_events")
    return body


def chart_data(meta: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    """The kit's chart JSON (``Outpost.drawChart``): raw samples, or min/max buckets when
    there are more than ``CHART_BUCKETS`` (a week of 1 s polls stays a few hundred KB)."""
    ts: list[float] = rows["t"]
    values: list[float | None] = rows["value"]
    out: dict[str, Any] = {
        "label": meta.get("point_id"),
        "units": meta.get("units") or "",
        "limits": {k: meta.get(k) for k in LIMIT_KEYS if meta.get(k) is not None},
        "marks": [],
    }
    if len(ts) <= CHART_BUCKETS:
        out.update(t=ts, value=values)
        return out
    lo, hi = ts[0], ts[-1]
    width = (hi - lo) / CHART_BUCKETS or 1.0
    bt: list[float] = []
    bmean: list[float | None] = []
    bmin: list[float | None] = []
    bmax: list[float | None] = []
    current = -1
    total = count = 0.0
    for t, v in zip(ts, values, strict=True):
        b = min(CHART_BUCKETS - 1, int((t - lo) / width))
        if b != current:
            if current >= 0:
                bmean[-1] = total / count if count else None
            current = b
            bt.append(lo + b * width)
            bmean.append(None)
            bmin.append(None)
            bmax.append(None)
            total = count = 0.0
        if v is None or not math.isfinite(v):
            continue
        total += v
        count += 1
        bmin[-1] = v if bmin[-1] is None else min(bmin[-1], v)
        bmax[-1] = v if bmax[-1] is None else max(bmax[-1], v)
    if current >= 0:
        bmean[-1] = total / count if count else None
    out.update(t=bt, value=bmean, min=bmin, max=bmax)
    return out


def _ts_ms(iso_ts: str | None) -> int | None:
    if not iso_ts:
        return None
    return round(datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp() * 1000)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def live_stream(
    view: AgentView,
    control: LocalControl,
    gateway: str,
    *,
    period_s: float = LIVE_PERIOD_S,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """The ``/live`` stream of one client, from the agent's own state (no polling of its own:
    it reads the live cache the scheduler fills)."""
    sent: dict[str, int | None] = {}
    alarms_seen: tuple[tuple[str, str], ...] | None = None
    last_status = clock()
    yield _sse("ready", {"gw": gateway})
    while True:
        pts: dict[str, list[Any]] = {}
        more = False
        for p in view.live_points():
            ts = _ts_ms(p["ts"])
            if ts is None or sent.get(p["point_id"]) == ts:
                continue
            sent[p["point_id"]] = ts
            if len(pts) >= LIVE_BATCH:
                more = True
                continue
            pts[p["point_id"]] = [ts, p["value"], p["quality"]]
        if pts or more:
            yield _sse("reading", {"gw": gateway, "pts": pts, "more": more})
        alarms = tuple((a.id, a.state) for a in control.list_alarms())
        if alarms != alarms_seen:
            if alarms_seen is not None:
                yield _sse("alarm", {"gw": gateway, "n": len(alarms)})
            alarms_seen = alarms
        now = clock()
        if now - last_status >= STATUS_EVERY_S:
            last_status = now
            yield _sse("gateway", {"gw": gateway})
        await asyncio.sleep(period_s)


class _PointsQuery(BaseModel):
    device: str | None = None


class _HistoryQuery(BaseModel):
    hours: float = Field(24.0, gt=0, le=24 * 366, description="how far back")


def read_routes(view: AgentView, control: LocalControl, *, gateway: str) -> list[Route]:
    async def status(request: Request) -> Response:
        return json_response(await full_status(view))

    async def points(request: Request) -> Response:
        device = query(request, _PointsQuery).device
        if device is not None and not view.knows_device(device):
            raise HTTPException(404, f"unknown device {device!r}")
        return json_response(view.live_points(device))

    async def point(request: Request) -> Response:
        point_id = request.path_params["point_id"]
        found = view.live_point(point_id)
        if found is None:
            raise HTTPException(404, f"unknown point {point_id!r}")
        return json_response(found)

    async def history(request: Request) -> Response:
        """A point's readings that the buffer still holds (the kit's chart JSON)."""
        point_id = request.path_params["point_id"]
        hours = query(request, _HistoryQuery).hours
        meta = view.point_meta(point_id)
        if meta is None:
            raise HTTPException(404, f"unknown point {point_id!r}")
        rows = await view.point_history(point_id, time.time() - hours * 3600.0, HISTORY_LIMIT)
        return json_response(chart_data(meta, rows))

    async def live(request: Request) -> Response:
        """Server-Sent Events: live values, alarm changes, status ticks."""
        return StreamingResponse(
            live_stream(view, control, gateway),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return [
        Route("/status", status, methods=["GET"]),
        Route("/points", points, methods=["GET"]),
        Route("/points/{point_id}", point, methods=["GET"]),
        Route("/points/{point_id}/history", history, methods=["GET"]),
        Route("/live", live, methods=["GET"]),
    ]
