"""Prometheus metrics: the real agent (polling a pymodbus server, syncing to a real receiver on
PostgreSQL) and the receiver expose ``/metrics``; ``promtool check metrics`` finds nothing to
say about either page; a real Prometheus (Debian's package, ephemeral port, tmp storage)
scrapes both with ``up == 1``; the names the shipped alert rules use are all there."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from outpost.agent.core.metrics import AgentMetrics, bind_token, metrics_http_app
from outpost.cloud.receiver.app import create_app
from outpost.cloud.receiver.metrics import METRICS_TOKEN_ENV
from outpost.cloud.receiver.settings import ReceiverSettings
from tests.agent_process import start_agent, write_config
from tests.modbus_server import free_port, start_server
from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

REPO = Path(__file__).resolve().parent.parent
GW = "gw-metrics"
SCHEDULE = """point_id,device,address,data_type,units
plc.temp,plc,hr:0,int16,degC
plc.level,plc,hr:1,uint16,%
"""
# Every series the shipped alerting rules depend on (read from the file, so a rule that
# names a metric the agent does not export fails here).
ALERTS = REPO / "packaging" / "prometheus" / "alerts.yml"
ALERT_NAMES = sorted(set(re.findall(r"\b(outpost_[a-z_]+)", ALERTS.read_text())))


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample line (``labels``: the exact ``{...}`` text, or empty)."""
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


def promtool_check(text: str) -> None:
    out = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout + out.stderr
    )


async def until(cond: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(cond):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str, **kw: object) -> httpx.Response:
    return httpx.get(url, timeout=5, **kw)  # type: ignore[arg-type]


async def test_agent_and_receiver_metrics_scraped_by_prometheus(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    server = await start_server()
    await server.set("hr", 0, [215, 40])
    enrollment = await receiver.enrollment_token(GW)
    bind_port = free_port()
    extra = (
        "[api]\n"
        f'bind = "127.0.0.1:{bind_port}"\n'
        "[cloud]\n"
        f'url = "{receiver.url}"\n'
        f'enrollment_token = "{enrollment}"\n'
        "heartbeat_interval = 0.5\nflush_interval = 0.1\nbackoff_min = 0.05\nbackoff_max = 0.5\n"
    )
    cfg = write_config(
        tmp_path,
        {
            "plc": {
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "poll_interval": 0.2,
            }
        },
        SCHEDULE,
        extra=extra,
        gateway_id=GW,
    )
    agent = start_agent(cfg)
    prom: subprocess.Popen[bytes] | None = None
    agent_url = f"http://127.0.0.1:{bind_port}/metrics"
    try:
        await asyncio.to_thread(agent.wait_ready)

        def uplink_delivered() -> bool:
            try:
                text = get(agent_url).text
            except httpx.HTTPError:
                return False
            return (sample(text, "outpost_uplink_batches_total") or 0) > 0 and sample(
                text, "outpost_mode", '{mode="normal"}'
            ) == 1.0

        await until(uplink_delivered, 30, "a delivered batch in the agent's metrics")
        agent_text = (await asyncio.to_thread(get, agent_url)).text
        # the same page on the local API socket
        uds = httpx.AsyncHTTPTransport(uds=str(agent.socket))
        async with httpx.AsyncClient(transport=uds) as c:
            socket_text = (await c.get("http://agent/metrics")).text
        assert sample(socket_text, "outpost_device_up", '{device="plc"}') == 1.0

        assert len(ALERT_NAMES) >= 6
        for name in ALERT_NAMES:
            assert re.search(rf"^{name}[{{ ]", agent_text, re.M), name
        assert sample(agent_text, "outpost_device_up", '{device="plc"}') == 1.0
        assert sample(agent_text, "outpost_mode", '{mode="normal"}') == 1.0
        assert sample(agent_text, "outpost_mode", '{mode="emergency"}') == 0.0
        assert (sample(agent_text, "outpost_polls_total", '{device="plc"}') or 0) >= 2
        assert (
            sample(agent_text, "outpost_poll_duration_seconds_count", '{device="plc"}') or 0
        ) >= 2
        assert (sample(agent_text, "outpost_readings_stored_total") or 0) >= 2
        assert sample(agent_text, "outpost_points", '{device="plc"}') == 2.0
        assert sample(agent_text, "outpost_alarms_active", '{priority="critical"}') == 0.0
        assert sample(agent_text, "outpost_commands_executed_total", '{status="succeeded"}') == 0.0
        assert (sample(agent_text, "outpost_buffer_rows") or 0) >= 2
        assert f'gateway="{GW}"' in agent_text  # outpost_agent_info
        promtool_check(agent_text)

        async with httpx.AsyncClient() as c:  # the receiver runs in this loop
            receiver_text = (await c.get(receiver.url + "/metrics")).text  # loopback: no token
        assert (sample(receiver_text, "outpost_receiver_ingest_batches_total") or 0) >= 1
        assert (sample(receiver_text, "outpost_receiver_readings_inserted_total") or 0) >= 2
        assert sample(receiver_text, "outpost_receiver_gateways", '{status="online"}') == 1.0
        assert sample(receiver_text, "outpost_receiver_sse_clients") == 0.0
        assert (sample(receiver_text, "outpost_receiver_db_pool_max_connections") or 0) >= 1
        assert (sample(receiver_text, "outpost_receiver_ingest_duration_seconds_count") or 0) >= 1
        promtool_check(receiver_text)

        # A real Prometheus scrapes both.
        prom_port = free_port()
        conf = tmp_path / "prometheus.yml"
        receiver_target = receiver.url.removeprefix("http://")
        conf.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: outpost-agent\n    static_configs: [{{targets: ['127.0.0.1:{bind_port}']}}]\n"
            f"  - job_name: outpost-receiver\n    static_configs: [{{targets: ['{receiver_target}']}}]\n"
        )
        prom_log = (tmp_path / "prometheus.log").open("wb")
        prom = await asyncio.to_thread(
            subprocess.Popen,
            [
                "prometheus",
                f"--config.file={conf}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=prom_log,
            stderr=prom_log,
        )
        prom_log.close()
        api = f"http://127.0.0.1:{prom_port}/api/v1/query"

        def both_up() -> bool:
            try:
                res = get(api, params={"query": "up"}).json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError):
                return False
            ups = {r["metric"]["job"]: r["value"][1] for r in res}
            return ups == {"outpost-agent": "1", "outpost-receiver": "1"}

        await until(both_up, 60, "Prometheus scraping both targets with up == 1")

        def device_up_seen() -> bool:
            res = get(api, params={"query": 'outpost_device_up{device="plc"}'}).json()
            return [r["value"][1] for r in res["data"]["result"]] == ["1"]

        await until(device_up_seen, 30, "outpost_device_up in Prometheus")
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(20)
        agent.stop()
        await server.stop()


async def test_receiver_metrics_need_a_token_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Auth only (no database behind this app: the page still renders its counters)."""
    monkeypatch.setenv(METRICS_TOKEN_ENV, "scrape-secret")
    app = create_app(ReceiverSettings(dsn="postgresql://127.0.0.1:1/none", admin_token="adm"))
    far = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=far, base_url="http://receiver") as c:
        assert (await c.get("/metrics")).status_code == 401
        bad = await c.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        ok = await c.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200 and "outpost_receiver_ingest_batches_total" in ok.text
        admin = await c.get("/metrics", headers={"Authorization": "Bearer adm"})
        assert admin.status_code == 200
    near = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=near, base_url="http://receiver") as c:
        assert (await c.get("/metrics")).status_code == 200


async def test_agent_bind_needs_the_token_off_loopback() -> None:
    """``[api] bind`` on a LAN address with ``token_env``: bearer token or 401."""
    metrics = AgentMetrics(_NoRuntime())
    app = metrics_http_app(metrics, "lan-secret")
    transport = httpx.ASGITransport(app=app, client=("192.0.2.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer no"})).status_code == 401
        ok = await c.get("/metrics", headers={"Authorization": "Bearer lan-secret"})
        assert ok.status_code == 200 and "outpost_agent_info" in ok.text
        assert (await c.post("/metrics")).status_code == 405


def test_bind_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAN_TOKEN", "t0k")
    monkeypatch.delenv("NOT_SET", raising=False)
    assert bind_token("127.0.0.1:8710", "LAN_TOKEN") is None  # loopback: open
    assert bind_token("[::1]:8710", None) is None
    assert bind_token("10.0.0.5:8710", "LAN_TOKEN") == "t0k"
    assert bind_token("10.0.0.5:8710", None) is None  # open, with a warning
    missing = bind_token("10.0.0.5:8710", "NOT_SET")  # set but missing: nobody gets in
    assert missing is not None and len(missing) >= 32


class _NoRuntime:
    """A runtime that has not started anything yet (the page must still render)."""

    started_at = 0.0
    coordinators: dict[str, Any] = {}
    scheduler = None
    pipeline = None
    table = None
    reloads = 0
    reload_errors = 0

    def metrics_info(self) -> dict[str, str]:
        return {"gateway": "gw", "version": "0", "schedule_version": ""}

    def metrics_parts(self) -> tuple[None, None, None, None]:
        return None, None, None, None

    async def buffer_stats(self) -> dict[str, Any] | None:
        return None
