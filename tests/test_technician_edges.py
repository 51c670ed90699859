"""Issue 12's technician rough edges through a real `outpost run` against a real pymodbus
device: `outpost read` shows a write's read-back at once (not the value of the last poll);
`outpost status` shows the same backlog on its uplink line as on its buffer line."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.agent_process import cli, start_agent, write_config
from tests.modbus_server import start_server

SCHEDULE = (
    "point_id,device,address,data_type,scale,units,writable,min,max\n"
    "plc.temp,plc,hr:0,int16,0.1,degC,,,\n"
    "plc.setpoint,plc,hr:5,int16,0.1,degC,true,10,30\n"
)


async def _until(fn: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_read_shows_the_read_back_of_a_write_at_once(tmp_path: Path) -> None:
    server = await start_server()
    await server.set("hr", 5, [180])
    cfg = write_config(
        tmp_path,
        # one poll a minute: only the write's read-back can bring the new value in time
        {
            "plc": {
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "poll_interval": 60,
            }
        },
        SCHEDULE,
        extra='[api]\nbind = ""\n',
    )
    agent = start_agent(cfg)
    try:
        await asyncio.to_thread(agent.wait_ready)

        async def first_poll() -> bool:
            r = await asyncio.to_thread(cli, cfg, "read", "plc.setpoint", "--json")
            return r.returncode == 0 and json.loads(r.stdout)["value"] == 18.0

        await _until(first_poll)
        polls = len(server.requests)
        r = await asyncio.to_thread(cli, cfg, "write", "plc.setpoint", "22.5", "--yes")
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(cli, cfg, "read", "plc.setpoint", "--json")
        assert r.returncode == 0, r.stderr
        live = json.loads(r.stdout)
        assert (live["value"], live["quality"]) == (22.5, "good")
        # the write and its read-back only: no poll brought the value
        assert len(server.requests) - polls == 2
    finally:
        agent.stop()
        await server.stop()


async def test_status_backlog_agrees_with_the_buffer(tmp_path: Path) -> None:
    server = await start_server()
    await server.set("hr", 0, [250])
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
        # nothing listens at the receiver's address: the backlog grows with every poll
        extra=(
            '[api]\nbind = ""\n[cloud]\n'
            f'url = "http://127.0.0.1:{_free_port()}"\nenrollment_token = "{"t" * 32}"\n'
            "backoff_min = 0.05\nbackoff_max = 0.2\n"
        ),
    )
    agent = start_agent(cfg)
    try:
        await asyncio.to_thread(agent.wait_ready)
        seen = []
        for _ in range(6):
            r = await asyncio.to_thread(cli, cfg, "status", "--json")
            assert r.returncode == 0, r.stderr
            body = json.loads(r.stdout)
            buffer, uplink = body["buffer"], body["uplink"]
            assert uplink["backlog_rows"] == buffer["unsynced_rows"]
            assert uplink["oldest_unsynced_age_s"] == buffer["oldest_unsynced_age_s"]
            seen.append(buffer["unsynced_rows"])
            await asyncio.sleep(0.3)
        assert max(seen) > 0
        r = await asyncio.to_thread(cli, cfg, "status")
        assert r.returncode == 0, r.stderr
        unsynced = r.stdout.split(" unsynced")[0].rsplit(" ", 1)[-1]
        assert f"backlog {unsynced} rows" in r.stdout
    finally:
        agent.stop()
        await server.stop()
