"""End to end: the real `outpost run` daemon polls a real pymodbus server with `[cloud]`
configured, enrolls itself with a one-time token, and syncs to a real receiver on real
PostgreSQL. Afterwards, per point, the receiver holds exactly the readings of the agent's
buffer; `outpost status` shows the uplink; heartbeat and point metadata arrived."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path

from outpost.buffer.inspect import file_stats
from tests.agent_process import cli, start_agent, write_config
from tests.modbus_server import start_server
from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import assert_identical, buffer_event_ids, buffer_rows, wait_for

pytest_plugins = ("tests.receiver_fixtures",)

GW = "gw-e2e"
SCHEDULE = """point_id,device,address,data_type,scale,units,description
plc.temp,plc,hr:0,int16,0.1,degC,Supply temperature
plc.level,plc,hr:1,uint16,,%,Tank level
plc.count,plc,hr:2,uint16,,,Pulse counter
plc.ghost,plc,hr:500,uint16,,,Address the device does not serve
"""


async def test_agent_polls_modbus_and_syncs_exactly_once(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    server = await start_server()
    await server.set("hr", 0, [200, 50, 0])
    enrollment = await receiver.enrollment_token(GW)
    cloud = (
        "[cloud]\n"
        f'url = "{receiver.url}"\n'
        f'enrollment_token = "{enrollment}"\n'
        "heartbeat_interval = 0.5\nflush_interval = 0.1\nbatch_size = 50\n"
        "backoff_min = 0.05\nbackoff_max = 0.5\n"
    )
    cfg = write_config(
        tmp_path,
        {
            "plc": {
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "poll_interval": 0.1,
            }
        },
        SCHEDULE,
        extra=cloud,
        gateway_id=GW,
    )
    agent = start_agent(cfg)
    stop = asyncio.Event()

    async def move_values() -> None:  # the plant moves: report-by-exception stores changes
        i = 0
        while not stop.is_set():
            i += 1
            await server.set("hr", 0, [200 + i % 50, 50 + i % 7, i % 65536])
            await asyncio.sleep(0.05)

    mover = asyncio.create_task(move_values())
    buffer_path = tmp_path / "var" / "buffer.db"
    try:
        await asyncio.to_thread(agent.wait_ready)
        await wait_for(lambda: receiver.count("readings"), 20, "readings at the receiver")
        await asyncio.sleep(2.0)
        stop.set()
        await mover

        def drained() -> bool:
            st = file_stats(buffer_path)
            return st.rows > 0 and st.unsynced_rows == 0 and st.unsynced_events == 0

        # The plant stands still now; the agent stores nothing new and drains its buffer.
        await wait_for(lambda: asyncio.to_thread(drained), 30, "the agent's buffer to drain")
        status = await asyncio.to_thread(cli, cfg, "status", "--json")
        human = await asyncio.to_thread(cli, cfg, "status")
    finally:
        stop.set()
        assert agent.stop() == 0, agent.log()
        await server.stop()

    assert status.returncode == 0, status.stderr
    uplink = json.loads(status.stdout)["uplink"]
    assert uplink["connected"] is True and uplink["enrolled"] is True
    assert uplink["readings_sent"] > 0 and uplink["rejected_batches"] == 0
    assert uplink["last_success_ts"] is not None and uplink["last_error"] is None
    assert "uplink: connected" in human.stdout

    rows = buffer_rows(buffer_path)
    assert {r[0] for r in rows} >= {"plc.temp", "plc.level", "plc.count", "plc.ghost"}
    assert len(rows) > 40
    assert_identical(rows, await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(buffer_path) != []

    token_file = tmp_path / "var" / "gateway.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    gw = await receiver.fetch("SELECT last_heartbeat FROM gateways WHERE id = $1", GW)
    heartbeat = json.loads(gw[0]["last_heartbeat"])
    assert heartbeat["mode"] and "plc" in heartbeat["devices"]
    assert heartbeat["ts"] > (time.time() - 60) * 1000
    points = await receiver.fetch(
        "SELECT point_id, units, description FROM points WHERE gateway_id = $1 ORDER BY 1", GW
    )
    meta = {p["point_id"]: (p["units"], p["description"]) for p in points}
    assert meta["plc.temp"] == ("degC", "Supply temperature")
    assert meta["plc.level"][0] == "%"
