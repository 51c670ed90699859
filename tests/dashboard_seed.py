"""Seed a receiver with a small, realistic dashboard fixture through its real HTTP API:
enrolled gateways with sites, point metadata carrying the KPI and position tags, three hours
of readings, alarm and mode events, heartbeats; plus users of each role. Also the dashboard
tests' Chromium (:func:`launch_browser`) and form login."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import httpx
from playwright.async_api import Browser, Page, async_playwright

from outpost.cloud.receiver import users
from outpost.cloud.wire import (
    DeviceHealth,
    Heartbeat,
    IngestBatch,
    PointMeta,
    WireEvent,
    columnar_readings,
    encode_body,
)

PASSWORD = "correct horse battery"
GW = "gw-hall1"
OTHER_GW = "gw-east"
SITE = "demo"
OTHER_SITE = "east"
RACKS = [f"A0{i}" for i in range(1, 7)] + [f"B0{i}" for i in range(1, 7)]


def points() -> list[PointMeta]:
    out = [
        PointMeta(
            point_id=f"rack-{r.lower()}.temperature",
            device="rack-sensors",
            units="degC",
            description=f"rack {r} inlet temperature",
            tags={"room": "hall-1", "row": r[0], "rack": r, "kind": "temperature", "site": SITE},
            alarm_h=32.0,
            alarm_hh=35.0,
            alarm_priority="high",
        )
        for r in RACKS
    ]
    out += [
        PointMeta(
            point_id=f"rack-{r.lower()}.power",
            device="rack-sensors",
            units="kW",
            tags={"rack": r, "row": r[0], "room": "hall-1", "kpi": "it_power"},
        )
        for r in RACKS
    ]
    out += [
        PointMeta(
            point_id="meter-main.power",
            device="meter-main",
            units="kW",
            description="facility main meter",
            tags={"kpi": "facility_power", "elec": ""},
        ),
        PointMeta(
            point_id="cdu-01.supply_temp",
            device="cdu-01",
            units="degC",
            description="CDU secondary supply temperature",
            tags={"equip": "cdu", "temp": "", "supply": ""},
            min=0.0,
            max=80.0,
            alarm_h=27.0,
            alarm_hh=30.0,
            alarm_l=12.0,
            alarm_priority="high",
        ),
    ]
    return out


def rack_temp(i: int, t: float) -> float:
    return round(22.0 + (i % 6) * 1.7 + 0.8 * math.sin(t / 600.0 + i), 2)


def batch(
    gateway_id: str, seq: int, t0: float, minutes: int, events: list[WireEvent]
) -> IngestBatch:
    ids: list[str] = []
    ts: list[float] = []
    vals: list[float | None] = []
    for m in range(minutes):
        t = t0 + m * 60.0
        for i, r in enumerate(RACKS):
            ids += [f"rack-{r.lower()}.temperature", f"rack-{r.lower()}.power"]
            ts += [t, t]
            vals += [rack_temp(i, t), round(4.0 + i * 0.3, 2)]
        ids += ["meter-main.power", "cdu-01.supply_temp"]
        ts += [t, t]
        vals += [
            round(12 * 0.3 * 6 + 58.0 + math.sin(t / 900.0), 2),
            round(18 + math.sin(t / 1200.0), 2),
        ]
    return IngestBatch(
        gateway_id=gateway_id,
        first_seq=seq,
        last_seq=seq + len(ids) - 1,
        readings=columnar_readings(ids, ts, vals, [0] * len(ids)),
        events=events,
        points=points(),
    )


def alarm_event(eid: int, ts: float, alarm: str, point: str, frm: str, to: str, prio: str,
                value: float, kind: str = "alarm", actor: str = "") -> WireEvent:  # fmt: skip
    return WireEvent(
        id=eid,
        ts=int(ts * 1000),
        kind=kind,
        source=alarm,
        actor=actor,
        detail={
            "point_id": point,
            "device": point.split(".")[0],
            "kind": alarm.rsplit(":", 1)[-1],
            "from": frm,
            "to": to,
            "base_from": frm,
            "base_to": to,
            "value": value,
            "limit": 32.0,
            "priority": prio,
            "note": None,
        },
    )


@dataclass
class Seeded:
    tokens: dict[str, str] = field(default_factory=dict)
    next_seq: int = 1


async def post(url: str, path: str, model: object, token: str) -> httpx.Response:
    body, headers = encode_body(model)  # type: ignore[arg-type]
    headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post(path, content=body, headers=headers)
    assert r.status_code == 200, r.text
    return r


async def seed(url: str, admin_token: str, dsn: str) -> Seeded:
    s = Seeded()
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as c:
        for gw, site in ((GW, SITE), (OTHER_GW, OTHER_SITE)):
            r = await c.post(f"/api/v1/gateways/{gw}/enrollment-tokens", json={"ttl_s": 600})
            r.raise_for_status()
            e = await c.post(
                "/api/v1/enroll",
                json={"gateway_id": gw, "enrollment_token": r.json()["enrollment_token"]},
            )
            e.raise_for_status()
            s.tokens[gw] = e.json()["gateway_token"]
            (await c.put(f"/api/v1/gateways/{gw}/site", json={"site": site})).raise_for_status()
    now = time.time()
    t0 = now - 3 * 3600
    events = [
        WireEvent(id=1, ts=int(t0 * 1000), kind="mode", source="normal", detail={"from": "startup", "to": "normal", "cause": "start"}),
        alarm_event(2, now - 1500, "rack-a06.temperature:hi", "rack-a06.temperature", "normal", "unack_active", "high", 32.4),
        alarm_event(3, now - 5400, "cdu-01.supply_temp:hi", "cdu-01.supply_temp", "normal", "unack_active", "medium", 27.3),
        alarm_event(4, now - 5000, "cdu-01.supply_temp:hi", "cdu-01.supply_temp", "unack_active", "ack_active", "medium", 27.3, "operator.ack", "alice@fleet"),
        alarm_event(5, now - 7000, "rack-b02.temperature:hi", "rack-b02.temperature", "normal", "unack_active", "low", 32.1),
        alarm_event(6, now - 6400, "rack-b02.temperature:hi", "rack-b02.temperature", "unack_active", "rtn_unack", "low", 31.0),
        alarm_event(7, now - 6000, "rack-b02.temperature:hi", "rack-b02.temperature", "rtn_unack", "normal", "low", 31.0, "operator.ack", "bob@fleet"),
    ]  # fmt: skip
    # three hours of 1-minute readings in batches of 30 minutes
    seq = 1
    for k in range(6):
        b = batch(GW, seq, t0 + k * 1800, 30, events if k == 5 else [])
        await post(url, "/api/v1/ingest", b, s.tokens[GW])
        seq = b.last_seq + 1
    other = batch(OTHER_GW, 1, now - 600, 5, [])
    await post(url, "/api/v1/ingest", other, s.tokens[OTHER_GW])
    s.next_seq = seq
    for gw in (GW, OTHER_GW):
        hb = Heartbeat(
            gateway_id=gw,
            ts=int(now * 1000),
            mode="normal",
            agent_version="0.1.0",
            schedule_version="3f9a1c2e7b4d",
            devices={
                "rack-sensors": DeviceHealth(connected=True, last_ok_ts=int(now * 1000)),
                "meter-main": DeviceHealth(connected=True, last_ok_ts=int(now * 1000)),
                "cdu-01": DeviceHealth(
                    connected=gw == GW,
                    last_ok_ts=int(now * 1000),
                    error=None if gw == GW else "timeout",
                ),
            },
            unsynced_rows=0 if gw == GW else 1250,
            oldest_unsynced_age_s=None if gw == GW else 95.0,
            active_alarms={"high": 1, "medium": 1} if gw == GW else {},
        )
        await post(url, f"/api/v1/gateways/{gw}/heartbeat", hb, s.tokens[gw])
    conn = await asyncpg.connect(dsn)
    try:
        await users.add_user(conn, "ada", "admin", PASSWORD)
        await users.add_user(conn, "olga", "operator", PASSWORD)
        await users.add_user(conn, "vic", "viewer", PASSWORD)
        await users.add_user(conn, "sam", "viewer", PASSWORD, [OTHER_SITE])
    finally:
        await conn.close()
    return s


async def ingest_value(
    url: str, seeded: Seeded, gateway_id: str, point_id: str, value: float
) -> None:
    b = IngestBatch(
        gateway_id=gateway_id,
        first_seq=seeded.next_seq,
        last_seq=seeded.next_seq,
        readings=columnar_readings([point_id], [time.time()], [value], [0]),
    )
    seeded.next_seq += 1
    await post(url, "/api/v1/ingest", b, seeded.tokens[gateway_id])


# --- browser -------------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@asynccontextmanager
async def launch_browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, no background traffic (never a downloaded browser)."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield b
        finally:
            await b.close()


async def login(page: Page, base: str, user: str, next_path: str = "/") -> None:
    await page.goto(f"{base}/login?next={next_path}")
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}{next_path}")
