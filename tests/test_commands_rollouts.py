"""Schedule rollouts end to end: a real receiver, real agents (one per gateway) polling a real
pymodbus server. A good schedule reaches the canary, verifies, then the rest; a schedule
pointing at a dead address fails verification on the canary, which rolls back by itself while
the rest are never touched; an invalid schedule fails at validation with the loader's own
errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from outpost.point_schedules.loader import schedule_version
from tests.agent_process import AgentProcess, cli, start_agent
from tests.commands_harness import agent_config, cloud_section
from tests.modbus_server import ModbusTestServer, start_server
from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import wait_for

pytest_plugins = ("tests.receiver_fixtures",)

OLD = """point_id,device,address,data_type
plc.a,plc,hr:0,uint16
plc.b,plc,hr:1,uint16
"""
GOOD = OLD + "plc.c,plc,hr:2,uint16\n"
DEAD = OLD + "plc.c,plc,hr:500,uint16\nplc.d,plc,hr:501,uint16\nplc.e,plc,hr:502,uint16\n"
INVALID = OLD + "plc.c,plc,hr:2,uint17\nplc.d,nodevice,hr:3,uint16\n"
FAST = {"within_s": 8}
ROLLOUT_CLI = (
    "import sys; from outpost.cloud.receiver.rollout_cli import rollout_app; "
    "sys.argv[0] = 'outpost cloud rollout'; rollout_app()"
)


class Site:
    def __init__(self, receiver: ReceiverHandle, server: ModbusTestServer, root: Path) -> None:
        self.receiver, self.server, self.root = receiver, server, root
        self.agents: dict[str, AgentProcess] = {}
        self.configs: dict[str, Path] = {}
        self.http = httpx.AsyncClient(
            base_url=receiver.url, headers=receiver.admin_headers, timeout=30
        )

    async def start(self, gw: str) -> None:
        folder = self.root / gw
        folder.mkdir(exist_ok=True)
        if gw not in self.configs:
            enrollment = await self.receiver.enrollment_token(gw)
            cloud = cloud_section(self.receiver.url, enrollment, command_wait_s=2)
            self.configs[gw] = agent_config(folder, self.server, OLD, cloud, gw)
        agent = start_agent(self.configs[gw])
        self.agents[gw] = agent
        await asyncio.to_thread(agent.wait_ready)

    async def status(self, gw: str) -> dict[str, Any]:
        res = await asyncio.to_thread(cli, self.configs[gw], "status", "--json")
        assert res.returncode == 0, res.stderr
        body: dict[str, Any] = json.loads(res.stdout)
        return body

    async def version(self, gw: str) -> str:
        return str((await self.status(gw))["schedule"]["version"])

    async def connected(self, *gateways: str) -> None:
        for gw in gateways:

            async def up(gw: str = gw) -> bool:
                return bool(((await self.status(gw)).get("commands") or {}).get("connected"))

            await wait_for(up, 20, f"{gw}'s command channel")

    async def rollout(self, **body: Any) -> dict[str, Any]:
        r = await self.http.post("/api/v1/rollouts", json=body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    async def finished(self, rid: int, within: float = 60) -> dict[str, Any]:
        result: dict[str, Any] = {}

        async def done() -> bool:
            r = await self.http.get(f"/api/v1/rollouts/{rid}")
            result.update(r.json())
            return result["state"] != "running"

        await wait_for(done, within, f"rollout {rid} to finish", poll=0.2)
        return result

    async def close(self) -> None:
        await self.http.aclose()
        for agent in self.agents.values():
            assert agent.stop() == 0, agent.log()
        await self.server.stop()


async def _site(receiver: ReceiverHandle, tmp_path: Path, gateways: list[str]) -> Site:
    server = await start_server()
    site = Site(receiver, server, tmp_path)
    for gw in gateways:
        await site.start(gw)
    await site.connected(*gateways)
    return site


async def test_good_schedule_reaches_canary_then_the_rest(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    site = await _site(receiver, tmp_path, ["gw-a", "gw-b", "gw-c"])
    try:
        old = await site.version("gw-a")
        new = schedule_version([GOOD.encode()])
        started = await site.rollout(
            files={"site.csv": GOOD},
            gateways=["gw-b", "gw-c"],
            canary=["gw-a"],
            verification=FAST,
            wave_size=2,
        )
        assert started["version"] == new and started["created_by"] == "admin-token@fleet"
        assert [(t["gateway_id"], t["canary"]) for t in started["targets"]] == [
            ("gw-a", True),
            ("gw-b", False),
            ("gw-c", False),
        ]
        # only the canary has a command until it verified
        assert [t["state"] for t in started["targets"]] == ["applying", "pending", "pending"]
        done = await site.finished(started["id"])
        assert done["state"] == "succeeded", done
        for t in done["targets"]:
            assert t["state"] == "succeeded", t
            assert (t["old_version"], t["new_version"]) == (old, new), t
            assert t["outcome"]["detail"]["outcome"] == "applied"
            assert t["outcome"]["detail"]["probe"]["good_ratio"] >= 0.95
        steps = [(s["step"], s["gateway_id"]) for s in done["steps"]]
        canary_ok = steps.index(("succeeded", "gw-a"))
        assert steps.index(("queued", "gw-b")) > canary_ok
        assert steps.index(("queued", "gw-c")) > canary_ok
        assert steps[0] == ("started", None) and steps[-1] == ("completed", None)
        for gw in ("gw-a", "gw-b", "gw-c"):
            assert await site.version(gw) == new
        # the pushed schedule survives a restart of the agent
        assert site.agents["gw-a"].stop() == 0
        await site.start("gw-a")
        assert await site.version("gw-a") == new
        points = await asyncio.to_thread(cli, site.configs["gw-a"], "points", "--json")
        assert "plc.c" in {p["point_id"] for p in json.loads(points.stdout)}

        # the version each gateway runs is what its heartbeat reports to the receiver
        async def reported() -> bool:
            rows = await receiver.fetch(
                "SELECT last_heartbeat->>'schedule_version' AS v FROM gateways ORDER BY id"
            )
            return [r["v"] for r in rows] == [new, new, new]

        await wait_for(reported, 20, "heartbeats with the new schedule version")
    finally:
        await site.close()


async def test_dead_address_rolls_back_canary_and_invalid_fails_validation(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    site = await _site(receiver, tmp_path, ["gw-a", "gw-b"])
    try:
        old = await site.version("gw-a")
        started = await site.rollout(
            files={"site.csv": DEAD},
            gateways="all",
            canary=["gw-a"],
            verification={"within_s": 4},
        )
        done = await site.finished(started["id"])
        assert done["state"] == "failed", done
        canary, rest = done["targets"]
        assert canary["gateway_id"] == "gw-a" and canary["state"] == "failed"
        detail = canary["outcome"]["detail"]
        assert detail["outcome"] == "rolled_back" and detail["running_version"] == old
        assert detail["probe"]["good_ratio"] < 0.95
        assert {p["point_id"] for p in detail["probe"]["not_good"]} == {"plc.c", "plc.d", "plc.e"}
        assert canary["outcome"]["message"].startswith("rolled_back")
        assert rest == {**rest, "gateway_id": "gw-b", "state": "skipped", "command_id": None}
        assert any(s["step"] == "halted" for s in done["steps"])
        assert await site.version("gw-a") == old  # rolled back by itself
        assert await site.version("gw-b") == old  # never touched
        no_cmds = await receiver.fetch("SELECT id FROM commands WHERE gateway_id = 'gw-b'")
        assert no_cmds == []

        started = await site.rollout(
            files={"site.csv": INVALID}, gateways=["gw-b"], canary=["gw-a"], verification=FAST
        )
        done = await site.finished(started["id"])
        assert done["state"] == "failed", done
        canary = done["targets"][0]
        result = canary["outcome"]
        assert result["status"] == "refused" and result["detail"]["outcome"] == "invalid"
        errors = result["detail"]["errors"]
        assert any(e.startswith('site.csv:4: column "data_type"') for e in errors), errors
        assert any(e.startswith('site.csv:5: column "device"') for e in errors), errors
        assert done["targets"][1]["state"] == "skipped"
        assert await site.version("gw-a") == old
    finally:
        await site.close()


async def test_rollout_cli_start_status_abort(receiver: ReceiverHandle, tmp_path: Path) -> None:
    for gw in ("gw-a", "gw-b"):
        await receiver.enroll(gw)
    csv = tmp_path / "site.csv"
    csv.write_text(GOOD)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", ROLLOUT_CLI, *args, "--dsn", receiver.dsn],
            capture_output=True,
            text=True,
            timeout=60,
        )

    res = await asyncio.to_thread(
        run, "start", "--schedule", str(csv), "--canary", "gw-a", "--gateways", "gw-b"
    )
    assert res.returncode == 0, res.stderr
    rid = int(res.stdout.strip())
    res = await asyncio.to_thread(run, "status", str(rid), "--json")
    view = json.loads(res.stdout)
    assert view["state"] == "running" and view["created_by"].endswith("@fleet")
    assert [t["state"] for t in view["targets"]] == ["applying", "pending"]
    res = await asyncio.to_thread(run, "status")
    assert f"{rid}" in res.stdout and "running" in res.stdout
    res = await asyncio.to_thread(run, "abort", str(rid))
    assert res.returncode == 0, res.stderr
    res = await asyncio.to_thread(run, "status", str(rid), "--json")
    view = json.loads(res.stdout)
    assert view["state"] == "aborted" and [t["state"] for t in view["targets"]] == [
        "skipped",
        "skipped",
    ]
    cmds = await receiver.fetch("SELECT state, result FROM commands WHERE rollout_id = $1", rid)
    assert [c["state"] for c in cmds] == ["expired"] and "withdrawn" in cmds[0]["result"]
    audit = await receiver.fetch("SELECT action FROM audit ORDER BY id")
    assert [a["action"] for a in audit][-2:] == ["rollout.start", "rollout.abort"]
    res = await asyncio.to_thread(run, "abort", str(rid))
    assert res.returncode == 1 and "aborted" in res.stderr
    res = await asyncio.to_thread(
        run, "start", "--schedule", str(csv), "--canary", "gw-x", "--gateways", "all"
    )
    assert res.returncode == 1 and "gw-x" in res.stderr
