"""The local-control story with no uplink configured, end to end through the real CLI:
a value crosses alarm_h on a real pymodbus device → unack_active in `outpost alarms`,
ack via the CLI, the value returns → normal; every transition and the operator action are in
`outpost events`; maintenance from the CLI suppresses, a guarded write reaches the device."""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from pathlib import Path

from tests.agent_process import cli, start_agent, write_config
from tests.modbus_server import start_server

SCHEDULE = (
    "point_id,device,address,data_type,scale,units,alarm_h,alarm_deadband,alarm_priority,writable,min,max\n"
    "plc.temp,plc,hr:0,int16,0.1,degC,30,1,high,,,\n"
    "plc.setpoint,plc,hr:5,int16,0.1,degC,,,,true,10,30\n"
)


async def _until(fn, within: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


async def _alarm(cfg: Path, alarm_id: str) -> dict | None:
    r = await asyncio.to_thread(cli, cfg, "alarms", "--all", "--json")
    assert r.returncode == 0, r.stderr
    return next((a for a in json.loads(r.stdout) if a["id"] == alarm_id), None)


async def test_alarm_ack_return_events_maintenance_and_write_without_uplink(tmp_path: Path) -> None:
    server = await start_server()
    await server.set("hr", 0, [250])  # 25.0 degC: normal
    await server.set("hr", 5, [180])
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
    )
    agent = start_agent(cfg)
    me = getpass.getuser()
    try:
        await asyncio.to_thread(agent.wait_ready)

        async def normal_reading():  # type: ignore[no-untyped-def]
            r = await asyncio.to_thread(cli, cfg, "read", "plc.temp", "--json")
            return r.returncode == 0 and json.loads(r.stdout)["value"] == 25.0

        await _until(normal_reading)

        # crosses alarm_h (30) → unacknowledged-active
        await server.set("hr", 0, [352])

        async def raised():  # type: ignore[no-untyped-def]
            a = await _alarm(cfg, "plc.temp:hi")
            return a if a and a["state"] == "unack_active" else None

        alarm = await _until(raised)
        expected_keys = {
            "id",
            "point_id",
            "kind",
            "state",
            "priority",
            "value",
            "limit",
            "activated_at",
            "acked_at",
            "acked_by",
            "shelved_until",
            "suppressed",
        }
        assert expected_keys <= set(alarm)
        assert alarm["point_id"] == "plc.temp" and alarm["priority"] == "high"
        assert alarm["limit"] == 30.0 and alarm["value"] == 35.2 and alarm["acked_at"] is None
        r = await asyncio.to_thread(cli, cfg, "alarms")
        assert r.returncode == 0 and "plc.temp:hi" in r.stdout

        # ack from the CLI → acknowledged-active, actor = the OS user
        r = await asyncio.to_thread(cli, cfg, "ack", "plc.temp:hi", "--note", "checking the CDU")
        assert r.returncode == 0, r.stderr
        alarm = await _alarm(cfg, "plc.temp:hi")
        assert alarm is not None and alarm["state"] == "ack_active" and alarm["acked_by"] == me

        # back inside the deadband (29.5 > 30 - 1): once the alarm has seen 29.5, still active
        await server.set("hr", 0, [295])

        async def saw_295():  # type: ignore[no-untyped-def]
            a = await _alarm(cfg, "plc.temp:hi")
            return a if a and a["value"] == 29.5 else None

        alarm = await _until(saw_295)
        assert alarm["state"] == "ack_active"

        # beyond the deadband → normal (it was acknowledged)
        await server.set("hr", 0, [240])

        async def cleared():  # type: ignore[no-untyped-def]
            a = await _alarm(cfg, "plc.temp:hi")
            return a if a and a["state"] == "normal" else None

        await _until(cleared)

        # maintenance from the CLI, then a guarded write that the device really receives
        r = await asyncio.to_thread(
            cli, cfg, "mode", "set", "maintenance", "--for", "2h", "--reason", "CDU filter change"
        )
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(cli, cfg, "mode", "--json")
        mode = json.loads(r.stdout)
        assert mode["mode"] == "maintenance" and mode["reason"] == "CDU filter change"
        await server.set("hr", 0, [360])

        async def suppressed():  # type: ignore[no-untyped-def]
            a = await _alarm(cfg, "plc.temp:hi")
            return a if a and a["suppressed"] else None

        await _until(suppressed)

        r = await asyncio.to_thread(cli, cfg, "write", "plc.setpoint", "22.5", "--yes")
        assert r.returncode == 0, r.stderr
        assert (await server.get("hr", 5, 1)) == [225]
        r = await asyncio.to_thread(cli, cfg, "write", "plc.setpoint", "45", "--yes")
        assert r.returncode != 0 and "max" in r.stderr.lower()
        assert (await server.get("hr", 5, 1)) == [225]  # refused: nothing sent
        r = await asyncio.to_thread(cli, cfg, "write", "plc.temp", "20", "--yes")
        assert r.returncode != 0 and "writable" in r.stderr.lower()

        r = await asyncio.to_thread(cli, cfg, "mode", "clear", "--reason", "done")
        assert r.returncode == 0, r.stderr

        # every step is an event
        r = await asyncio.to_thread(cli, cfg, "events", "--json", "--limit", "0")
        assert r.returncode == 0, r.stderr
        events = json.loads(r.stdout)
        alarm_moves = [
            (e["detail"].get("from"), e["detail"].get("to"))
            for e in events
            if e["kind"] == "alarm" and e["source"] == "plc.temp:hi"
        ]
        assert ("normal", "unack_active") in alarm_moves
        assert ("ack_active", "normal") in alarm_moves
        acks = [e for e in events if e["kind"] == "operator.ack"]
        assert acks and acks[0]["actor"] == me and acks[0]["source"] == "plc.temp:hi"
        assert any(e["kind"] == "operator.mode" for e in events)
        writes = [e for e in events if e["kind"] == "operator.write"]
        assert any(e["detail"].get("result") == "ok" for e in writes)
    finally:
        agent.stop()
        await server.stop()

    # after the agent stopped, the same history comes straight from the buffer file
    r = await asyncio.to_thread(cli, cfg, "events", "--json", "--limit", "0")
    assert r.returncode == 0, r.stderr
    assert any(e["kind"] == "operator.ack" for e in json.loads(r.stdout))
