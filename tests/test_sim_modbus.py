"""The simulated Modbus site end to end: real pymodbus servers from drivers/sim, read through
the real ModbusDriver with the example schedule, steered through the real control endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outpost.agent.cli.sim import sim_app
from outpost.drivers.base import PointGroup
from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
from outpost.drivers.sim.modbus_devices import MODELS
from outpost.drivers.sim.site import SimConfig, SimSite, load_sim_config, sim_request
from outpost.point_schedules.loader import load_schedule
from outpost.point_schedules.model import ModbusAddress, Point
from outpost.point_schedules.quality import Quality

ROOT = Path(__file__).resolve().parents[1]
DEMO_CSV = ROOT / "point_schedules" / "examples" / "demo-site.csv"
DEVICES = {"cdu-01": "cdu", "ups-01": "ups", "pdu-01": "pdu"}
BAD_POINT = "ups-01.bypass_voltage"


def modbus_site_config(tick: float = 0.05) -> SimConfig:
    """The packaged demo site, Modbus devices only, on ephemeral ports."""
    demo = load_sim_config(None)
    devices = {
        name: dev.model_dump() | {"port": 0}
        for name, dev in demo.devices.items()
        if dev.kind.startswith("modbus-")
    }
    return SimConfig.model_validate(
        {"control": "127.0.0.1:0", "tick": tick, "seed": 3, "devices": devices}
    )


@pytest.fixture
async def site() -> AsyncIterator[SimSite]:
    sim = SimSite(modbus_site_config())
    ready = asyncio.Event()
    task = asyncio.create_task(sim.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    yield sim
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def schedule_points() -> list[Point]:
    # the demo schedule covers every protocol; its devices come from the example config
    from outpost.agent.core.config import load_config

    cfg = load_config(DEMO_CSV.parents[2] / "agent.example.toml")
    points = load_schedule([DEMO_CSV], cfg.device_protocols()).points
    return [p for p in points if p.device in DEVICES]


async def drivers_for(sim: SimSite) -> dict[str, tuple[ModbusDriver, PointGroup]]:
    out = {}
    points = schedule_points()
    for device in DEVICES:
        host, _, port = sim.endpoints[device].rpartition(":")
        cfg = ModbusDeviceConfig(protocol="modbus", host=host, port=int(port), timeout=1.0)
        driver = ModbusDriver(device, cfg)
        group = PointGroup(device, [p for p in points if p.device == device], 5.0)
        driver.prepare(group)
        out[device] = (driver, group)
    return out


async def read_all(
    drivers: dict[str, tuple[ModbusDriver, PointGroup]],
) -> dict[str, tuple[float, int]]:
    values: dict[str, tuple[float, int]] = {}
    for driver, group in drivers.values():
        result = await driver.read(group)
        for i, p in enumerate(group.points):
            values[p.point_id] = (result.value[i], result.quality[i])
    return values


def test_example_schedule_matches_the_simulated_register_maps() -> None:
    points = {p.point_id: p for p in schedule_points()}
    served = set()
    for device, kind in DEVICES.items():
        for reg in MODELS[kind].registers:
            pid = f"{device}.{reg.signal}"
            served.add(pid)
            assert pid in points, f"{pid} is served but not in demo-site.csv"
            p = points[pid]
            assert p.address == reg.address, pid
            if reg.size > 1:
                assert (p.data_type, p.byte_order) == (reg.data_type, reg.byte_order), pid
            assert p.scale == pytest.approx(reg.scale) and p.offset == reg.offset, pid
            assert p.writable == reg.writable, pid
    assert set(points) - served == {BAD_POINT}
    bad = points[BAD_POINT].address
    assert isinstance(bad, ModbusAddress)
    blocks = MODELS["ups"].blocks[bad.table]
    assert not any(s <= bad.address < s + n for s, n in blocks), "the bad point must be unserved"
    # the schedule shows off: every byte order, several types, a writable setpoint, alarms
    assert {p.byte_order.value for p in points.values()} == {"ABCD", "CDAB", "BADC", "DCBA"}
    assert len({p.data_type for p in points.values()}) >= 8
    assert points["cdu-01.leak_detected"].alarm_state == 1
    assert points["cdu-01.supply_temp"].alarm_h is not None


async def test_sim_serves_plausible_values_and_the_bad_range(site: SimSite) -> None:
    drivers = await drivers_for(site)
    values = await read_all(drivers)
    for pid, (value, quality) in values.items():
        if pid == BAD_POINT:
            assert quality == Quality.BAD_CONFIG_ERROR
        else:
            assert quality == Quality.GOOD, (pid, value, Quality(quality).label)
    v = {pid: value for pid, (value, _) in values.items()}
    assert 15 < v["cdu-01.supply_temp"] < 21
    assert v["cdu-01.return_temp"] > v["cdu-01.supply_temp"]
    assert v["cdu-01.supply_setpoint"] == pytest.approx(18.0)
    assert 100 < v["cdu-01.flow_rate"] < 400
    assert v["cdu-01.pump_enable"] == 1.0 and v["cdu-01.leak_detected"] == 0.0
    for phase in (1, 2, 3):
        assert 220 < v[f"pdu-01.voltage_l{phase}"] < 240
        assert 30 < v[f"pdu-01.current_l{phase}"] < 110
    assert 25 < v["pdu-01.power_kw"] < 60
    assert v["pdu-01.energy_kwh"] > 800_000
    assert v["ups-01.battery_charge"] == pytest.approx(100.0)
    assert v["ups-01.on_battery"] == 0.0 and 200 < v["ups-01.input_voltage"] < 260
    assert 10 < v["ups-01.battery_runtime"] < 60  # minutes, from a CDAB uint32 of seconds
    # values drift: a read some physics ticks later differs
    deadline = time.monotonic() + 5
    while True:
        later = await read_all(drivers)
        if later["pdu-01.power_kw"][0] != v["pdu-01.power_kw"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert later["pdu-01.power_kw"][0] != v["pdu-01.power_kw"]
    for driver, _ in drivers.values():
        await driver.close()


async def test_set_release_scenario_and_writes_reach_the_physics(site: SimSite) -> None:
    drivers = await drivers_for(site)
    await sim_request(site.control, {"op": "set", "signal": "cdu-01.supply_temp", "value": 35})
    v = await read_all(drivers)
    assert v["cdu-01.supply_temp"] == (35.0, Quality.GOOD)
    assert v["cdu-01.high_temp_warning"][0] == 1.0
    answer = await sim_request(site.control, {"op": "release", "signal": "cdu-01.supply_temp"})
    assert answer["released"] == ["cdu-01.supply_temp"]
    assert not site.physics.forced

    await sim_request(site.control, {"op": "scenario", "name": "LEAK_DETECTED"})
    await sim_request(site.control, {"op": "scenario", "name": "MAINS_FAILURE"})
    v = await read_all(drivers)
    assert v["cdu-01.leak_detected"][0] == 1.0
    assert v["ups-01.on_battery"][0] == 1.0 and v["ups-01.input_voltage"][0] == 0.0
    status = await sim_request(site.control, {"op": "status"})
    assert {s["name"] for s in status["scenarios"]} == {"LEAK_DETECTED", "MAINS_FAILURE"}
    await sim_request(site.control, {"op": "scenario", "name": "MAINS_FAILURE", "active": False})
    v = await read_all(drivers)
    assert v["ups-01.on_battery"][0] == 0.0

    # the agent writes a setpoint: the physics follows it (feedback: the temperature moves)
    driver, group = drivers["cdu-01"]
    sp = next(p for p in group.points if p.point_id == "cdu-01.supply_setpoint")
    await driver.write(sp, 24.0)
    assert await driver.read_back(sp) == pytest.approx(24.0)
    assert site.physics.commands["cdu-01.supply_setpoint"] == 24.0
    for _ in range(60):
        site.physics.step(5.0)
    assert site.physics.supply_temp == pytest.approx(24.0, abs=1.0)  # 18 without the write
    # and the pump-enable coil: no flow without the pump
    enable = next(p for p in group.points if p.point_id == "cdu-01.pump_enable")
    await driver.write(enable, 0)
    site.physics.step(1.0)
    await site._refresh()
    v = await read_all(drivers)
    assert v["cdu-01.flow_rate"][0] == 0.0 and v["cdu-01.pump_enable"][0] == 0.0
    # writes outside the writable registers are refused like a real device does
    with pytest.raises(Exception, match="illegal data address"):
        temp = next(p for p in schedule_points() if p.point_id == "pdu-01.inlet_temp")
        await drivers["pdu-01"][0].write(temp, 20.0)
    with pytest.raises(Exception, match="unknown signal"):
        await sim_request(site.control, {"op": "set", "signal": "cdu-01.nope", "value": 1})
    for d, _ in drivers.values():
        await d.close()


def test_cli_set_release_scenario_status_against_a_running_sim() -> None:
    """The typer sub-commands against a sim running in a thread with its own loop."""
    loop = asyncio.new_event_loop()
    sim = SimSite(modbus_site_config())
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        event = asyncio.Event()
        task = asyncio.create_task(sim.run(event))
        await event.wait()
        ready.set()
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    runner = CliRunner()
    try:
        control = ["--control", sim.control]
        r = runner.invoke(sim_app, ["set", "cdu-01.supply_temp", "35", *control])
        assert r.exit_code == 0, r.output
        assert sim.physics.forced == {"cdu-01.supply_temp": 35.0}
        r = runner.invoke(sim_app, ["status", "--json", *control])
        assert r.exit_code == 0, r.output
        assert '"cdu-01.supply_temp": 35.0' in r.output
        r = runner.invoke(sim_app, ["scenario", "cooling_failure", *control])
        assert r.exit_code == 0 and "COOLING_FAILURE started" in r.output
        assert "COOLING_FAILURE" in sim.physics.scenarios
        r = runner.invoke(sim_app, ["release", *control])
        assert r.exit_code == 0 and "cdu-01.supply_temp" in r.output
        assert sim.physics.forced == {}
        r = runner.invoke(sim_app, ["set", "cdu-01.nope", "1", *control])
        assert r.exit_code == 1 and "unknown signal" in r.output
        r = runner.invoke(sim_app, ["scenario", "NOT_A_THING", *control])
        assert r.exit_code == 1 and "unknown scenario" in r.output
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
    r = runner.invoke(sim_app, ["status", "--control", sim.control])
    assert r.exit_code == 1 and "no simulated site answers" in r.output
    assert not math.isnan(sim.physics.value("cdu-01.supply_temp"))
