"""`outpost schedule probe`, `outpost schedule load` and `outpost reload` against a real
pymodbus server and a real agent process, through the real CLI."""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from pathlib import Path
from typing import Any

from outpost.agent.api.client import AgentClient, ApiError
from outpost.point_schedules.model import ByteOrder, DataType
from tests.agent_process import cli, start_agent, write_config
from tests.modbus_server import registers_for, start_server

HEADER = "point_id,device,address,data_type,byte_order,scale,units\n"
GOOD = HEADER + (
    "plc.temp,plc,hr:0,int16,,0.1,degC\nplc.flow,plc,hr:10,float32,CDAB,,l/min\nplc.run,plc,coil:3,bool,,,\n"
)
GHOST = GOOD + "plc.ghost,plc,hr:500,uint16,,,\n"


async def _until(predicate: Any, within: float = 15.0) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


async def _run(cfg: Path, *args: str) -> Any:
    return await asyncio.to_thread(cli, cfg, *args)


async def test_probe_load_and_reload(tmp_path: Path) -> None:
    server = await start_server()
    await server.set("hr", 0, [235])
    await server.set("hr", 10, registers_for(DataType.FLOAT32, ByteOrder.CDAB, 12.5))
    await server.set("coil", 3, [True])
    cfg = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": server.port}},
        GOOD,
    )
    (tmp_path / "ghost.csv").write_text(GHOST)
    (tmp_path / "bad.csv").write_text(
        GOOD + "plc.bad,plc,hr:x,int16,,,\nplc.temp,plc,hr:1,int16,,,\n"
    )
    (tmp_path / "more.csv").write_text(GOOD + "plc.more,plc,hr:20,uint16,,,\n")
    await server.set("hr", 20, [778])
    try:
        # -- probe without an agent: its own drivers
        r = await _run(cfg, "schedule", "probe", str(tmp_path / "ghost.csv"), "--json")
        assert r.returncode == 1, r.stderr
        report = json.loads(r.stdout)
        assert report["via"] == "its own drivers"
        by_id = {p["point_id"]: p for p in report["points"]}
        assert by_id["plc.temp"]["value"] == 23.5 and by_id["plc.temp"]["quality"] == "good"
        assert by_id["plc.flow"]["value"] == 12.5
        assert by_id["plc.run"]["value"] == 1.0
        assert by_id["plc.ghost"]["quality"] == "bad:config_error"
        assert by_id["plc.ghost"]["reason"]
        assert all(p["response_ms"] is not None for p in report["points"])
        (dev,) = report["devices"]
        assert dev["reachable"] and dev["good"] == 3 and dev["bad"] == 1
        assert dev["slowest_ms"] is not None

        r = await _run(cfg, "schedule", "probe", str(tmp_path / "site.csv"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ok: 3/3 points good (read once through its own drivers)" in r.stdout

        # nothing was written by the probes
        assert all(req.fc in (1, 2, 3, 4) for req in server.requests)

        agent = start_agent(cfg)
        try:
            agent.wait_ready()
            # -- probe through the running agent
            r = await _run(cfg, "schedule", "probe", str(tmp_path / "ghost.csv"), "--json")
            assert r.returncode == 1, r.stderr
            report = json.loads(r.stdout)
            assert report["via"] == "the running agent"
            assert {p["point_id"]: p["quality"] for p in report["points"]}["plc.ghost"] == (
                "bad:config_error"
            )
            r = await _run(cfg, "schedule", "probe", str(tmp_path / "site.csv"), "-d", "plc")
            assert r.returncode == 0, r.stdout + r.stderr
            assert "through the running agent" in r.stdout

            # -- reload: a broken file is rejected with exit 1 and the loader's errors
            (tmp_path / "site.csv").write_text(GOOD + "plc.bad,plc,hr:x,int16,,,\n")
            r = await _run(cfg, "reload")
            assert r.returncode == 1
            assert "schedule rejected" in r.stderr and 'column "address"' in r.stderr
            events = json.loads(
                (await _run(cfg, "events", "--kind", "schedule.rejected", "--json")).stdout
            )
            assert [(e["actor"], e["detail"]["reason"]) for e in events] == [
                (getpass.getuser(), "reload")
            ]
            assert any('column "address"' in line for line in events[0]["detail"]["errors"])

            (tmp_path / "site.csv").write_text(GOOD)
            r = await _run(cfg, "reload")
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith("schedule sha256:")

            status = json.loads((await _run(cfg, "status", "--json")).stdout)
            first = status["schedule"]["version"]

            # -- load: invalid -> refused with every loader error, recorded
            r = await _run(cfg, "schedule", "load", str(tmp_path / "bad.csv"), "--yes")
            assert r.returncode == 1
            assert 'column "address"' in r.stderr and "plc.temp" in r.stderr
            assert "nothing loaded" in r.stderr

            # -- load with --probe: a bad point stops it before anything is loaded
            r = await _run(cfg, "schedule", "load", str(tmp_path / "ghost.csv"), "--probe", "--yes")
            assert r.returncode == 1
            assert "+ plc.ghost" in r.stdout  # the diff was shown
            assert "probe failed: nothing loaded" in r.stderr
            status = json.loads((await _run(cfg, "status", "--json")).stdout)
            assert status["schedule"]["version"] == first

            # -- two files with one name cannot be stored side by side: refused, nothing loaded
            for sub, text in (("a", GOOD), ("b", HEADER + "plc.other,plc,hr:30,uint16,,,\n")):
                (tmp_path / sub).mkdir()
                (tmp_path / sub / "x.csv").write_text(text)
            r = await _run(
                cfg, "schedule", "load", str(tmp_path / "a/x.csv"), str(tmp_path / "b/x.csv"), "-y"
            )
            assert r.returncode == 2 and "file names must differ" in r.stderr, r.stderr
            # and the agent refuses them as well (422 naming the field, never a 500)
            try:
                await asyncio.to_thread(
                    AgentClient(tmp_path / "var" / "outpost.sock").post,
                    "/schedule/load",
                    {"files": {"a/x.csv": GOOD, "b/x.csv": GOOD, "..": GOOD}},
                )
            except ApiError as exc:
                assert exc.status == 422 and "x.csv" in exc.message
            else:
                raise AssertionError("the agent took two files of one name")

            # -- load: valid, probed, applied live and verified
            r = await _run(cfg, "schedule", "load", str(tmp_path / "more.csv"), "--probe", "--yes")
            assert r.returncode == 0, r.stdout + r.stderr
            assert "+ plc.more" in r.stdout
            new = json.loads((await _run(cfg, "status", "--json")).stdout)["schedule"]["version"]
            assert new != first
            assert f"schedule {first} -> {new}" in r.stdout
            r = await _run(cfg, "read", "plc.more", "--json")
            assert json.loads(r.stdout)["value"] == 778.0
            r = await _run(cfg, "schedule", "load", str(tmp_path / "more.csv"), "--yes")
            assert r.returncode == 0 and "already running" in r.stdout

            events = json.loads(
                (await _run(cfg, "events", "--kind", "operator.schedule.apply", "--json")).stdout
            )
            outcomes = [(e["actor"], e["detail"]["status"]) for e in events]
            assert sorted(outcomes) == sorted(
                [(getpass.getuser(), "refused"), (getpass.getuser(), "succeeded")]
            ), outcomes

        finally:
            agent.stop()
    finally:
        await server.stop()
