"""Live updates: NOTIFY from the ingest/heartbeat path reaches LiveHub subscribers (the SSE
fan-out of every receiver process), against a real receiver and real PostgreSQL; and two
receivers behind Debian's nginx on one database: live updates and sessions cross over."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest_asyncio
from playwright.async_api import Browser, expect

from outpost.cloud.receiver.live import (
    MAX_PAYLOAD,
    MAX_READING_NOTIFIES,
    LiveEvent,
    LiveHub,
    reading_payloads,
)
from outpost.cloud.wire import Heartbeat, IngestBatch, WireEvent, columnar_readings, encode_body
from tests.dashboard_seed import (
    GW,
    OTHER_GW,
    PASSWORD,
    ingest_value,
    launch_browser,
    login,
    seed,
)
from tests.receiver_fixtures import free_port

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverFactory, ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_browser() as b:
        yield b


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


# --- two receivers behind nginx ----------------------------------------------------------------


NGINX_CONF = """
daemon off;
worker_processes 1;
user root root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream receivers {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://receivers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            # SSE: no buffering, long reads
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


@pytest_asyncio.fixture
async def two_receivers_behind_nginx(
    receiver_factory: ReceiverFactory, tmp_path: Path
) -> AsyncIterator[tuple[ReceiverHandle, ReceiverHandle, str]]:
    a = await receiver_factory()
    b = await receiver_factory(dsn=a.dsn)  # same database: two stateless receivers
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, a=a.port, b=b.port, port=port))
    proc = await asyncio.create_subprocess_exec(
        "/usr/sbin/nginx",
        *("-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(200):  # bounded wait for nginx to listen
                assert proc.returncode is None, (tmp_path / "error.log").read_text()
                try:
                    if (await c.get(url + "/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                raise TimeoutError("nginx did not start")
        yield a, b, url
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_two_receivers_behind_nginx_share_live_updates_and_sessions(
    two_receivers_behind_nginx: tuple[ReceiverHandle, ReceiverHandle, str], browser: Browser
) -> None:
    a, b, lb = two_receivers_behind_nginx
    seeded = await seed(a.url, a.admin_token, a.dsn)
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await login(page, lb, "olga", f"/gateways/{GW}")
    await expect(page.locator("body[data-live=on]")).to_have_count(1)
    cell = page.locator(f'[data-live-point="{GW}|cdu-01.supply_temp"]').first
    # whichever receiver holds this browser's SSE stream, one of these ingests went through
    # the other one: both values must reach the page
    await ingest_value(a.url, seeded, GW, "cdu-01.supply_temp", 61.5)
    await expect(cell).to_have_text("61.50", timeout=10_000)
    await ingest_value(b.url, seeded, GW, "cdu-01.supply_temp", 62.5)
    await expect(cell).to_have_text("62.50", timeout=10_000)

    # the session made through the balancer is valid on each receiver directly
    cookies = {c["name"]: c["value"] for c in await ctx.cookies()}
    assert "outpost_session" in cookies
    for rcv in (a, b):
        async with httpx.AsyncClient(base_url=rcv.url, cookies=cookies) as c:
            me = await c.get("/api/v1/me")
            assert me.status_code == 200 and me.json()["name"] == "olga"
            page_html = await c.get(f"/gateways/{GW}", headers={"Accept": "text/html"})
            assert page_html.status_code == 200 and "cdu-01.supply_temp" in page_html.text
    await ctx.close()


async def test_batch_larger_than_the_notifications_still_updates_the_page(
    receiver: ReceiverHandle, browser: Browser
) -> None:
    seeded = await seed(receiver.url, receiver.admin_token, receiver.dsn)
    ids = [f"bulk.p{i:04d}" for i in range(2000)]

    async def bulk(value: float) -> None:
        now = time.time()
        b = IngestBatch(
            gateway_id=GW,
            first_seq=seeded.next_seq,
            last_seq=seeded.next_seq + len(ids) - 1,
            readings=columnar_readings(ids, [now] * len(ids), [value] * len(ids), [0] * len(ids)),
        )
        seeded.next_seq += len(ids)
        await post(receiver.url, "/api/v1/ingest", b, seeded.tokens[GW])

    await bulk(1.0)
    page = await (await browser.new_context()).new_page()
    await login(page, receiver.url, "olga", f"/gateways/{GW}")
    await expect(page.locator("body[data-live=on]")).to_have_count(1)
    first = page.locator(f'[data-live-point="{GW}|bulk.p0000"]')
    last = page.locator(f'[data-live-point="{GW}|bulk.p1999"]')
    await expect(last).to_have_text("1")
    await bulk(2.5)  # more points than 8 notifications carry: "more" makes the page re-read
    await expect(first).to_have_text("2.50", timeout=10_000)
    await expect(last).to_have_text("2.50", timeout=10_000)


async def test_page_catches_up_after_its_receiver_restarts(
    receiver_factory: ReceiverFactory, browser: Browser
) -> None:
    a = await receiver_factory()
    b = await receiver_factory(dsn=a.dsn)
    seeded = await seed(a.url, a.admin_token, a.dsn)
    page = await (await browser.new_context()).new_page()
    await login(page, a.url, "olga", f"/gateways/{GW}")
    await expect(page.locator("body[data-live=on]")).to_have_count(1)
    cell = page.locator(f'[data-live-point="{GW}|cdu-01.supply_temp"]').first
    await a.stop()
    await expect(page.locator("body[data-live=off]")).to_have_count(1)
    # while the page's receiver is down, a value arrives through the other one: nobody
    # pushes it to this page, which re-reads what it shows once its stream is back
    await ingest_value(b.url, seeded, GW, "cdu-01.supply_temp", 44.25)
    await a.start()
    await expect(page.locator("body[data-live=on]")).to_have_count(1, timeout=15_000)
    await expect(cell).to_have_text("44.25", timeout=10_000)


async def test_live_stream_honours_the_site_scope(receiver: ReceiverHandle) -> None:
    seeded = await seed(receiver.url, receiver.admin_token, receiver.dsn)
    async with httpx.AsyncClient(base_url=receiver.url, timeout=30) as c:
        r = await c.post(
            "/login",
            data={"username": "sam", "password": PASSWORD},  # viewer of site "east" only
            headers={"Accept": "application/json"},
        )
        assert r.status_code == 200, r.text
        async with c.stream("GET", "/live", headers={"Accept": "text/event-stream"}) as s:
            assert s.status_code == 200
            lines = s.aiter_lines()
            async with asyncio.timeout(10):
                while await anext(lines) != "event: ready":
                    pass
            # committed in this order: the scoped stream must skip the first
            await ingest_value(receiver.url, seeded, GW, "cdu-01.supply_temp", 1.0)
            await ingest_value(receiver.url, seeded, OTHER_GW, "cdu-01.supply_temp", 2.0)
            async with asyncio.timeout(10):
                while await anext(lines) != "event: reading":
                    pass
                line = await anext(lines)
            msg = json.loads(line.removeprefix("data: "))
            assert msg["gw"] == OTHER_GW and msg["pts"]["cdu-01.supply_temp"][1] == 2.0
    async with httpx.AsyncClient(base_url=receiver.url) as anonymous:
        r = await anonymous.get("/live", headers={"Accept": "text/event-stream"})
        assert r.status_code == 401
