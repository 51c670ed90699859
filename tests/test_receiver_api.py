"""The fleet read API against the real receiver and PostgreSQL over real HTTP: gateways with
their fleet-page fields, latest values, multi-point readings, fleet-wide alarms (from the
gateways' alarm events), events paged with limit and cursor, ISO 8601 UTC times, and the
offline /docs and /redoc pages."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx

from outpost.cloud.wire import Heartbeat, IngestBatch, WireEvent, columnar_readings, encode_body

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def send(rcv: ReceiverHandle, path: str, model: Heartbeat | IngestBatch, token: str) -> None:
    body, headers = encode_body(model, "gzip")
    headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=rcv.url, timeout=30) as c:
        r = await c.post(path, content=body, headers=headers)
        assert r.status_code == 200, r.text


def alarm_event(
    eid: int, ts_ms: int, alarm: str, base_to: str, priority: str, kind: str = "alarm", **kw: Any
) -> WireEvent:
    return WireEvent(
        id=eid,
        ts=ts_ms,
        kind=kind,
        source=alarm,
        actor=kw.pop("actor", ""),
        detail={
            "point_id": alarm.split(":")[0],
            "kind": alarm.split(":")[1],
            "to": kw.pop("to", base_to),
            "base_to": base_to,
            "priority": priority,
            "value": kw.pop("value", None),
            "limit": 30.0,
        },
    )


def batch(
    gw: str, seq: int, rows: list[tuple[str, float, float]], events: list[WireEvent]
) -> IngestBatch:
    return IngestBatch(
        gateway_id=gw,
        first_seq=seq,
        last_seq=seq + max(len(rows), 1) - 1,
        readings=columnar_readings(
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [0] * len(rows)
        ),
        events=events,
    )


def iso_times(obj: Any, key: str = "") -> list[tuple[str, Any]]:
    """Every (key, value) whose key names a time, anywhere in a JSON document."""
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in iso_times(v, k)]
    if isinstance(obj, list):
        return [kv for v in obj for kv in iso_times(v, key)]
    if key == "ts" or key.endswith(("_ts", "_at", "_since")) or key in ("last_seen", "from", "to"):
        return [(key, obj)]
    return []


async def test_gateways_latest_and_multi_readings(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    await receiver.enroll("gw-2")  # never heard from: offline
    now = time.time()
    rows = [
        (pid, now - 60 + i * 10, float(i) + (100 if pid == "x.b" else 0))
        for i in range(6)
        for pid in ("x.a", "x.b")
    ]
    mode = WireEvent(
        id=1,
        ts=int(now * 1000) - 5000,
        kind="mode",
        source="fsm",
        actor="system",
        detail={"from": "normal", "to": "maintenance"},
    )
    await send(receiver, "/api/v1/ingest", batch("gw-1", 1, rows, [mode]), token)
    hb = Heartbeat(
        gateway_id="gw-1",
        ts=int(now * 1000),
        mode="maintenance",
        agent_version="1.2.3",
        schedule_version="sched-9",
        devices={
            "cdu-1": {"connected": True, "last_ok_ts": int(now * 1000)},
            "cdu-2": {"connected": False, "error": "timeout"},
        },
        buffer_rows=500,
        unsynced_rows=42,
        oldest_unsynced_age_s=17.5,
        uplink={"connected": True, "last_success_ts": now - 3},
        active_alarms={"critical": 1, "high": 2},
    )
    await send(receiver, "/api/v1/gateways/gw-1/heartbeat", hb, token)
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        gws = (await c.get("/api/v1/gateways")).json()
        assert [(g["gateway_id"], g["status"]) for g in gws] == [
            ("gw-1", "online"),
            ("gw-2", "offline"),
        ]
        g = gws[0]
        assert g["mode"] == "maintenance" and g["mode_since"] is not None
        assert abs(datetime.fromisoformat(g["mode_since"]).timestamp() - (now - 5)) < 1
        assert g["active_alarms"] == {"critical": 1, "high": 2}
        assert (g["devices_up"], g["devices_total"]) == (1, 2)
        assert (g["backlog_rows"], g["oldest_unsynced_age_s"]) == (42, 17.5)
        assert (g["schedule_version"], g["agent_version"]) == ("sched-9", "1.2.3")
        # every time in the document is ISO 8601 UTC, the heartbeat's ms and seconds included
        times = iso_times(gws)
        assert {k for k, _ in times} >= {
            "heartbeat_at",
            "last_seen",
            "ts",
            "last_ok_ts",
            "last_success_ts",
            "enrolled_at",
            "mode_since",
        }
        assert all(v is None or ISO_Z.match(v) for _, v in times), times
        assert (
            abs(
                datetime.fromisoformat(g["heartbeat"]["uplink"]["last_success_ts"]).timestamp()
                - (now - 3)
            )
            < 0.01
        )

        latest = (await c.get("/api/v1/gateways/gw-1/latest")).json()
        assert [(p["point_id"], p["value"], p["quality"]) for p in latest] == [
            ("x.a", 5.0, "good"),
            ("x.b", 105.0, "good"),
        ]
        assert abs(datetime.fromisoformat(latest[0]["ts"]).timestamp() - (now - 10)) < 0.01
        only = (await c.get("/api/v1/gateways/gw-1/latest", params={"points": "x.b"})).json()
        assert [p["point_id"] for p in only] == ["x.b"]

        frm = datetime.fromtimestamp(now - 120, UTC).isoformat()
        r = await c.get(
            "/api/v1/gateways/gw-1/readings",
            params={"points": "x.a,x.b", "from": frm, "resolution": "raw"},
        )
        body = r.json()
        assert body["resolution"] == "raw" and ISO_Z.match(body["from"])
        assert [s["point_id"] for s in body["series"]] == ["x.a", "x.b"]
        assert [x["value"] for x in body["series"][1]["readings"]] == [100.0 + i for i in range(6)]
        agg = (
            await c.get(
                "/api/v1/gateways/gw-1/readings",
                params={"points": "x.a", "from": frm, "resolution": "1h"},
            )
        ).json()
        assert sum(b["count"] for b in agg["series"][0]["readings"]) == 6
        r = await c.get("/api/v1/gateways/gw-1/readings", params={"points": "x.a,nope"})
        assert r.status_code == 404 and "nope" in r.json()["detail"]
        r = await c.get("/api/v1/gateways/gw-1/readings", params={"points": ",".join(["p"] * 0)})
        assert r.status_code == 422


async def test_alarms_fleet_wide_from_events(receiver: ReceiverHandle) -> None:
    t1 = await receiver.enroll("gw-1")
    t2 = await receiver.enroll("gw-2")
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        assert (await c.put("/api/v1/gateways/gw-1/site", json={"site": "north"})).is_success
        assert (await c.put("/api/v1/gateways/gw-2/site", json={"site": "south"})).is_success
    t0 = int(time.time() * 1000) - 60_000
    await send(
        receiver,
        "/api/v1/ingest",
        batch(
            "gw-1",
            1,
            [],
            [
                alarm_event(1, t0, "t1:hi", "unack_active", "high", value=31.0),
                alarm_event(2, t0 + 1000, "t2:hihi", "unack_active", "critical"),
                alarm_event(
                    3,
                    t0 + 2000,
                    "t1:hi",
                    "ack_active",
                    "high",
                    kind="operator.ack",
                    actor="olga@fleet",
                ),
                alarm_event(4, t0 + 3000, "t3:lo", "unack_active", "low"),
                alarm_event(5, t0 + 4000, "t3:lo", "normal", "low", kind="alarm"),
            ],
        ),
        t1,
    )
    await send(
        receiver,
        "/api/v1/ingest",
        batch("gw-2", 1, [], [alarm_event(1, t0, "s1:hi", "unack_active", "high")]),
        t2,
    )
    # a late, older event for an alarm changes nothing
    await send(
        receiver,
        "/api/v1/ingest",
        batch("gw-1", 2, [], [alarm_event(0, t0 - 9000, "t2:hihi", "normal", "critical")]),
        t1,
    )
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        active = (await c.get("/api/v1/alarms")).json()
        got = [
            (a["gateway_id"], a["alarm_id"], a["base_state"], a["priority"], a["site"])
            for a in active["items"]
        ]
        assert got == [
            ("gw-1", "t1:hi", "ack_active", "high", "north"),
            ("gw-1", "t2:hihi", "unack_active", "critical", "north"),
            ("gw-2", "s1:hi", "unack_active", "high", "south"),
        ]
        t1hi = active["items"][0]
        assert t1hi["acked_by"] == "olga@fleet" and ISO_Z.match(t1hi["acked_at"])
        assert datetime.fromisoformat(t1hi["active_since"]).timestamp() * 1000 == t0
        assert active["next_cursor"] is None
        every = (await c.get("/api/v1/alarms", params={"state": "all"})).json()["items"]
        assert [(a["alarm_id"], a["active"]) for a in every if a["gateway_id"] == "gw-1"] == [
            ("t1:hi", True),
            ("t2:hihi", True),
            ("t3:lo", False),
        ]
        crit = (await c.get("/api/v1/alarms", params={"priority": "critical"})).json()["items"]
        assert [a["alarm_id"] for a in crit] == ["t2:hihi"]
        south = (await c.get("/api/v1/alarms", params={"site": "south"})).json()["items"]
        assert [a["alarm_id"] for a in south] == ["s1:hi"]
        # pages of 2 with the cursor cover the same rows
        page1 = (await c.get("/api/v1/alarms", params={"limit": 2})).json()
        page2 = (
            await c.get("/api/v1/alarms", params={"limit": 2, "cursor": page1["next_cursor"]})
        ).json()
        assert [a["alarm_id"] for a in page1["items"] + page2["items"]] == [
            "t1:hi",
            "t2:hihi",
            "s1:hi",
        ]
        assert page2["next_cursor"] is None
    await receiver.add_user("nina", "viewer", sites=["north"])
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        await receiver.login(c, "nina")
        mine = (await c.get("/api/v1/alarms")).json()["items"]
        assert {a["gateway_id"] for a in mine} == {"gw-1"}
        assert (await c.get("/api/v1/alarms", params={"site": "south"})).json()["items"] == []


async def test_events_limit_and_cursor(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    t0 = int(time.time() * 1000) - 3_600_000
    events = [
        WireEvent(
            id=i,
            ts=t0 + (i // 2) * 1000,
            kind="mode" if i % 3 else "system",
            source="fsm",
            actor="",
            detail={"i": i},
        )
        for i in range(1, 9)
    ]
    await send(receiver, "/api/v1/ingest", batch("gw-1", 1, [], events), token)
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        first = (await c.get("/api/v1/events", params={"limit": 3})).json()
        assert len(first["events"]) == 3 and first["truncated"] is True
        ids = [e["event_id"] for e in first["events"]]
        cursor = first["next_cursor"]
        while cursor is not None:
            page = (await c.get("/api/v1/events", params={"limit": 3, "cursor": cursor})).json()
            assert 1 <= len(page["events"]) <= 3
            ids += [e["event_id"] for e in page["events"]]
            cursor = page["next_cursor"]
        assert ids == list(range(1, 9))
        assert all(ISO_Z.match(e["ts"]) for e in first["events"])
        kinds = (await c.get("/api/v1/events", params={"kind": "system"})).json()["events"]
        assert [e["event_id"] for e in kinds] == [3, 6]
        bad = await c.get("/api/v1/events", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 422
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        r = await c.get("/api/v1/events", params={"from": later})
        assert r.status_code == 422 and "must be before" in r.json()["detail"]


async def test_docs_and_redoc_are_served_locally(receiver: ReceiverHandle) -> None:
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        for page in ("/docs", "/redoc"):
            r = await c.get(page)
            assert r.status_code == 200
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
            urls += re.findall(r"""url\s*:\s*['"]([^'"]+)['"]""", r.text)
            urls += re.findall(r"""(?:redoc_url|spec-url)=["']([^"']+)["']""", r.text)
            assert urls, page
            for url in urls:
                full = urljoin(receiver.url + page, url)
                assert urlsplit(full).netloc == urlsplit(receiver.url).netloc, (page, url)
                got = await c.get(full)
                assert got.status_code == 200, (page, url)
            assert "cdn.jsdelivr.net" not in r.text and "fonts.googleapis" not in r.text
        spec = (await c.get("/openapi.json")).json()
    for path in (
        "/api/v1/alarms",
        "/api/v1/gateways/{gateway_id}/latest",
        "/api/v1/gateways/{gateway_id}/readings",
        "/api/v1/audit",
        "/api/v1/users",
        "/login",
        "/logout",
        "/api/v1/me",
    ):
        assert path in spec["paths"], path
    assert {"bearer", "session"} <= set(spec["components"]["securitySchemes"])
