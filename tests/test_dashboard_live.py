"""Live updates: NOTIFY from the ingest/heartbeat path reaches LiveHub subscribers (the SSE
fan-out of every receiver process), against a real receiver and real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import httpx

from outpost.cloud.receiver.live import (
    MAX_PAYLOAD,
    MAX_READING_NOTIFIES,
    LiveEvent,
    LiveHub,
    reading_payloads,
)
from outpost.cloud.wire import Heartbeat, IngestBatch, WireEvent, columnar_readings, encode_body

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)


def batch(gw: str, seq: int, values: dict[str, float], events: list[WireEvent] = []) -> IngestBatch:  # noqa: B006
    now = time.time()
    ids = list(values)
    return IngestBatch(
        gateway_id=gw,
        first_seq=seq,
        last_seq=seq + len(ids) - 1,
        readings=columnar_readings(ids, [now] * len(ids), list(values.values()), [0] * len(ids)),
        events=events,
    )


async def post(url: str, path: str, model: object, token: str) -> None:
    body, headers = encode_body(model)  # type: ignore[arg-type]
    headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post(path, content=body, headers=headers)
        assert r.status_code == 200, r.text


async def next_event(q: asyncio.Queue[LiveEvent | None], kind: str) -> LiveEvent:
    async with asyncio.timeout(10):
        while True:
            ev = await q.get()
            assert ev is not None
            if ev.type == kind:
                return ev


async def test_ingest_heartbeat_and_alarm_events_reach_subscribers(
    receiver: ReceiverHandle,
) -> None:
    token = await receiver.enroll("gw-a")
    other = await receiver.enroll("gw-b")
    hub = LiveHub(receiver.dsn)
    try:
        mine = await hub.subscribe(lambda gw: gw == "gw-a")
        everyone = await hub.subscribe(lambda gw: True)

        await post(receiver.url, "/api/v1/ingest", batch("gw-b", 1, {"x.t": 1.0}), other)
        first = batch("gw-a", 1, {"x.t": 21.5, "x.h": 40})
        await post(receiver.url, "/api/v1/ingest", first, token)
        ev = await next_event(mine.queue, "reading")
        # the site-scoped subscriber never sees gw-b
        assert ev.gateway_id == "gw-a"
        msg = json.loads(ev.raw)
        assert msg["pts"]["x.t"][1] == 21.5 and msg["pts"]["x.h"][1] == 40.0
        assert msg["pts"]["x.t"][2] == 0 and msg["more"] is False
        seen = [(await next_event(everyone.queue, "reading")).gateway_id for _ in range(2)]
        assert sorted(seen) == ["gw-a", "gw-b"]

        hb = Heartbeat(
            gateway_id="gw-a", ts=int(time.time() * 1000), mode="normal", agent_version="t"
        )
        await post(receiver.url, "/api/v1/gateways/gw-a/heartbeat", hb, token)
        assert (await next_event(mine.queue, "hb")).gateway_id == "gw-a"

        alarm = WireEvent(id=7, ts=int(time.time() * 1000), kind="alarm", source="x.t:hi")
        await post(receiver.url, "/api/v1/ingest", batch("gw-a", 10, {"x.t": 30.0}, [alarm]), token)
        ev = await next_event(mine.queue, "alarm")
        assert json.loads(ev.raw)["n"] == 1

        # a replayed batch inserts nothing and notifies nothing
        await post(receiver.url, "/api/v1/ingest", first, token)
        await post(receiver.url, "/api/v1/gateways/gw-a/heartbeat", hb, token)
        async with asyncio.timeout(10):
            ev = await mine.queue.get()
        assert ev is not None and ev.type == "hb"  # no "reading" came before it
    finally:
        await hub.close()


def test_reading_payloads_newest_sample_per_point_and_size_bound() -> None:
    ids = [f"dev.p{i:04d}" for i in range(3000)]
    idx = list(range(3000)) * 2
    ts = [1000] * 3000 + [2000] * 3000
    vals: list[float | None] = [float(i) for i in range(6000)]
    out = reading_payloads("gw", ids, idx, ts, vals, [0] * 6000)
    assert len(out) == MAX_READING_NOTIFIES
    assert all(len(p.encode()) <= MAX_PAYLOAD for p in out)
    msgs = [json.loads(p) for p in out]
    assert msgs[-1]["more"] is True and not any(m["more"] for m in msgs[:-1])
    pts = {k: v for m in msgs for k, v in m["pts"].items()}
    assert pts["dev.p0000"] == [2000, 3000.0, 0]  # the newest of the two samples
    small = reading_payloads("gw", ["a", "b"], [0, 1, 0], [1, 2, 3], [1.0, None, 3.0], [0, 1, 0])
    assert [json.loads(p) for p in small] == [
        {"t": "reading", "gw": "gw", "pts": {"a": [3, 3.0, 0], "b": [2, None, 1]}, "more": False}
    ]
