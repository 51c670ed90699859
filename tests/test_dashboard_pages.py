"""The fleet dashboard in a real Chromium (Debian's, driven by Playwright) against a real
receiver on the embedded PostgreSQL: login/logout, live values, the trend chart, roles, CSRF,
/docs offline, and a screenshot of every page (test artifacts, copied to docs/screenshots/)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from tests.dashboard_seed import (
    GW,
    OTHER_GW,
    SITE,
    Seeded,
    ingest_value,
    launch_browser,
    login,
    seed,
)

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_browser() as b:
        yield b


REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "var" / "test-artifacts" / "dashboard"
SCREENSHOTS = REPO / "docs" / "screenshots"


@pytest_asyncio.fixture
async def seeded(receiver: ReceiverHandle) -> Seeded:
    return await seed(receiver.url, receiver.admin_token, receiver.dsn)


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("OUTPOST_UPDATE_SCREENSHOTS") == "1":  # refresh the README's pictures
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")


async def test_operator_pages_live_values_trend_and_screenshots(
    receiver: ReceiverHandle, seeded: Seeded, browser: Browser
) -> None:
    base = receiver.url
    ctx = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await ctx.new_page()

    # not logged in: pages send browsers to the login form
    await page.goto(f"{base}/alarms")
    await page.wait_for_url(f"{base}/login?next=%2Falarms")
    await shot(page, "login")
    # a wrong password stays on the form with the reason
    await page.fill("input[name=username]", "olga")
    await page.fill("input[name=password]", "wrong password")
    await page.click("button[type=submit]")
    await expect(page.locator("[role=alert]")).to_contain_text("wrong user name or password")

    await login(page, base, "olga", "/")
    rows = page.locator("#fleet-table tbody tr")
    await expect(rows).to_have_count(2)
    gw_row = page.locator(f'tr[data-gateway="{GW}"]')
    await expect(gw_row).to_contain_text("online")
    await expect(gw_row).to_contain_text(SITE)
    await expect(page.locator(f'tr[data-gateway="{OTHER_GW}"]')).to_contain_text("1250")
    await expect(page.locator("body[data-live=on]")).to_have_count(1)
    await shot(page, "fleet")
    # sortable: clicking "Backlog" twice puts the gateway with the backlog first
    await page.click("#fleet-table th:has-text('Backlog')")
    await page.click("#fleet-table th:has-text('Backlog')")
    await expect(rows.first).to_have_attribute("data-gateway", OTHER_GW)

    # gateway page: KPIs from tags, live value without reload
    await page.goto(f"{base}/gateways/{GW}")
    await expect(page.locator("#kpi-pue .kpi-value")).not_to_have_text("—")
    await expect(page.locator("#kpi-temp-max")).to_contain_text("rack-")
    await expect(page.locator("body[data-live=on]")).to_have_count(1)
    cell = page.locator('[data-live-point="gw-hall1|cdu-01.supply_temp"]').first
    await expect(cell).not_to_have_text("77.25")
    t0 = time.monotonic()
    await ingest_value(base, seeded, GW, "cdu-01.supply_temp", 77.25)
    await expect(cell).to_have_text("77.25", timeout=10_000)  # bounded wait, not a timing test
    print(f"live value on the page after {time.monotonic() - t0:.3f} s")
    await page.fill("input[data-filter-table=points-table]", "rack-a0 temperature")
    await expect(page.locator("#points-table tbody tr:visible")).to_have_count(6)
    await page.fill("input[data-filter-table=points-table]", "")
    await shot(page, "gateway")

    # point page: the trend chart draws data (uPlot canvas, non-empty series)
    await page.goto(f"{base}/gateways/{GW}/points/rack-a06.temperature?range=24h")
    chart = page.locator("#trend")
    await expect(chart.locator("canvas")).to_have_count(1)
    n = await page.wait_for_function(
        "() => { const el = document.getElementById('trend');"
        " return el.uplot && el.uplot.data[1].filter(v => v != null).length; }"
    )
    assert await n.json_value() >= 30  # 5-minute buckets over the 3 seeded hours
    assert await page.evaluate("document.getElementById('trend').uplot.series.length") == 4
    await shot(page, "point")
    # a custom range under 2 h: raw resolution, one series and no band
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    frm, to = (now - timedelta(minutes=90)).isoformat(), now.isoformat()
    await page.goto(
        f"{base}/gateways/{GW}/points/rack-a06.temperature?range=custom&from={frm}&to={to}"
    )
    n = await page.wait_for_function(
        "() => { const el = document.getElementById('trend');"
        " return el.uplot && el.chartData.resolution === 'raw' && el.uplot.data[1].length; }"
    )
    assert 80 <= await n.json_value() <= 91  # one reading a minute
    assert await page.evaluate("document.getElementById('trend').uplot.series.length") == 2
    csv = await page.request.get(
        f"{base}/api/v1/dashboard/gateways/{GW}/points/rack-a06.temperature/trend.csv?range=1h"
    )
    lines = (await csv.text()).splitlines()
    assert lines[0] == "ts,value,quality" and len(lines) > 50  # raw resolution for 1 h

    # alarm console: live list, ack through the command channel (pending: no agent here)
    await page.goto(f"{base}/alarms")
    alarm_rows = page.locator("#alarms-table tbody tr")
    await expect(alarm_rows).to_have_count(2)  # a06 unacked, cdu acked; b02 returned
    await expect(page.locator("#alarm-history")).to_contain_text("bob@fleet")
    await page.check('input[name=sel][value="gw-hall1|rack-a06.temperature:hi"]')
    await page.fill("input[name=note]", "looking at it")
    await page.click("#ack-selected")
    status = page.locator('tr[data-alarm="gw-hall1|rack-a06.temperature:hi"] [data-cmd-status]')
    # the POST was accepted and the row follows the command: queued/delivered, not final
    await expect(status).to_contain_text("pending (queued)")
    cmds = await receiver.fetch("SELECT kind, args FROM commands WHERE gateway_id = $1", GW)
    assert [c["kind"] for c in cmds] == ["ack"]
    assert '"note": "looking at it"' in cmds[0]["args"]
    await shot(page, "alarms")
    # filters: the select submits its form (no button needed with JS)
    await page.select_option("select[name=priority]", "high")
    await page.wait_for_url(f"{base}/alarms?*priority=high*")
    await expect(alarm_rows).to_have_count(1)
    await expect(alarm_rows.first).to_contain_text("rack-a06.temperature:hi")

    await page.goto(f"{base}/sites/{SITE}/floor")
    await expect(page.locator(".rack")).to_have_count(12)
    await expect(page.locator('.rack[data-rack="A06"]')).to_have_class("rack alarm-high")
    await shot(page, "floor")
    await page.click('.rack[data-rack="A01"]')
    await page.wait_for_url(f"{base}/gateways/{GW}/points/rack-a01.temperature")

    # operators have no admin page
    resp = await page.goto(f"{base}/admin")
    assert resp is not None and resp.status == 403

    await page.goto(f"{base}/")
    await page.click("text=Log out")
    await page.wait_for_url(f"{base}/login")
    await page.goto(f"{base}/")
    await page.wait_for_url(f"{base}/login?next=%2F")
    await ctx.close()


async def test_admin_page_viewer_and_csrf(
    receiver: ReceiverHandle, seeded: Seeded, browser: Browser
) -> None:
    base = receiver.url
    ctx = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await ctx.new_page()
    await login(page, base, "ada", "/admin")
    await page.fill("input[name=gateway_id]", "gw-new")
    await page.click("button:has-text('Enroll')")
    token = (await page.locator("#enrollment-token .secret").inner_text()).strip()
    assert len(token) > 20
    await expect(page.locator("#audit-table")).to_contain_text("gateway.enroll")
    await shot(page, "admin")
    await ctx.close()

    # a viewer sees the alarms but no ack button, and a forged POST is refused
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await login(page, base, "vic", "/alarms")
    await expect(page.locator("#alarms-table tbody tr")).to_have_count(2)
    await expect(page.locator("button[data-command]")).to_have_count(0)
    csrf = await page.locator("meta[name=csrf-token]").get_attribute("content")
    assert csrf
    forged = await page.request.post(
        f"{base}/api/v1/gateways/{GW}/commands",
        data={"kind": "ack", "args": {"alarm_id": "rack-a06.temperature:hi"}},
        headers={"X-CSRF-Token": csrf},
    )
    assert forged.status == 403, await forged.text()
    await ctx.close()

    # an operator's POST without the CSRF token is refused; with it, accepted
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await login(page, base, "olga", "/alarms")
    body = {"kind": "ack", "args": {"alarm_id": "rack-a06.temperature:hi"}}
    no_csrf = await page.request.post(f"{base}/api/v1/gateways/{GW}/commands", data=body)
    assert no_csrf.status == 403 and "CSRF" in await no_csrf.text()
    csrf = await page.locator("meta[name=csrf-token]").get_attribute("content")
    ok = await page.request.post(
        f"{base}/api/v1/gateways/{GW}/commands", data=body, headers={"X-CSRF-Token": csrf or ""}
    )
    assert ok.status == 201, await ok.text()
    assert await receiver.fetch("SELECT 1 FROM commands") != []
    await ctx.close()

    # a site-scoped viewer sees only its site, in pages and in the live stream's filter
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await login(page, base, "sam", "/")
    await expect(page.locator("#fleet-table tbody tr")).to_have_count(1)
    await expect(page.locator(f'tr[data-gateway="{OTHER_GW}"]')).to_have_count(1)
    resp = await page.goto(f"{base}/gateways/{GW}")
    assert resp is not None and resp.status == 404
    await ctx.close()


async def test_docs_load_without_leaving_loopback(
    receiver: ReceiverHandle, browser: Browser
) -> None:
    page = await browser.new_page()
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    await page.goto(f"{receiver.url}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Outpost receiver")
    await expect(page.locator(".opblock-tag-section").first).to_be_visible()
    await page.goto(f"{receiver.url}/redoc")
    await expect(page.locator("h1")).to_contain_text("Outpost receiver", timeout=15_000)
    hosts = {urlsplit(u).hostname for u in requested if not u.startswith(("data:", "blob:"))}
    assert hosts == {"127.0.0.1"}, sorted(u for u in requested if "127.0.0.1" not in u)
    assert any(u.endswith("/swagger-ui-bundle.js") for u in requested)
    await page.close()
