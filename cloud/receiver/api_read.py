"""The fleet read API: gateways, points, latest values, readings (one or many points), alarms
and events. Every endpoint needs a user (any role) and honours the user's site scope: a
gateway of another site answers 404 exactly like an unknown one, and fleet-wide lists leave
other sites out. Times are ISO 8601 UTC (the heartbeat's epoch-ms and float-second fields are
converted); lists are paged with an opaque ``cursor`` and an honoured ``limit``.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, BeforeValidator, Field

from outpost.cloud.wire import ID_PATTERN, quality_label

from . import read_store
from .auth import Principal, Viewer, settings_of, storage_of
from .settings import ReceiverSettings
from .storage import BUCKETS, auto_resolution

GatewayStatus = Literal["online", "stale", "offline", "revoked", "not_enrolled"]
Resolution = Literal["raw", "1m", "5m", "1h", "1d"]
MAX_CHART_POINTS = 20


class ErrorOut(BaseModel):
    detail: str


class InvalidOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what is wrong: a sentence, or FastAPI's list of {loc, msg, type}"
    )


class GatewayOut(BaseModel):
    gateway_id: str
    site: str | None = Field(description="set by an admin, else reported by the heartbeat")
    status: GatewayStatus = Field(
        description="from the age of last_seen: online < online_s, stale < stale_s, else "
        "offline (or revoked / not_enrolled)"
    )
    mode: str | None = Field(description="the agent's operating mode at the last heartbeat")
    mode_since: datetime | None = Field(description="time of the newest mode-change event")
    active_alarms: dict[str, int] = Field(description="active alarms by priority")
    devices_up: int
    devices_total: int
    backlog_rows: int | None = Field(description="readings not yet synced to the receiver")
    oldest_unsynced_age_s: float | None
    buffer_rows: int | None
    schedule_version: str | None
    agent_version: str | None
    heartbeat_at: datetime | None = Field(description="the agent's clock at the last heartbeat")
    last_seen: datetime | None = Field(description="the receiver's clock at the last contact")
    enrolled_at: datetime | None
    revoked_at: datetime | None
    points: int
    heartbeat: dict[str, Any] | None = Field(
        description="the latest heartbeat as sent, with its times as ISO 8601 UTC"
    )


class PointOut(BaseModel):
    gateway_id: str
    point_id: str
    device: str
    units: str
    description: str
    data_type: str | None
    tags: dict[str, str]
    limits: dict[str, Any]
    writable: bool
    schedule_version: str | None
    updated_at: datetime


class LatestOut(BaseModel):
    point_id: str
    units: str
    ts: datetime | None = Field(description="null: no reading stored yet")
    value: float | None
    quality: str | None = Field(description='e.g. "good", "bad:comm_failure"')


class RawReadingOut(BaseModel):
    ts: datetime
    value: float | None
    quality: str = Field(description='quality label, e.g. "good" or "bad:comm_failure"')


class AggReadingOut(BaseModel):
    ts: datetime = Field(description="bucket start")
    min: float | None
    max: float | None
    avg: float | None
    count: int
    last: float | None


class ReadingsOut(BaseModel):
    gateway_id: str
    point_id: str
    resolution: Resolution
    from_: datetime = Field(alias="from", serialization_alias="from")
    to: datetime
    truncated: bool = Field(description="true when more rows exist than max_rows")
    max_rows: int
    readings: list[RawReadingOut] | list[AggReadingOut] = Field(
        description="raw rows {ts,value,quality} or aggregated rows {ts,min,max,avg,count,last};"
        " aggregates cover readings that are not bad and have a value"
    )


class SeriesOut(BaseModel):
    point_id: str
    truncated: bool
    readings: list[RawReadingOut] | list[AggReadingOut]


class MultiReadingsOut(BaseModel):
    gateway_id: str
    resolution: Resolution
    from_: datetime = Field(alias="from", serialization_alias="from")
    to: datetime
    max_rows: int = Field(description="most rows per series")
    series: list[SeriesOut]


class AlarmOut(BaseModel):
    gateway_id: str
    site: str | None
    alarm_id: str
    point_id: str | None
    priority: str
    state: str = Field(description="display state (e.g. unack_active, shelved)")
    base_state: Literal["normal", "unack_active", "ack_active", "rtn_unack"] | str
    active: bool
    active_since: datetime | None
    acked_by: str | None
    acked_at: datetime | None
    last_change: datetime = Field(description="time of the alarm's newest event")
    last_event_kind: str
    last_actor: str
    detail: dict[str, Any] = Field(description="the newest event's detail (value, limit, ...)")


class AlarmsOut(BaseModel):
    items: list[AlarmOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class EventOut(BaseModel):
    gateway_id: str
    event_id: int
    ts: datetime
    kind: str
    source: str
    actor: str
    detail: dict[str, Any]


class EventsOut(BaseModel):
    truncated: bool = Field(description="true when more events follow (see next_cursor)")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")
    events: list[EventOut]


# --- helpers -----------------------------------------------------------------------------------


def _json(text: Any) -> Any:
    if text is None:
        return None
    return json.loads(text) if isinstance(text, str) else text


def utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _iso_from_epoch(value: float) -> str | None:
    """Epoch milliseconds (>= 1e11) or seconds, as ISO 8601 UTC."""
    if not math.isfinite(value) or value < 0:
        return None
    seconds = value / 1000.0 if value >= 1e11 else value
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def normalise_times(obj: Any, key: str = "") -> Any:
    """The heartbeat as sent, with every time field (``ts``, ``*_ts``, ``*_at``) numeric in
    epoch ms or seconds turned into ISO 8601 UTC."""
    if isinstance(obj, dict):
        return {k: normalise_times(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalise_times(v, key) for v in obj]
    is_time = key == "ts" or key.endswith("_ts") or key.endswith("_at")
    if is_time and isinstance(obj, int | float) and not isinstance(obj, bool):
        return _iso_from_epoch(float(obj))
    return obj


def gateway_status(row: asyncpg.Record, settings: ReceiverSettings) -> GatewayStatus:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["enrolled_at"] is None:
        return "not_enrolled"
    seen = row["last_seen"]
    if seen is None:
        return "offline"
    age = (datetime.now(UTC) - seen).total_seconds()
    if age < settings.online_s:
        return "online"
    return "stale" if age < settings.stale_s else "offline"


def gateway_out(row: asyncpg.Record, settings: ReceiverSettings) -> GatewayOut:
    hb = _json(row["last_heartbeat"]) or {}
    devices = hb.get("devices") or {}
    hb_ts = hb.get("ts")
    return GatewayOut(
        gateway_id=row["id"],
        site=row["site"],
        status=gateway_status(row, settings),
        mode=hb.get("mode"),
        mode_since=row["mode_since"],
        active_alarms={str(k): int(v) for k, v in (hb.get("active_alarms") or {}).items()},
        devices_up=sum(1 for d in devices.values() if isinstance(d, dict) and d.get("connected")),
        devices_total=len(devices),
        backlog_rows=hb.get("unsynced_rows"),
        oldest_unsynced_age_s=hb.get("oldest_unsynced_age_s"),
        buffer_rows=hb.get("buffer_rows"),
        schedule_version=hb.get("schedule_version"),
        agent_version=hb.get("agent_version"),
        heartbeat_at=datetime.fromtimestamp(hb_ts / 1000.0, UTC)
        if isinstance(hb_ts, int | float)
        else None,
        last_seen=row["last_seen"],
        enrolled_at=row["enrolled_at"],
        revoked_at=row["revoked_at"],
        points=row["points"],
        heartbeat=normalise_times(hb) if row["last_heartbeat"] is not None else None,
    )


def time_range(from_: datetime | None, to: datetime | None) -> tuple[datetime, datetime]:
    end = utc(to) if to is not None else datetime.now(UTC)
    start = utc(from_) if from_ is not None else end - timedelta(hours=24)
    if start >= end:
        raise HTTPException(
            422, f"'from' ({start.isoformat()}) must be before 'to' ({end.isoformat()})"
        )
    return start, end


async def visible_gateway(request: Request, principal: Principal, gateway_id: str) -> GatewayOut:
    """The gateway if it exists and the caller may see it, else 404 (the same answer for
    both, so a scoped user learns nothing about other sites' gateways)."""
    row = await read_store.gateway(storage_of(request).pool, principal.site_list, gateway_id)
    if row is None:
        raise HTTPException(404, f"unknown gateway {gateway_id}")
    return gateway_out(row, settings_of(request))


async def series(
    request: Request, key: int, start: datetime, end: datetime, res: Resolution, limit: int
) -> tuple[list[RawReadingOut] | list[AggReadingOut], bool]:
    storage = storage_of(request)
    if res == "raw":
        rows = await storage.raw_readings(key, start, end, limit + 1)
        raw = [
            RawReadingOut(ts=r["time"], value=r["value"], quality=quality_label(r["quality"]))
            for r in rows[:limit]
        ]
        return raw, len(rows) > limit
    assert res in BUCKETS
    rows = await storage.aggregated_readings(key, start, end, res, limit + 1)
    agg = [
        AggReadingOut(
            ts=r["time"], min=r["min"], max=r["max"], avg=r["avg"], count=r["count"], last=r["last"]
        )
        for r in rows[:limit]
    ]
    return agg, len(rows) > limit


def _iso_only(value: object) -> object:
    """Times in queries are ISO 8601 only: pydantic would also read a bare number as epoch
    seconds (``to=0.5``), which the document does not promise and nobody means."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("expected an ISO 8601 date-time, e.g. 2025-11-23T12:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_only)]
GwPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
FromQ = Annotated[
    IsoTime | None, Query(alias="from", description="ISO 8601; default `to` minus 24 h")
]
ToQ = Annotated[IsoTime | None, Query(description="ISO 8601, exclusive; default now")]
ResQ = Annotated[
    Literal["auto", "raw", "1m", "5m", "1h", "1d"],
    Query(description="auto: raw < 2 h, 1m < 12 h, 5m < 7 d, 1h < 90 d, else 1d"),
]
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": InvalidOut, "description": "invalid parameters (range, cursor, ...)"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown gateway or point (or another site's)"},
    **INVALID,
}
BAD_CURSOR = INVALID


def router() -> APIRouter:
    r = APIRouter(tags=["read"])

    @r.get("/api/v1/gateways", response_model=list[GatewayOut], responses=INVALID)
    async def list_gateways(
        request: Request,
        principal: Viewer,
        site: Annotated[str | None, Query(max_length=128)] = None,
    ) -> list[GatewayOut]:
        """Every gateway the caller may see: status, site, mode and since when, active alarms
        by priority, devices up/total, backlog, schedule version, last seen."""
        settings = settings_of(request)
        rows = await read_store.gateways(storage_of(request).pool, principal.site_list)
        return [gateway_out(row, settings) for row in rows if site is None or row["site"] == site]

    @r.get("/api/v1/gateways/{gateway_id}", response_model=GatewayOut, responses=NOT_FOUND)
    async def get_gateway(request: Request, gateway_id: GwPath, principal: Viewer) -> GatewayOut:
        return await visible_gateway(request, principal, gateway_id)

    @r.get(
        "/api/v1/gateways/{gateway_id}/points",
        response_model=list[PointOut],
        responses=NOT_FOUND,
    )
    async def list_points(
        request: Request, gateway_id: GwPath, principal: Viewer
    ) -> list[PointOut]:
        """The gateway's points with their metadata (units, tags, limits)."""
        await visible_gateway(request, principal, gateway_id)
        return [
            PointOut(
                gateway_id=p["gateway_id"],
                point_id=p["point_id"],
                device=p["device"],
                units=p["units"],
                description=p["description"],
                data_type=p["data_type"],
                tags=_json(p["tags"]) or {},
                limits=_json(p["limits"]) or {},
                writable=p["writable"],
                schedule_version=p["schedule_version"],
                updated_at=p["updated_at"],
            )
            for p in await storage_of(request).points(gateway_id)
        ]

    @r.get(
        "/api/v1/gateways/{gateway_id}/latest",
        response_model=list[LatestOut],
        responses=NOT_FOUND,
    )
    async def latest(
        request: Request,
        gateway_id: GwPath,
        principal: Viewer,
        points: Annotated[
            str | None, Query(max_length=20_000, description="comma-separated point ids")
        ] = None,
    ) -> list[LatestOut]:
        """The newest value, quality and time of every point of the gateway (or of `points`)."""
        await visible_gateway(request, principal, gateway_id)
        wanted = [p for p in points.split(",") if p] if points else None
        rows = await read_store.latest(storage_of(request).pool, gateway_id, wanted)
        return [
            LatestOut(
                point_id=row["point_id"],
                units=row["units"],
                ts=row["time"],
                value=row["value"],
                quality=quality_label(row["quality"]) if row["quality"] is not None else None,
            )
            for row in rows
        ]

    @r.get(
        "/api/v1/gateways/{gateway_id}/points/{point_id}/readings",
        response_model=ReadingsOut,
        response_model_by_alias=True,
        responses=NOT_FOUND,
    )
    async def readings(
        request: Request,
        gateway_id: GwPath,
        point_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=256)],
        principal: Viewer,
        from_: FromQ = None,
        to: ToQ = None,
        resolution: ResQ = "auto",
    ) -> ReadingsOut:
        """One point's history, raw or aggregated (min/max/avg/count/last per bucket)."""
        start, end = time_range(from_, to)
        await visible_gateway(request, principal, gateway_id)
        key = await storage_of(request).point_key(gateway_id, point_id)
        if key is None:
            raise HTTPException(404, f"unknown point {point_id} on gateway {gateway_id}")
        res: Resolution = auto_resolution(end - start) if resolution == "auto" else resolution
        limit = settings_of(request).max_rows
        rows, truncated = await series(request, key, start, end, res, limit)
        return ReadingsOut(
            gateway_id=gateway_id,
            point_id=point_id,
            resolution=res,
            **{"from": start},
            to=end,
            truncated=truncated,
            max_rows=limit,
            readings=rows,
        )

    @r.get(
        "/api/v1/gateways/{gateway_id}/readings",
        response_model=MultiReadingsOut,
        response_model_by_alias=True,
        responses={**NOT_FOUND, **BAD_CURSOR},
    )
    async def multi_readings(
        request: Request,
        gateway_id: GwPath,
        principal: Viewer,
        points: Annotated[
            str,
            Query(
                max_length=20_000,
                description=f"comma-separated point ids (at most {MAX_CHART_POINTS})",
            ),
        ],
        from_: FromQ = None,
        to: ToQ = None,
        resolution: ResQ = "auto",
    ) -> MultiReadingsOut:
        """Several points of one gateway over one range at one resolution: a chart's data."""
        start, end = time_range(from_, to)
        wanted = list(dict.fromkeys(p for p in points.split(",") if p))
        if not wanted or len(wanted) > MAX_CHART_POINTS:
            raise HTTPException(422, f"points: give 1 to {MAX_CHART_POINTS} point ids")
        await visible_gateway(request, principal, gateway_id)
        keys = await read_store.point_keys(storage_of(request).pool, gateway_id, wanted)
        missing = [p for p in wanted if p not in keys]
        if missing:
            raise HTTPException(
                404, f"unknown point(s) on gateway {gateway_id}: {', '.join(missing[:10])}"
            )
        res: Resolution = auto_resolution(end - start) if resolution == "auto" else resolution
        limit = settings_of(request).max_rows
        out: list[SeriesOut] = []
        for pid in wanted:
            rows, truncated = await series(request, keys[pid], start, end, res, limit)
            out.append(SeriesOut(point_id=pid, truncated=truncated, readings=rows))
        return MultiReadingsOut(
            gateway_id=gateway_id,
            resolution=res,
            **{"from": start},
            to=end,
            max_rows=limit,
            series=out,
        )

    @r.get("/api/v1/alarms", response_model=AlarmsOut, responses=BAD_CURSOR)
    async def alarms(
        request: Request,
        principal: Viewer,
        state: Annotated[
            Literal["active", "all"],
            Query(description="active: unack_active or ack_active; all: every known alarm"),
        ] = "active",
        site: Annotated[str | None, Query(max_length=128)] = None,
        gateway: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=128)] = None,
        priority: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
        cursor: Annotated[str | None, Query(max_length=2048)] = None,
    ) -> AlarmsOut:
        """Fleet-wide alarms (the latest state of each, from the gateways' alarm events),
        ordered by gateway and alarm id; follow `next_cursor` for more."""
        after: tuple[str, str] | None = None
        if cursor is not None:
            try:
                after = read_store.alarm_cursor(cursor)
            except ValueError:
                raise HTTPException(422, f"bad cursor {cursor!r}") from None
        rows = await read_store.alarms(
            storage_of(request).pool,
            principal.site_list,
            active_only=state == "active",
            site=site,
            gateway=gateway,
            priority=priority,
            after=after,
            limit=limit + 1,
        )
        items = [
            AlarmOut(
                gateway_id=a["gateway_id"],
                site=a["site"],
                alarm_id=a["alarm_id"],
                point_id=a["point_id"],
                priority=a["priority"],
                state=a["state"],
                base_state=a["base_state"],
                active=a["base_state"] in ("unack_active", "ack_active"),
                active_since=a["active_since"],
                acked_by=a["acked_by"],
                acked_at=a["acked_at"],
                last_change=a["ts"],
                last_event_kind=a["kind"],
                last_actor=a["actor"],
                detail=_json(a["detail"]) or {},
            )
            for a in rows[:limit]
        ]
        nxt = (
            read_store.encode_cursor(items[-1].gateway_id, items[-1].alarm_id)
            if len(rows) > limit
            else None
        )
        return AlarmsOut(items=items, next_cursor=nxt)

    @r.get("/api/v1/events", response_model=EventsOut, responses=BAD_CURSOR)
    async def events(
        request: Request,
        principal: Viewer,
        gateway: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=128)] = None,
        from_: FromQ = None,
        to: ToQ = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[
            int | None, Query(ge=1, description="page size (default and cap: max_rows)")
        ] = None,
        cursor: Annotated[str | None, Query(max_length=2048)] = None,
    ) -> EventsOut:
        """Events by time (default: the last 24 h), optionally of one gateway / kind, oldest
        first, `limit` a page; follow `next_cursor`."""
        start, end = time_range(from_, to)
        after: tuple[datetime, str, int] | None = None
        if cursor is not None:
            try:
                after = read_store.event_cursor(cursor)
            except ValueError:
                raise HTTPException(422, f"bad cursor {cursor!r}") from None
        cap = settings_of(request).max_rows
        size = min(limit or cap, cap)
        rows = await read_store.events(
            storage_of(request).pool,
            principal.site_list,
            gateway=gateway,
            start=start,
            end=end,
            kind=kind,
            after=after,
            limit=size + 1,
        )
        out = [
            EventOut(
                gateway_id=e["gateway_id"],
                event_id=e["event_id"],
                ts=e["ts"],
                kind=e["kind"],
                source=e["source"],
                actor=e["actor"],
                detail=_json(e["detail"]) or {},
            )
            for e in rows[:size]
        ]
        more = len(rows) > size
        nxt = (
            read_store.encode_cursor(out[-1].ts, out[-1].gateway_id, out[-1].event_id)
            if more
            else None
        )
        return EventsOut(truncated=more, next_cursor=nxt, events=out)

    return r
