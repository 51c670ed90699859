"""The simulated AHU as the agent sees it: plausible moving values, scenarios, a commandable
setpoint the supply air follows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from outpost.drivers.bacnet import BacnetDriver
from outpost.drivers.base import PointGroup
from outpost.drivers.sim.bacnet_ahu import AHU_OBJECTS, BacnetAhu, serve_ahu
from outpost.point_schedules.quality import Quality
from tests.bacnet_device import config, free_udp_port, point


async def test_ahu_values_scenarios_and_setpoint() -> None:
    port = free_udp_port()
    points = [point(name, f"{otype}:{inst}") for otype, inst, name in AHU_OBJECTS]
    async with BacnetAhu(f"127.0.0.1:{port}", 1001, tick=0.02, seed=1) as ahu:
        drv = BacnetDriver("ahu", config(port, free_udp_port()))
        group = PointGroup(device="ahu", points=points, interval=1.0)
        drv.prepare(group)
        try:
            await until(lambda: ahu.steps >= 10)  # the physics has settled past its start
            first = dict(zip(ahu_names(), (await drv.read(group)).value, strict=True))
            assert 15.0 < first["supply-air-temp"] < 21.0
            assert 20.0 < first["return-air-temp"] < 28.0
            assert 40.0 < first["supply-fan-speed"] < 100.0
            assert first["ahu-alarm"] == 0.0 and first["ahu-mode"] == 2.0

            await drv.write(points[4], 14.0, priority=8)  # supply-air-temp-sp
            ahu.set_scenario("UNIT_FAULT")
            steps = ahu.steps
            await until(lambda: ahu.steps >= steps + 20)  # the fault has had time to act
            res = await drv.read(group)
            later = dict(zip(ahu_names(), res.value, strict=True))
            assert list(res.quality) == [Quality.GOOD] * len(points)
            assert later["supply-fan-speed"] == 0.0
            assert later["ahu-alarm"] == 1.0
            assert later["supply-air-temp-sp"] == 14.0
            # the fault lets the supply air drift towards the return air
            assert later["supply-air-temp"] > first["supply-air-temp"]
            with pytest.raises(ValueError, match="unknown scenario"):
                ahu.set_scenario("NOPE")
        finally:
            await drv.close()


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def ahu_names() -> list[str]:
    return [name for _, _, name in AHU_OBJECTS]


async def test_serve_ahu_ready_and_stop() -> None:
    port = free_udp_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_ahu(f"127.0.0.1:{port}", 1005, stop=stop, ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    drv = BacnetDriver("ahu", config(port, free_udp_port(), instance=1005))
    group = PointGroup(device="ahu", points=[point("sat", "ai:1")], interval=1.0)
    drv.prepare(group)
    try:
        assert (await drv.read(group)).quality[0] == Quality.GOOD
        stop.set()
        await asyncio.wait_for(task, 5)
        assert (await drv.read(group)).quality[0] == Quality.BAD_COMM_FAILURE
    finally:
        await drv.close()
