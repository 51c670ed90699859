"""The agent's status page (issue 12) in a real Chromium against a real `outpost run` polling a
real pymodbus device: devices, points and alarms on the page, live values by SSE, a trend from
the buffer, ack (multi-select) and shelve from the page reaching `outpost alarms`; the rules
of who may use it: loopback without users, LAN without users refuses to start, with users a
login, viewer vs operator (also forged requests), CSRF, loopback Host; a screenshot for the
README (docs/screenshots/status-page.png)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from tests.agent_process import OUTPOST, AgentProcess, cli, start_agent, write_config
from tests.dashboard_seed import launch_browser
from tests.modbus_server import ModbusTestServer, start_server

REPO = Path(__file__).resolve().parent.parent
NONZERO = re.compile(r"^[1-9][0-9]*$")
SCREENSHOTS = REPO / "docs" / "screenshots"
ARTIFACTS = REPO / "var" / "test-artifacts" / "status-page"
SCHEDULE = (
    "point_id,device,address,data_type,scale,units,description,alarm_h,alarm_hh,alarm_priority,min,max\n"
    "plc.supply_temp,plc,hr:0,int16,0.1,degC,CDU supply temperature,30,40,high,,\n"
    "plc.return_temp,plc,hr:1,int16,0.1,degC,CDU return temperature,35,,medium,,\n"
    "plc.leak,plc,hr:2,int16,1,,leak detector,0.5,,critical,,\n"
    "plc.flow,plc,hr:3,int16,0.1,l/min,coolant flow,,,,0,500\n"
)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _until(fn: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


@dataclass
class Site:
    server: ModbusTestServer
    agent: AgentProcess
    config: Path
    base: str

    async def alarms(self) -> dict[str, dict[str, Any]]:
        r = await asyncio.to_thread(cli, self.config, "alarms", "--json")
        assert r.returncode == 0, r.stderr
        return {a["id"]: a for a in json.loads(r.stdout)}

    async def events(self, kind: str) -> list[dict[str, Any]]:
        r = await asyncio.to_thread(cli, self.config, "events", "--json", "--kind", kind)
        assert r.returncode == 0, r.stderr
        return list(json.loads(r.stdout))


async def _site(tmp_path: Path, host: str, *, users: dict[str, str] | None = None) -> Site:
    server = await start_server()
    await server.set("hr", 0, [224, 286, 0, 1200])  # 22.4 degC, 28.6 degC, no leak, 120 l/min
    port = _free_port(host)
    cfg = write_config(
        tmp_path,
        {
            "plc": {
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "poll_interval": 0.5,
            }
        },
        SCHEDULE,
        extra=f'[api]\nbind = "{host}:{port}"\n[alarms]\nstale_alarms = false\n',
    )
    for name, role in (users or {}).items():
        r = await asyncio.to_thread(
            subprocess.run,
            [*OUTPOST, "user", "add", name, "--role", role, "--password-stdin", "-c", str(cfg)],
            input=f"pw-{name}-secret\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
    agent = start_agent(cfg)
    await asyncio.to_thread(agent.wait_ready)
    base = f"http://{host}:{port}"

    async def answers() -> bool:
        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(f"{base}/login")).status_code in (200, 303)
        except httpx.TransportError:
            return False

    await _until(answers)
    return Site(server, agent, cfg, base)


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_browser() as b:
        yield b


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = await _site(tmp_path, "127.0.0.1")
    try:
        yield s
    finally:
        s.agent.stop()
        await s.server.stop()


async def _raise_alarms(site: Site) -> None:
    await site.server.set("hr", 0, [352, 371])  # supply 35.2 > 30 (high), return 37.1 > 35

    async def both() -> bool:
        a = await site.alarms()
        return all(
            a.get(i, {}).get("state") == "unack_active"
            for i in ("plc.supply_temp:hi", "plc.return_temp:hi")
        )

    await _until(both)


async def test_status_page_on_loopback(site: Site, browser: Browser) -> None:
    await _raise_alarms(site)
    page: Page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        await page.goto(site.base + "/")
        # site and gateway, mode, devices, points with units and limits, active alarms
        await expect(page.locator("#kpi-mode")).to_contain_text("normal")
        await expect(page.locator("#overview")).to_contain_text("Test site")
        await expect(page.locator("#overview")).to_contain_text("gw-test")
        await expect(page.locator('tr[data-device="plc"]')).to_contain_text("up")
        row = page.locator('tr[data-point="plc.flow"]')
        await expect(row).to_contain_text("120")
        await expect(row).to_contain_text("l/min")
        # last change: when the value last moved (the first reading counts), ISO 8601 UTC
        await expect(page.locator("#points-table thead")).to_contain_text("Last change")
        changed = row.locator('td[title="when the value last moved to a new value"]')
        await expect(changed).to_have_text(re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"))
        await expect(page.locator('tr[data-point="plc.supply_temp"]')).to_contain_text("HH 40")
        await expect(page.locator("#alarms-table")).to_contain_text("plc.supply_temp:hi")
        await expect(page.locator("#alarms-table")).to_contain_text("plc.return_temp:hi")
        await expect(page.locator("#kpi-uplink")).to_contain_text("edge-only")

        # live by SSE: a new device value reaches the page without a reload
        await expect(page.locator("body")).to_have_attribute("data-live", "on")
        await site.server.set("hr", 3, [1375])
        await expect(row.locator(".live-val")).to_have_text("137.50")

        # the trend of a point from the buffer, drawn by the kit's uPlot chart
        chart = page.locator("#trend-chart")
        await expect(chart).to_have_attribute("data-points", NONZERO)

        # filters: by device, quality and text
        await page.goto(site.base + "/?q=flow")
        await expect(page.locator("#points-table tbody tr")).to_have_count(1)
        await page.goto(site.base + "/?quality=bad")
        await expect(page.locator("#points-table")).to_have_count(0)
        await page.goto(site.base + "/")

        # shelve without a reason is refused on the page; with one it reaches the agent
        await page.check('input[name="sel"][value="gw-test|plc.return_temp:hi"]')
        await page.click("#shelve-selected")
        await expect(page.locator("[data-command-message]")).to_contain_text("needs a reason")
        assert (await site.alarms())["plc.return_temp:hi"]["state"] == "unack_active"
        await page.fill('input[name="note"]', "sensor swap")
        await page.click("#shelve-selected")

        async def shelved() -> bool:
            return (await site.alarms())["plc.return_temp:hi"]["state"] == "shelved"

        await _until(shelved)

        # multi-select ack: both alarms in one go → `outpost alarms` shows who acked
        await page.fill('input[name="note"]', "")
        await expect(page.locator("#alarms-table")).to_contain_text("shelved")
        await page.check('input[data-select-all="sel"]')
        await page.click("#ack-selected")

        async def acked() -> dict[str, Any] | None:
            a = await site.alarms()
            hi = a["plc.supply_temp:hi"]
            return a if hi["state"] == "ack_active" else None

        alarms = await _until(acked)
        assert alarms["plc.supply_temp:hi"]["acked_by"] == "local@page"
        acks = await site.events("ack")
        assert {(e["source"], e["actor"]) for e in acks} >= {("plc.supply_temp:hi", "local@page")}
        shelves = await site.events("shelve")
        assert shelves[-1]["actor"] == "local@page"
        assert shelves[-1]["detail"]["note"] == "sensor swap"

        await page.goto(site.base + "/")
        await expect(page.locator("#trend-chart")).to_have_attribute("data-points", NONZERO)
        await site.server.set("hr", 0, [352, 371, 1])  # a critical leak alarm for the picture
        await expect(page.locator("#alarms-table")).to_contain_text("plc.leak:hi")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        if os.environ.get("OUTPOST_UPDATE_SCREENSHOTS") == "1":  # refresh the README's picture
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOTS / "status-page.png")
    finally:
        await page.close()

    # the rules without login: loopback Host only, CSRF on every state-changing request
    async with httpx.AsyncClient(base_url=site.base) as c:
        r = await c.get("/", headers={"Host": "evil.example:8710"})
        assert r.status_code == 403
        r = await c.get("/")
        assert r.status_code == 200 and "outpost_session" in r.cookies
        r = await c.post("/api/alarms/plc.leak:hi/ack", json={})
        assert r.status_code == 403 and "CSRF" in r.text
        r = await c.post("/api/alarms/plc.leak:hi/ack", json={}, headers={"X-CSRF-Token": "forged"})
        assert r.status_code == 403
        assert (await site.alarms())["plc.leak:hi"]["state"] == "unack_active"
        # the same JSON API as on the socket: status, points, history
        status = (await c.get("/api/status")).json()
        assert status["gateway_id"] == "gw-test" and "buffer" in status
        hist = (await c.get("/api/points/plc.flow/history", params={"hours": 1})).json()
        assert hist["units"] == "l/min" and len(hist["t"]) == len(hist["value"]) > 0


async def test_lan_bind_without_users_refuses_to_start(tmp_path: Path) -> None:
    server = await start_server()
    try:
        cfg = write_config(
            tmp_path,
            {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": server.port}},
            SCHEDULE,
            extra=f'[api]\nbind = "127.0.0.2:{_free_port()}"\n',
        )
        r = await asyncio.to_thread(
            subprocess.run,
            [*OUTPOST, "run", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 78
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("outpost: [api] bind")
        assert "outpost user add" in lines[0]
        assert not (tmp_path / "var" / "buffer.db").exists()  # nothing started
    finally:
        await server.stop()


async def test_lan_bind_with_users_login_roles_and_csrf(tmp_path: Path, browser: Browser) -> None:
    site = await _site(tmp_path, "127.0.0.2", users={"olga": "operator", "vic": "viewer"})
    try:
        users_file = tmp_path / "var" / "page-users.json"
        assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
        assert "pw-olga-secret" not in users_file.read_text()
        await _raise_alarms(site)
        page = await browser.new_page()
        try:
            # no session → the login page; the API answers 401
            await page.goto(site.base + "/")
            await expect(page).to_have_url(site.base + "/login?next=/")
            async with httpx.AsyncClient(base_url=site.base) as c:
                assert (await c.get("/api/status")).status_code == 401
                assert (await c.get("/fragments/alarms")).status_code == 401
            await page.fill("input[name=username]", "vic")
            await page.fill("input[name=password]", "wrong-password")
            await page.click("button[type=submit]")
            await expect(page.locator(".flash.error")).to_contain_text("Wrong user name")

            # a viewer sees the alarms but has no controls, and a forged POST is refused
            await page.fill("input[name=username]", "vic")
            await page.fill("input[name=password]", "pw-vic-secret")
            await page.click("button[type=submit]")
            await expect(page).to_have_url(site.base + "/")
            await expect(page.locator("#alarms-table")).to_contain_text("plc.supply_temp:hi")
            assert await page.locator("#ack-selected").count() == 0
            status = await page.evaluate(
                """async () => {
                  const token = document.querySelector('meta[name="csrf-token"]').content;
                  const r = await fetch('/api/alarms/plc.supply_temp:hi/ack', {method: 'POST',
                    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
                    body: '{}'});
                  return r.status;
                }"""
            )
            assert status == 403
            assert (await site.alarms())["plc.supply_temp:hi"]["state"] == "unack_active"
            await page.click("text=Log out")
            await expect(page).to_have_url(site.base + "/login")

            # an operator acts; the event names them as <user>@page
            await page.fill("input[name=username]", "olga")
            await page.fill("input[name=password]", "pw-olga-secret")
            await page.click("button[type=submit]")
            await expect(page).to_have_url(site.base + "/")
            missing_csrf = await page.evaluate(
                """async () => (await fetch('/api/alarms/plc.supply_temp:hi/ack',
                  {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'})).status"""
            )
            assert missing_csrf == 403
            await page.locator(
                'tr[data-alarm="gw-test|plc.supply_temp:hi"] button[data-command="ack"]'
            ).click()

            async def acked() -> bool:
                return (await site.alarms())["plc.supply_temp:hi"]["acked_by"] == "olga@page"

            await _until(acked)
            cookie = next(c for c in await page.context.cookies() if c["name"] == "outpost_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

            # removing a user ends their session at the next request
            r = await asyncio.to_thread(cli, site.config, "user", "remove", "olga")
            assert r.returncode == 0, r.stderr
            status = await page.evaluate("async () => (await fetch('/api/status')).status")
            assert status == 401
        finally:
            await page.close()
        r = await asyncio.to_thread(cli, site.config, "user", "list", "--json")
        assert [u["name"] for u in json.loads(r.stdout)] == ["vic"]
    finally:
        site.agent.stop()
        await site.server.stop()
    shutil.rmtree(tmp_path / "var", ignore_errors=True)
