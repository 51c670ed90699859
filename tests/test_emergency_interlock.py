"""Local interlock: while the site is in emergency, the points its failsafe writes hold cannot
be written or relinquished by an operator (CLI, status page, command channel all go through
LocalControl), only by the mode machine; after the emergency is cleared they can."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.agent_process import cli, start_agent, write_config
from tests.modbus_server import start_server

SCHEDULE = (
    "point_id,device,address,data_type,writable,alarm_state,alarm_priority,tags\n"
    "plc.leak,plc,coil:0,bool,,1,critical,safety\n"
    "plc.pump,plc,coil:1,bool,true,,,\n"
    "plc.fan,plc,hr:3,uint16,true,,,\n"
)
MODES = """
[modes.emergency]
failsafe_writes = [{ point = "plc.pump", value = 0 }]
"""


async def _until(fn: Callable[[], Awaitable[Any]], within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


async def test_failsafe_points_are_held_during_emergency(tmp_path: Path) -> None:
    server = await start_server()
    await server.set("coil", 0, [False])
    await server.set("coil", 1, [True])
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
        extra=MODES,
    )
    agent = start_agent(cfg)
    try:
        await asyncio.to_thread(agent.wait_ready)
        await server.set("coil", 0, [True])  # leak → emergency → failsafe stops the pump

        async def in_emergency() -> bool:
            r = await asyncio.to_thread(cli, cfg, "mode", "--json")
            return r.returncode == 0 and json.loads(r.stdout)["mode"] == "emergency"

        await _until(in_emergency)
        await _until(lambda: _coil(server, 1, False))

        r = await asyncio.to_thread(cli, cfg, "write", "plc.pump", "1", "--yes")
        assert r.returncode != 0
        assert "held by the emergency failsafe" in (r.stderr + r.stdout)
        assert (await server.get("coil", 1, 1))[0] is False  # nothing was sent
        # a point outside the failsafe set is still writable
        r = await asyncio.to_thread(cli, cfg, "write", "plc.fan", "7", "--yes")
        assert r.returncode == 0, r.stderr
        assert await server.get("hr", 3, 1) == [7]

        await server.set("coil", 0, [False])  # leak gone; an operator clears the emergency

        async def cleared() -> bool:
            r = await asyncio.to_thread(cli, cfg, "mode", "clear", "--reason", "leak fixed")
            return r.returncode == 0

        await _until(cleared)
        r = await asyncio.to_thread(cli, cfg, "write", "plc.pump", "1", "--yes")
        assert r.returncode == 0, r.stderr
        assert (await server.get("coil", 1, 1))[0] is True
    finally:
        agent.stop()
        await server.stop()


async def _coil(server: Any, address: int, value: bool) -> bool:
    return bool((await server.get("coil", address, 1))[0] is value)
