"""The dashboard with a real agent: the `outpost run` daemon polls a real pymodbus server and
syncs to a real receiver; an operator in Chromium sees values and a new alarm arrive without
a reload, acks it from the console, and the agent's own `outpost alarms --json` shows the ack
by that user."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio
from playwright.async_api import Browser, expect

from outpost.cloud.receiver import users
from tests.agent_process import cli, start_agent
from tests.commands_harness import agent_config, cloud_section
from tests.dashboard_seed import PASSWORD, launch_browser, login
from tests.modbus_server import start_server
from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import wait_for

pytest_plugins = ("tests.receiver_fixtures",)

GW = "gw-dash"
ALARM = "plc.temp:hi"
SCHEDULE = """point_id,device,address,data_type,scale,units,alarm_h,alarm_priority,tags
plc.temp,plc,hr:0,int16,0.1,degC,30,high,kind=temperature;rack=A01;row=A;room=hall-1
plc.power,plc,hr:1,uint16,0.1,kW,,,kpi=it_power;rack=A01
"""


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_browser() as b:
        yield b


async def _alarms(cfg: Path) -> dict[str, dict[str, Any]]:
    res = await asyncio.to_thread(cli, cfg, "alarms", "--all", "--json")
    assert res.returncode == 0, res.stderr
    return {a["id"]: a for a in json.loads(res.stdout)}


async def test_operator_sees_agent_values_and_acks_its_alarm(
    receiver: ReceiverHandle, tmp_path: Path, browser: Browser
) -> None:
    conn = await asyncpg.connect(receiver.dsn)
    try:
        await users.add_user(conn, "olga", "operator", PASSWORD)
    finally:
        await conn.close()
    server = await start_server()
    await server.set("hr", 0, [250, 42])  # 25.0 degC, 4.2 kW
    enrollment = await receiver.enrollment_token(GW)
    cfg = agent_config(
        tmp_path, server, SCHEDULE, cloud_section(receiver.url, enrollment), GW, poll_interval=0.1
    )
    agent = start_agent(cfg)
    try:
        await asyncio.to_thread(agent.wait_ready)

        async def synced() -> bool:
            rows = await receiver.fetch(
                "SELECT 1 FROM points WHERE gateway_id = $1 AND units = 'degC'", GW
            )
            return bool(rows)

        await wait_for(synced, 30, "point metadata at the receiver")
        page = await (await browser.new_context()).new_page()
        await login(page, receiver.url, "olga", f"/gateways/{GW}")
        await expect(page.locator("body[data-live=on]")).to_have_count(1)
        cell = page.locator(f'[data-live-point="{GW}|plc.temp"]').first
        await expect(cell).to_have_text("25", timeout=15_000)
        await server.set("hr", 0, [275])  # the plant moves: poll → buffer → uplink → page
        await expect(cell).to_have_text("27.50", timeout=15_000)

        await page.goto(f"{receiver.url}/alarms")
        await expect(page.locator("body[data-live=on]")).to_have_count(1)
        row = page.locator(f'tr[data-alarm="{GW}|{ALARM}"]')
        await expect(row).to_have_count(0)
        await server.set("hr", 0, [355])  # 35.5 degC: above alarm_h, the alarm comes in live
        await expect(row).to_contain_text("unack active", timeout=15_000)
        await page.check(f'input[name=sel][value="{GW}|{ALARM}"]')
        await page.fill("input[name=note]", "seen from the NOC")
        await page.click("#ack-selected")
        status = row.locator("[data-cmd-status]")
        await expect(status).to_have_text("done", timeout=30_000)

        async def acked() -> bool:
            alarm = (await _alarms(cfg)).get(ALARM, {})
            return alarm.get("state") == "ack_active" and alarm.get("acked_by") == "olga@fleet"

        await wait_for(acked, 15, "the agent to show the ack by olga@fleet")
        # the console follows: the ack event syncs back and the row shows who acked
        await expect(row).to_contain_text("olga@fleet", timeout=15_000)
        await expect(row).to_contain_text("ack active")
        # shelve needs a reason; then the row offers Unshelve
        await page.check(f'input[name=sel][value="{GW}|{ALARM}"]')
        await page.fill("input[name=note]", "")
        await page.click("#shelve-selected")
        await expect(page.locator("[data-command-message]")).to_contain_text("needs a reason")
        await page.fill("input[name=note]", "sensor swap in progress")
        await page.click("#shelve-selected")
        await expect(status).to_have_text("done", timeout=30_000)

        async def shelved() -> bool:
            return (await _alarms(cfg)).get(ALARM, {}).get("shelved") is True

        await wait_for(shelved, 15, "the agent to show the alarm shelved")
        await expect(row).to_contain_text("shelved", timeout=15_000)
        await row.locator("button[data-command=unshelve]").click()
        await expect(row.locator("[data-cmd-status]")).to_have_text("done", timeout=30_000)

        async def unshelved() -> bool:
            return (await _alarms(cfg)).get(ALARM, {}).get("shelved") is False

        await wait_for(unshelved, 15, "the agent to show the alarm unshelved")
        audit = await receiver.fetch("SELECT actor, action FROM audit WHERE actor = 'olga'")
        assert {("olga", "login")} <= {(a["actor"], a["action"]) for a in audit}
        assert any(a["action"].startswith("command") for a in audit), audit
    finally:
        assert agent.stop() == 0, agent.log()
        await server.stop()
