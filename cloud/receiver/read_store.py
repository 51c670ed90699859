"""Queries behind the fleet read API (gateways with site and mode, alarms, latest values,
paged events), every one filtered by the caller's site scope in SQL.

``sites`` arguments: None means every site; a list limits to gateways of those sites (a
gateway without a site is then invisible).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from .users import Executor

# the site of a gateway: set by an admin, else the one its heartbeat reports (if any)
SITE_EXPR = "coalesce(g.site, g.last_heartbeat ->> 'site')"
_VISIBLE = f"($1::text[] IS NULL OR {SITE_EXPR} = ANY($1::text[]))"

_GATEWAYS = f"""SELECT g.id, {SITE_EXPR} AS site, g.enrolled_at, g.revoked_at, g.last_seen,
        g.last_heartbeat,
        (SELECT count(*) FROM points p WHERE p.gateway_id = g.id) AS points,
        (SELECT e.ts FROM events e WHERE e.gateway_id = g.id
           AND e.kind IN ('mode', 'operator.mode') ORDER BY e.ts DESC LIMIT 1) AS mode_since
    FROM gateways g
    WHERE {_VISIBLE}"""


async def gateways(db: Executor, sites: Sequence[str] | None) -> list[asyncpg.Record]:
    return await db.fetch(_GATEWAYS + " ORDER BY g.id", _sites(sites))


async def gateway(
    db: Executor, sites: Sequence[str] | None, gateway_id: str
) -> asyncpg.Record | None:
    return await db.fetchrow(_GATEWAYS + " AND g.id = $2", _sites(sites), gateway_id)


async def set_site(db: Executor, gateway_id: str, site: str | None) -> None:
    """Create the gateway row if needed (a site may be set before enrollment)."""
    await db.execute(
        "INSERT INTO gateways (id, site) VALUES ($1, $2) "
        "ON CONFLICT (id) DO UPDATE SET site = EXCLUDED.site",
        gateway_id,
        site,
    )


async def latest(
    db: Executor, gateway_id: str, point_ids: Sequence[str] | None
) -> list[asyncpg.Record]:
    """Newest reading per point of the gateway (points without readings: NULL time)."""
    return await db.fetch(
        """SELECT p.point_id, p.units, r.time, r.value, r.quality
           FROM points p
           LEFT JOIN LATERAL (
               SELECT time, value, quality FROM readings
               WHERE point_key = p.key ORDER BY time DESC LIMIT 1) r ON true
           WHERE p.gateway_id = $1 AND ($2::text[] IS NULL OR p.point_id = ANY($2::text[]))
           ORDER BY p.point_id""",
        gateway_id,
        list(point_ids) if point_ids is not None else None,
    )


async def point_keys(db: Executor, gateway_id: str, point_ids: Sequence[str]) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT point_id, key FROM points WHERE gateway_id = $1 AND point_id = ANY($2::text[])",
        gateway_id,
        list(point_ids),
    )
    return {r["point_id"]: r["key"] for r in rows}


async def alarms(
    db: Executor,
    sites: Sequence[str] | None,
    *,
    active_only: bool,
    site: str | None,
    gateway: str | None,
    priority: str | None,
    after: tuple[str, str] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The latest state of every alarm (or only the active ones), ordered by gateway and
    alarm id; ``after`` continues past (gateway_id, alarm_id)."""
    return await db.fetch(
        f"""SELECT a.*, {SITE_EXPR} AS site FROM alarm_latest a
            JOIN gateways g ON g.id = a.gateway_id
            WHERE {_VISIBLE}
              AND (NOT $2 OR a.base_state IN ('unack_active', 'ack_active'))
              AND ($3::text IS NULL OR {SITE_EXPR} = $3)
              AND ($4::text IS NULL OR a.gateway_id = $4)
              AND ($5::text IS NULL OR a.priority = $5)
              AND ($6::text IS NULL OR (a.gateway_id, a.alarm_id) > ($6, $7))
            ORDER BY a.gateway_id, a.alarm_id LIMIT $8""",
        _sites(sites),
        active_only,
        site,
        gateway,
        priority,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def events(
    db: Executor,
    sites: Sequence[str] | None,
    *,
    gateway: str | None,
    start: datetime,
    end: datetime,
    kind: str | None,
    after: tuple[datetime, str, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Events by (ts, gateway_id, event_id); ``after`` continues past that key."""
    return await db.fetch(
        f"""SELECT e.gateway_id, e.event_id, e.ts, e.kind, e.source, e.actor, e.detail
            FROM events e
            WHERE e.ts >= $2 AND e.ts < $3
              AND ($4::text IS NULL OR e.gateway_id = $4)
              AND ($5::text IS NULL OR e.kind = $5)
              AND ($6::timestamptz IS NULL OR (e.ts, e.gateway_id, e.event_id) > ($6, $7, $8))
              AND ($1::text[] IS NULL OR e.gateway_id IN (
                    SELECT g.id FROM gateways g WHERE {_VISIBLE}))
            ORDER BY e.ts, e.gateway_id, e.event_id LIMIT $9""",
        _sites(sites),
        start,
        end,
        gateway,
        kind,
        after[0] if after else None,
        after[1] if after else None,
        after[2] if after else None,
        limit,
    )


def _sites(sites: Sequence[str] | None) -> list[str] | None:
    return list(sites) if sites is not None else None


# --- opaque cursors ---------------------------------------------------------------------------


def encode_cursor(*parts: str | int | datetime) -> str:
    """An opaque page cursor: the sort key of the last row of a page."""
    payload = [p.isoformat() if isinstance(p, datetime) else p for p in parts]
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[str | int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise ValueError("bad cursor") from None
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise ValueError("bad cursor")
    return value


def event_cursor(cursor: str) -> tuple[datetime, str, int]:
    parts = decode_cursor(cursor)
    if len(parts) != 3 or not isinstance(parts[0], str) or not isinstance(parts[1], str):
        raise ValueError("bad cursor")
    if not isinstance(parts[2], int):
        raise ValueError("bad cursor")
    ts = datetime.fromisoformat(parts[0])
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)), parts[1], parts[2]


def alarm_cursor(cursor: str) -> tuple[str, str]:
    parts = decode_cursor(cursor)
    if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
        raise ValueError("bad cursor")
    return str(parts[0]), str(parts[1])
