"""The command channel end to end: a real receiver on PostgreSQL, the real `outpost run` daemon
(enrolled through its [cloud] section) polling a real pymodbus server. Every kind goes
queued → effect at the agent (seen through the agent's own CLI and the Modbus server) →
final state at the receiver, with the central user as the actor."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.agent_process import AgentProcess, cli, start_agent
from tests.commands_harness import Operator, agent_config, cloud_section, writes_to
from tests.modbus_server import ModbusTestServer, start_server
from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import wait_for

pytest_plugins = ("tests.receiver_fixtures",)

SCHEDULE = """point_id,device,address,data_type,scale,writable,min,max,alarm_h,units
plc.temp,plc,hr:0,int16,0.1,,,,30,degC
plc.setpoint,plc,hr:10,int16,0.1,true,10,40,,degC
"""
ALARM = "plc.temp:hi"
ACTOR = "admin-token@fleet"


async def _agent(
    receiver: ReceiverHandle, tmp_path: Path, gw: str, **cloud: Any
) -> tuple[ModbusTestServer, AgentProcess, Path]:
    server = await start_server()
    await server.set("hr", 0, [350])  # 35.0 degC: above alarm_h
    await server.set("hr", 10, [200])  # setpoint 20.0 degC
    enrollment = await receiver.enrollment_token(gw)
    cfg = agent_config(
        tmp_path, server, SCHEDULE, cloud_section(receiver.url, enrollment, **cloud), gw
    )
    agent = start_agent(cfg)
    await asyncio.to_thread(agent.wait_ready)
    await _connected(cfg)
    return server, agent, cfg


async def _connected(cfg: Path) -> None:
    async def channel_up() -> bool:
        return bool(((await _status(cfg)).get("commands") or {}).get("connected"))

    await wait_for(channel_up, 20, "the command channel to connect")


async def _alarms(cfg: Path) -> dict[str, dict[str, Any]]:
    res = await asyncio.to_thread(cli, cfg, "alarms", "--all", "--json")
    assert res.returncode == 0, res.stderr
    return {a["id"]: a for a in json.loads(res.stdout)}


async def _status(cfg: Path) -> dict[str, Any]:
    res = await asyncio.to_thread(cli, cfg, "status", "--json")
    assert res.returncode == 0, res.stderr
    body: dict[str, Any] = json.loads(res.stdout)
    return body


async def test_every_kind_end_to_end(receiver: ReceiverHandle, tmp_path: Path) -> None:
    gw = "gw-cmd"
    server, agent, cfg = await _agent(receiver, tmp_path, gw, allow_remote_writes=True)
    op = Operator(receiver, gw)
    try:

        async def alarm_active() -> bool:
            return (await _alarms(cfg)).get(ALARM, {}).get("state") == "unack_active"

        await wait_for(alarm_active, 20, "the high-temperature alarm")

        done = await op.run("ack", {"alarm_id": ALARM, "note": "seen from the NOC"})
        assert done["state"] == "succeeded", done
        assert done["delivered_at"] is not None
        assert datetime.fromisoformat(done["finished_at"]) >= datetime.fromisoformat(
            done["delivered_at"]
        )
        alarm = (await _alarms(cfg))[ALARM]
        assert alarm["state"] == "ack_active" and alarm["acked_by"] == ACTOR

        done = await op.run(
            "shelve", {"alarm_id": ALARM, "duration_s": 600, "reason": "sensor swap"}
        )
        assert done["state"] == "succeeded", done
        assert (await _alarms(cfg))[ALARM]["shelved_until"] is not None
        done = await op.run("unshelve", {"alarm_id": ALARM, "note": "back"})
        assert done["state"] == "succeeded", done
        assert (await _alarms(cfg))[ALARM]["shelved_until"] is None

        # a refusal of local control travels back with its reason
        done = await op.run("ack", {"alarm_id": "plc.nope:hi"})
        assert done["state"] == "refused" and "plc.nope:hi" in done["result"]["message"]

        done = await op.run(
            "mode_set", {"mode": "maintenance", "duration_s": 3600, "reason": "filter change"}
        )
        assert done["state"] == "succeeded", done
        mode = (await _status(cfg))["mode"]
        assert mode["mode"] == "maintenance" and mode["reason"] == "filter change"
        done = await op.run("mode_clear", {"reason": "done"})
        assert done["state"] == "succeeded", done
        assert (await _status(cfg))["mode"]["mode"] != "maintenance"

        done = await op.run("write", {"point_id": "plc.setpoint", "value": 21.5})
        assert done["state"] == "succeeded", done
        assert done["result"]["value"] == 21.5  # the read-back
        assert await server.get("hr", 10, 1) == [215]
        assert writes_to(server, 10) == 1

        done = await op.run("write", {"point_id": "plc.setpoint", "value": 99})
        assert done["state"] == "refused" and "max" in done["result"]["message"]
        assert writes_to(server, 10) == 1  # nothing sent

        done = await op.run("relinquish", {"point_id": "plc.setpoint"})
        assert done["state"] == "refused"  # Modbus has no priority array: local refusal
        assert "relinquish" in done["result"]["message"]

        done = await op.run("reload")
        assert done["state"] == "succeeded" and done["result"]["detail"]["outcome"] == "reloaded"

        # the events carry the central user as actor and reach the receiver by sync
        async def synced() -> bool:
            rows = await receiver.fetch("SELECT kind, actor FROM events WHERE gateway_id = $1", gw)
            kinds = {(r["kind"], r["actor"]) for r in rows}
            return ("operator.ack", ACTOR) in kinds and ("command.result", ACTOR) in kinds

        await wait_for(synced, 20, "command events at the receiver")
        status = (await _status(cfg))["commands"]
        assert status["connected"] is True and status["pending_results"] == 0
        assert status["last_command"]["kind"] == "reload"
        human = await asyncio.to_thread(cli, cfg, "status")
        assert human.returncode == 0
        assert "commands: connected, last #" in human.stdout and "reload succeeded" in human.stdout
    finally:
        await op.aclose()
        assert agent.stop() == 0, agent.log()
        await server.stop()


async def test_refusals_and_expiry(receiver: ReceiverHandle, tmp_path: Path) -> None:
    gw = "gw-safe"
    server, agent, cfg = await _agent(receiver, tmp_path, gw)  # allow_remote_writes default
    op = Operator(receiver, gw)
    try:
        done = await op.run("write", {"point_id": "plc.setpoint", "value": 20})
        assert done["state"] == "refused"
        assert "allow_remote_writes" in done["result"]["message"]
        done = await op.run("relinquish", {"point_id": "plc.setpoint"})
        assert done["state"] == "refused"
        assert writes_to(server, 10) == 0

        # queued while the gateway is offline: delivered when it returns, unless expired
        assert agent.stop() == 0, agent.log()
        short = await op.queue(
            "mode_set",
            {"mode": "maintenance", "duration_s": 60, "reason": "late"},
            expires_in_s=0.5,
        )
        kept = await op.queue(
            "mode_set", {"mode": "maintenance", "duration_s": 60, "reason": "kept"}
        )
        expired = await op.final(short, within=10)
        assert expired["state"] == "expired" and expired["delivered_at"] is None
        agent = start_agent(cfg)
        await asyncio.to_thread(agent.wait_ready)
        done = await op.final(kept)
        assert done["state"] == "succeeded", done
        assert (await _status(cfg))["mode"]["reason"] == "kept"  # never "late"
    finally:
        await op.aclose()
        assert agent.stop() == 0, agent.log()
        await server.stop()
