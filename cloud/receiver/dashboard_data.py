"""Read models of the dashboard pages that the receiver's JSON API does not (yet) answer:
fleet rows, newest value per point, active alarms and alarm history from the event stream,
ISA-18.2 health figures, KPI and floor (rack) layouts from point tags.

Every function takes the pool and the caller's site scope (``sites``: None for every site) and
returns plain dataclasses; the pages (web.py) and their JSON twins render them.

Tag conventions (point tags from the schedule's ``tags`` column, ``k=v;flag``):

- KPIs: ``kpi=it_power`` and ``kpi=facility_power`` (kW, summed per gateway) give total power
  and PUE = facility / IT; ``kind=temperature`` marks the temperatures that count for the
  average and the hottest (and colour the floor).
- Floor: ``rack=A01`` places a point's rack, ``row=A`` and ``room=hall-1`` group racks (a
  missing row is the rack name's leading letters, a missing room ``main``); the rack is coloured
  by its temperature point and outlined by the worst active alarm of any of its points.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from outpost.cloud.ui import priority_rank
from outpost.cloud.wire import quality_label

from . import read_store
from .live import ALARM_EVENT_KINDS
from .read_store import SITE_EXPR
from .settings import ReceiverSettings

MODE_KINDS = ("mode", "operator.mode")
INACTIVE = ("normal", "removed")
STANDING_AFTER = timedelta(hours=24)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _scope(sites: Sequence[str] | None) -> list[str] | None:
    return None if sites is None else list(sites)


# --- fleet ------------------------------------------------------------------------------------


@dataclass
class GatewayRow:
    id: str
    site: str
    status: str
    last_seen: datetime | None
    mode: str | None
    mode_since: datetime | None
    alarms: dict[str, int]
    devices_up: int
    devices_total: int
    backlog: int | None
    oldest_unsynced_s: float | None
    schedule_version: str | None
    agent_version: str | None
    points: int
    heartbeat: dict[str, Any] = field(default_factory=dict)

    @property
    def alarm_total(self) -> int:
        return sum(self.alarms.values())

    @property
    def worst_priority_rank(self) -> int:
        return min((priority_rank(p) for p, n in self.alarms.items() if n), default=9)


def gateway_status(row: asyncpg.Record, settings: ReceiverSettings, now: datetime) -> str:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["enrolled_at"] is None:
        return "not_enrolled"
    seen = row["last_seen"]
    if seen is None:
        return "offline"
    age = (now - seen).total_seconds()
    if age < settings.online_s:
        return "online"
    return "stale" if age < settings.stale_s else "offline"


async def fleet(
    pool: asyncpg.Pool,
    settings: ReceiverSettings,
    sites: Sequence[str] | None,
    *,
    site: str | None = None,
    gateway_id: str | None = None,
) -> list[GatewayRow]:
    if gateway_id is not None:
        one = await read_store.gateway(pool, sites, gateway_id)
        rows = [] if one is None else [one]
    else:
        rows = await read_store.gateways(pool, sites)
    now = datetime.now(UTC)
    out: list[GatewayRow] = []
    for r in rows:
        if site and (r["site"] or "") != site:
            continue
        hb = _json(r["last_heartbeat"]) or {}
        devices = hb.get("devices") or {}
        out.append(
            GatewayRow(
                id=r["id"],
                site=r["site"] or "",
                status=gateway_status(r, settings, now),
                last_seen=r["last_seen"],
                mode=hb.get("mode"),
                mode_since=r["mode_since"],
                alarms={p: int(n) for p, n in (hb.get("active_alarms") or {}).items() if n},
                devices_up=sum(1 for d in devices.values() if d.get("connected")),
                devices_total=len(devices),
                backlog=hb.get("unsynced_rows"),
                oldest_unsynced_s=hb.get("oldest_unsynced_age_s"),
                schedule_version=hb.get("schedule_version"),
                agent_version=hb.get("agent_version"),
                points=r["points"],
                heartbeat=hb,
            )
        )
    return out


async def site_of(pool: asyncpg.Pool, gateway_id: str) -> str | None:
    """The gateway's site ('' when it has none), None when the gateway is unknown."""
    row = await read_store.gateway(pool, None, gateway_id)
    return None if row is None else (row["site"] or "")


async def site_map(pool: asyncpg.Pool) -> dict[str, str]:
    return {r["id"]: r["site"] or "" for r in await read_store.gateways(pool, None)}


# --- points -----------------------------------------------------------------------------------


@dataclass
class PointRow:
    point_id: str
    device: str
    units: str
    description: str
    tags: dict[str, str]
    limits: dict[str, Any]
    ts: datetime | None
    value: float | None
    quality: str | None

    def is_temperature(self) -> bool:
        return is_temperature(self.tags)


def is_temperature(tags: dict[str, str]) -> bool:
    # explicit only: a "temp" marker also sits on setpoints, warnings and liquid loops, which
    # must not move a room's average or hottest figure
    return tags.get("kind") == "temperature"


async def latest(pool: asyncpg.Pool, gateway_id: str) -> list[PointRow]:
    """Every point of the gateway (metadata) with its newest reading (read_store.latest)."""
    meta = await pool.fetch(
        "SELECT point_id, device, units, description, tags, limits FROM points "
        "WHERE gateway_id = $1 ORDER BY point_id",
        gateway_id,
    )
    values = {r["point_id"]: r for r in await read_store.latest(pool, gateway_id, None)}
    return [_point(m, values.get(m["point_id"])) for m in meta]


async def point(pool: asyncpg.Pool, gateway_id: str, point_id: str) -> PointRow | None:
    meta = await pool.fetchrow(
        "SELECT point_id, device, units, description, tags, limits FROM points "
        "WHERE gateway_id = $1 AND point_id = $2",
        gateway_id,
        point_id,
    )
    if meta is None:
        return None
    found = await read_store.latest(pool, gateway_id, [point_id])
    return _point(meta, found[0] if found else None)


def _point(m: asyncpg.Record, v: asyncpg.Record | None) -> PointRow:
    return PointRow(
        point_id=m["point_id"],
        device=m["device"],
        units=m["units"],
        description=m["description"],
        tags=_json(m["tags"]) or {},
        limits=_json(m["limits"]) or {},
        ts=None if v is None else v["time"],
        value=None if v is None else v["value"],
        quality=None if v is None or v["quality"] is None else quality_label(v["quality"]),
    )


@dataclass
class Kpis:
    it_power: float | None = None
    facility_power: float | None = None
    pue: float | None = None
    temp_avg: float | None = None
    temp_max: float | None = None
    temp_max_point: str | None = None
    temperatures: int = 0


def kpis(points: Iterable[PointRow]) -> Kpis:
    k = Kpis()
    it: list[float] = []
    fac: list[float] = []
    temps: list[tuple[float, str]] = []
    for p in points:
        if p.value is None or (p.quality or "").startswith("bad"):
            continue
        kind = p.tags.get("kpi")
        if kind == "it_power":
            it.append(p.value)
        elif kind == "facility_power":
            fac.append(p.value)
        if is_temperature(p.tags):
            temps.append((p.value, p.point_id))
    if it:
        k.it_power = sum(it)
    if fac:
        k.facility_power = sum(fac)
    if k.it_power and k.facility_power is not None:
        k.pue = k.facility_power / k.it_power
    if temps:
        k.temperatures = len(temps)
        k.temp_avg = sum(v for v, _ in temps) / len(temps)
        k.temp_max, k.temp_max_point = max(temps)
    return k


@dataclass
class ModeChange:
    ts: datetime
    mode: str
    source: str
    actor: str
    cause: str
    reason: str


async def mode_history(pool: asyncpg.Pool, gateway_id: str, limit: int = 20) -> list[ModeChange]:
    rows = await pool.fetch(
        """SELECT ts, kind, source, actor, detail FROM events
           WHERE gateway_id = $1 AND kind = ANY($2::text[])
           ORDER BY event_id DESC LIMIT $3""",
        gateway_id,
        list(MODE_KINDS),
        limit,
    )
    out = []
    for r in rows:
        d = _json(r["detail"]) or {}
        out.append(
            ModeChange(
                ts=r["ts"],
                mode=str(d.get("to") or r["source"]),
                source=str(d.get("from") or ""),
                actor=r["actor"],
                cause=str(d.get("cause") or ""),
                reason=str(d.get("reason") or ""),
            )
        )
    return out


# --- alarms -----------------------------------------------------------------------------------


@dataclass
class AlarmRow:
    gateway_id: str
    site: str
    alarm_id: str
    point_id: str
    device: str
    kind: str
    priority: str
    state: str
    value: float | None
    limit: float | None
    since: datetime
    activated_at: datetime | None
    acked_at: datetime | None
    acked_by: str | None

    @property
    def key(self) -> str:
        return f"{self.gateway_id}|{self.alarm_id}"

    @property
    def unacked(self) -> bool:
        return self.state in ("unack_active", "rtn_unack")


# alarm_latest: one row per alarm, kept by a trigger on events (migration 0002); the
# console also shows returned-unacknowledged, shelved, suppressed and out-of-service alarms.
# Filtering, ordering (worst first) and the row limit happen in SQL; detail fields are
# extracted there too (no JSON decoding per alarm in Python).
_ALARM_WHERE = f"""a.state <> ALL($1::text[]) AND a.base_state <> 'normal'
  AND ($2::text IS NULL OR a.gateway_id = $2)
  AND ($3::text[] IS NULL OR {SITE_EXPR} = ANY($3::text[]))
  AND ($4::text IS NULL OR {SITE_EXPR} = $4)
  AND ($5::text IS NULL OR a.priority = $5)
  AND ($6::text IS NULL OR a.state = $6)"""
_NUM = "CASE WHEN jsonb_typeof(a.detail->'{0}') = 'number' THEN (a.detail->>'{0}')::float8 END"
_ACTIVE_SQL = f"""
SELECT a.gateway_id, a.alarm_id, a.point_id, a.priority, a.state, a.ts, a.active_since,
       a.acked_at, a.acked_by, a.detail->>'device' AS device, a.detail->>'kind' AS akind,
       {_NUM.format("value")} AS value, {_NUM.format("limit")} AS lim,
       {SITE_EXPR} AS site, count(*) OVER () AS matching
FROM alarm_latest a JOIN gateways g ON g.id = a.gateway_id
WHERE {_ALARM_WHERE}
ORDER BY CASE a.priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2
                         WHEN 'low' THEN 3 ELSE 4 END,
         a.state NOT IN ('unack_active', 'rtn_unack'), coalesce(a.active_since, a.ts) DESC,
         a.gateway_id, a.alarm_id
LIMIT $7"""
_SUMMARY_SQL = f"""
SELECT count(*) AS total,
       count(*) FILTER (WHERE a.state IN ('unack_active', 'rtn_unack')) AS unacked,
       count(*) FILTER (WHERE a.base_state IN ('unack_active', 'ack_active')
                          AND a.active_since < now() - $7::interval) AS standing,
       coalesce(array_agg(DISTINCT a.gateway_id), '{{}}') AS gateways
FROM alarm_latest a JOIN gateways g ON g.id = a.gateway_id
WHERE {_ALARM_WHERE}"""


@dataclass
class AlarmPage:
    rows: list[AlarmRow]
    matching: int  # rows before the limit


async def active_alarms(
    pool: asyncpg.Pool,
    sites: Sequence[str] | None,
    *,
    gateway_id: str | None = None,
    site: str | None = None,
    priority: str | None = None,
    state: str | None = None,
    limit: int | None = None,
) -> AlarmPage:
    """Alarms not normal (including shelved/suppressed/out of service), worst first:
    priority, then unacknowledged, then newest."""
    rows = await pool.fetch(
        _ACTIVE_SQL,
        list(INACTIVE),
        gateway_id,
        _scope(sites),
        site,
        priority,
        state,
        limit,
    )
    out = [
        AlarmRow(
            gateway_id=r["gateway_id"],
            site=r["site"] or "",
            alarm_id=r["alarm_id"],
            point_id=r["point_id"] or "",
            device=r["device"] or "",
            kind=r["akind"] or "",
            priority=r["priority"],
            state=r["state"],
            value=r["value"],
            limit=r["lim"],
            since=r["ts"],
            activated_at=r["active_since"],
            acked_at=r["acked_at"],
            acked_by=r["acked_by"],
        )
        for r in rows
    ]
    return AlarmPage(out, rows[0]["matching"] if rows else 0)


@dataclass
class AlarmSummary:
    total: int
    unacked: int
    standing: int  # active (unack or ack) for longer than STANDING_AFTER
    gateways: list[str]


async def alarm_summary(pool: asyncpg.Pool, sites: Sequence[str] | None) -> AlarmSummary:
    r = await pool.fetchrow(
        _SUMMARY_SQL, list(INACTIVE), None, _scope(sites), None, None, None, STANDING_AFTER
    )
    assert r is not None
    return AlarmSummary(r["total"], r["unacked"], r["standing"], sorted(r["gateways"]))


@dataclass
class AlarmEpisode:
    """One activation of an alarm: when it came, who acked and when, when it cleared."""

    gateway_id: str
    alarm_id: str
    point_id: str
    priority: str
    activated_at: datetime
    acked_at: datetime | None = None
    acked_by: str | None = None
    ack_note: str | None = None
    cleared_at: datetime | None = None
    shelved_by: str | None = None

    @property
    def time_to_ack_s(self) -> float | None:
        return (
            None if self.acked_at is None else (self.acked_at - self.activated_at).total_seconds()
        )

    @property
    def time_to_clear_s(self) -> float | None:
        if self.cleared_at is None:
            return None
        return (self.cleared_at - self.activated_at).total_seconds()


@dataclass
class AlarmHealth:
    """ISA-18.2 figures over ``window``: activations per 10 minutes (average and peak),
    standing alarms (active longer than 24 h), the ten most frequent alarms."""

    window: timedelta
    activations: int
    per_10min_avg: float
    per_10min_max: int
    standing: int
    bad_actors: list[tuple[str, str, int]]  # (gateway, alarm id, activations)


async def alarm_history(
    pool: asyncpg.Pool,
    sites: Sequence[str] | None,
    *,
    since: datetime,
    gateway_id: str | None = None,
    limit_events: int = 3000,
) -> list[AlarmEpisode]:
    """Episodes (newest first) from the newest ``limit_events`` alarm events since ``since``
    (a page shows the recent ones; the health figures are aggregated in SQL instead)."""
    rows = await pool.fetch(
        f"""SELECT e.gateway_id, e.source, e.ts, e.kind, e.actor,
                  e.detail->>'base_from' AS base_from, e.detail->>'base_to' AS base_to,
                  e.detail->>'to' AS "to", e.detail->>'point_id' AS point_id,
                  e.detail->>'priority' AS priority, e.detail->>'note' AS note
           FROM events e JOIN gateways g ON g.id = e.gateway_id
           WHERE e.ts >= $1 AND e.kind = ANY($2::text[])
             AND ($3::text IS NULL OR e.gateway_id = $3)
             AND ($4::text[] IS NULL OR {SITE_EXPR} = ANY($4::text[]))
           ORDER BY e.ts DESC, e.event_id DESC LIMIT $5""",
        since,
        list(ALARM_EVENT_KINDS),
        gateway_id,
        _scope(sites),
        limit_events,
    )
    rows.reverse()  # oldest first for the fold
    open_: dict[tuple[str, str], AlarmEpisode] = {}
    episodes: list[AlarmEpisode] = []
    for r in rows:
        d = r  # the detail fields, extracted by the query
        key = (r["gateway_id"], r["source"])
        ep = open_.get(key)
        if r["kind"] == "alarm" and d.get("base_from") == "normal" and d.get("base_to") != "normal":
            ep = AlarmEpisode(
                gateway_id=key[0],
                alarm_id=key[1],
                point_id=str(d.get("point_id") or ""),
                priority=str(d.get("priority") or ""),
                activated_at=r["ts"],
            )
            open_[key] = ep
            episodes.append(ep)
            continue
        if ep is None:
            continue
        if r["kind"] == "operator.ack" and ep.acked_at is None:
            ep.acked_at, ep.acked_by, ep.ack_note = r["ts"], r["actor"], d.get("note")
        elif r["kind"] == "operator.shelve":
            ep.shelved_by = r["actor"]
        condition_gone = d.get("base_to") == "rtn_unack" or (
            d.get("base_to") == "normal" and d.get("base_from") in ("ack_active", "unack_active")
        )
        if condition_gone and ep.cleared_at is None:
            ep.cleared_at = r["ts"]
        if d.get("base_to") == "normal" or d.get("to") == "removed":
            open_.pop(key, None)  # the episode is over: the next activation starts another
    episodes.reverse()
    return episodes


def alarm_health(
    episodes: Sequence[AlarmEpisode],
    standing: int,
    window: timedelta,
    now: datetime | None = None,
) -> AlarmHealth:
    now = now or datetime.now(UTC)
    start = now - window
    recent = [e for e in episodes if e.activated_at >= start]
    buckets = Counter(int((e.activated_at - start).total_seconds() // 600) for e in recent)
    n_buckets = max(int(window.total_seconds() // 600), 1)
    actors = Counter((e.gateway_id, e.alarm_id) for e in recent)
    return AlarmHealth(
        window=window,
        activations=len(recent),
        per_10min_avg=len(recent) / n_buckets,
        per_10min_max=max(buckets.values(), default=0),
        standing=standing,
        bad_actors=[(gw, aid, n) for (gw, aid), n in actors.most_common(10)],
    )


_ACTIVATIONS = f"""
    SELECT e.gateway_id, e.source, e.ts FROM events e JOIN gateways g ON g.id = e.gateway_id
    WHERE e.ts >= $1 AND e.kind = 'alarm' AND e.detail->>'base_from' = 'normal'
      AND e.detail->>'base_to' <> 'normal'
      AND ($2::text[] IS NULL OR {SITE_EXPR} = ANY($2::text[]))"""


async def alarm_health_db(
    pool: asyncpg.Pool,
    sites: Sequence[str] | None,
    standing: int,
    window: timedelta,
    now: datetime | None = None,
) -> AlarmHealth:
    """:func:`alarm_health` aggregated in SQL over every activation in the window."""
    now = now or datetime.now(UTC)
    start = now - window
    row = await pool.fetchrow(
        f"""WITH act AS ({_ACTIVATIONS})
            SELECT (SELECT count(*) FROM act) AS n,
                   (SELECT coalesce(max(c), 0) FROM (
                        SELECT count(*) AS c FROM act
                        GROUP BY floor(extract(epoch FROM ts - $1) / 600)) b) AS peak""",
        start,
        _scope(sites),
    )
    top = await pool.fetch(
        f"""SELECT gateway_id, source, count(*) AS n FROM ({_ACTIVATIONS}) act
            GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 10""",
        start,
        _scope(sites),
    )
    assert row is not None
    n_buckets = max(int(window.total_seconds() // 600), 1)
    return AlarmHealth(
        window=window,
        activations=row["n"],
        per_10min_avg=row["n"] / n_buckets,
        per_10min_max=row["peak"],
        standing=standing,
        bad_actors=[(r["gateway_id"], r["source"], r["n"]) for r in top],
    )


async def alarm_marks(
    pool: asyncpg.Pool, gateway_id: str, point_id: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Alarm transitions of one point in [start, end): for the trend's time axis."""
    rows = await pool.fetch(
        """SELECT ts, kind, actor, detail FROM events
           WHERE gateway_id = $1 AND ts >= $2 AND ts < $3 AND kind = ANY($4::text[])
             AND detail->>'point_id' = $5
           ORDER BY ts LIMIT 2000""",
        gateway_id,
        start,
        end,
        list(ALARM_EVENT_KINDS),
        point_id,
    )
    out = []
    for r in rows:
        d = _json(r["detail"]) or {}
        out.append(
            {
                "t": r["ts"].timestamp(),
                "ts": r["ts"].isoformat(),
                "label": f"{d.get('from')} → {d.get('to')}",
                "kind": r["kind"],
                "actor": r["actor"],
                "priority": d.get("priority"),
                "active": d.get("base_to") in ("unack_active", "ack_active"),
            }
        )
    return out


# --- floor ------------------------------------------------------------------------------------


@dataclass
class Rack:
    name: str
    gateway_id: str
    temp_point: str | None = None
    temp: float | None = None
    units: str = ""
    points: list[str] = field(default_factory=list)
    alarm_priority: str | None = None
    alarm_count: int = 0


@dataclass
class FloorRow:
    name: str
    racks: list[Rack]


@dataclass
class Room:
    name: str
    rows: list[FloorRow]


def _leading_letters(name: str) -> str:
    m = re.match(r"[A-Za-z]+", name)
    return m.group(0) if m else ""


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


async def floor(pool: asyncpg.Pool, sites: Sequence[str] | None, site: str) -> list[Room]:
    if sites is not None and site not in sites:
        return []
    # tags read in SQL (no JSON decoding per point); the newest value only for temperatures
    # (the lateral's condition on the outer row is a one-time filter: no probe otherwise)
    rows = await pool.fetch(
        f"""SELECT p.gateway_id, p.point_id, p.units, p.tags->>'rack' AS rack,
                  p.tags->>'row' AS "row", p.tags->>'room' AS room, t.is_temp,
                  l.value, l.quality
           FROM points p JOIN gateways g ON g.id = p.gateway_id
           CROSS JOIN LATERAL (SELECT coalesce(p.tags->>'kind' = 'temperature', false)
                                      AS is_temp) t
           LEFT JOIN LATERAL (SELECT r.value, r.quality FROM readings r
                              WHERE t.is_temp AND r.point_key = p.key
                              ORDER BY r.time DESC LIMIT 1) l ON true
           WHERE {SITE_EXPR} = $1 AND p.tags ? 'rack'
           ORDER BY p.gateway_id, p.point_id""",
        site,
    )
    alarms = await active_alarms(pool, sites, site=site)
    worst: dict[tuple[str, str], list[AlarmRow]] = defaultdict(list)
    for a in alarms.rows:
        if a.state in ("unack_active", "ack_active", "rtn_unack"):
            worst[(a.gateway_id, a.point_id)].append(a)
    racks: dict[tuple[str, str, str], Rack] = {}
    for r in rows:
        name = r["rack"]
        room = r["room"] or "main"
        row = r["row"] or _leading_letters(name)
        rack = racks.setdefault((room, row.upper(), name), Rack(name, r["gateway_id"]))
        rack.points.append(r["point_id"])
        if r["is_temp"] and r["value"] is not None and (r["quality"] or 0) < 128:
            if rack.temp is None or r["value"] > rack.temp:
                rack.temp, rack.temp_point, rack.units = r["value"], r["point_id"], r["units"]
        elif r["is_temp"] and rack.temp_point is None:
            rack.temp_point = r["point_id"]
        for a in worst.get((r["gateway_id"], r["point_id"]), ()):
            rack.alarm_count += 1
            if rack.alarm_priority is None or priority_rank(a.priority) < priority_rank(
                rack.alarm_priority
            ):
                rack.alarm_priority = a.priority
    rooms: dict[str, dict[str, list[Rack]]] = defaultdict(lambda: defaultdict(list))
    for (room, row, _), rack in racks.items():
        rooms[room][row].append(rack)
    return [
        Room(
            room,
            [
                FloorRow(row or "—", sorted(rs, key=lambda k: _natural(k.name)))
                for row, rs in sorted(rows_.items(), key=lambda kv: _natural(kv[0]))
            ],
        )
        for room, rows_ in sorted(rooms.items(), key=lambda kv: _natural(kv[0]))
    ]


async def sites(pool: asyncpg.Pool, scope: Sequence[str] | None) -> list[str]:
    rows = await pool.fetch(f"SELECT DISTINCT {SITE_EXPR} AS s FROM gateways g ORDER BY 1")
    return [r["s"] for r in rows if r["s"] and (scope is None or r["s"] in scope)]
