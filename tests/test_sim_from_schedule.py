"""The simulator built from a schedule (`outpost sim --schedule`): the real drivers read every
point of a random schedule `good`, decoding exactly what the simulator serves; and the real
agent runs the demo schedule against it (reads, a forced alarm, a write)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.drivers.base import DriverContext
from outpost.drivers.probe import probe_points
from outpost.drivers.registry import config_model, driver_class
from outpost.drivers.sim.from_schedule import (
    ScheduleSite,
    discrete,
    dump_toml,
    normal_band,
    quantise,
    sim_agent_config,
)
from outpost.point_schedules.loader import parse_schedule
from tests.agent_process import OUTPOST, cli, start_agent
from tests.bacnet_device import free_udp_port
from tests.modbus_server import free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO_CSV = ROOT / "point_schedules" / "examples" / "demo-site.csv"
PROTOCOLS = {"plc": "modbus", "ahu": "bacnet", "pdu": "snmp"}

REG_TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
SIZES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
BACNET_TYPES = [
    "analog-input",
    "analog-output",
    "analog-value",
    "binary-input",
    "binary-output",
    "binary-value",
    "multi-state-input",
    "multi-state-output",
    "multi-state-value",
]

modbus_row = st.one_of(
    st.tuples(
        st.sampled_from(["hr", "ir"]),
        st.sampled_from(REG_TYPES),
        st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]),
        st.sampled_from(["", "0.1", "0.01", "2", "-0.5"]),
        st.booleans(),  # with min/max
        st.booleans(),  # writable (hr only)
    ),
    st.tuples(
        st.sampled_from(["coil", "di", "hr-bit"]),
        st.just("bool"),
        st.just(""),
        st.just(""),
        st.just(False),
        st.booleans(),  # writable (coils only)
    ),
)
bacnet_row = st.tuples(st.sampled_from(BACNET_TYPES), st.booleans(), st.sampled_from(["", "0.5"]))
snmp_row = st.tuples(st.sampled_from(["", "0.1", "10"]), st.booleans(), st.booleans())


def _schedule_csv(modbus: list[Any], bacnet: list[Any], snmp: list[Any]) -> str:
    rows = ["point_id,device,address,data_type,byte_order,scale,min,max,alarm_hh,writable"]
    next_reg = {"hr": 0, "ir": 0, "coil": 0, "di": 0}
    for i, (table, kind, order, scale, ranged, writable) in enumerate(modbus):
        if table == "hr-bit":
            address = f"hr:{next_reg['hr']}.{i % 16}"
            next_reg["hr"] += 1
        else:
            address = f"{table}:{next_reg[table]}"
            next_reg[table] += SIZES.get(kind, 4) if table in ("hr", "ir") else 1
            next_reg[table] += i % 3  # gaps, so the planner splits and merges
        if kind in ("int16", "uint16", "bool"):
            order = ""  # byte order is for multi-register types only
        lo, hi = ("-40", "120") if ranged else ("", "")
        if ranged and kind.startswith("uint"):
            lo = "0"
        write = "true" if writable and table in ("hr", "coil") else ""
        rows.append(f"plc.p{i},plc,{address},{kind},{order},{scale},{lo},{hi},,{write}")
    for i, (obj, writable, scale) in enumerate(bacnet):
        hh = "80" if obj.startswith("analog") else ""
        write = "true" if writable and obj.endswith(("output", "value")) else ""
        rows.append(f"ahu.o{i},ahu,{obj}:{i + 1},,,{scale},,,{hh},{write}")
    for i, (scale, ranged, writable) in enumerate(snmp):
        lo, hi = ("0", "500") if ranged else ("", "")
        write = "true" if writable else ""
        rows.append(f"pdu.s{i},pdu,1.3.6.1.4.1.99999.7.{i + 1}.0,,,{scale},{lo},{hi},,{write}")
    return "\n".join(rows) + "\n"


def _drivers_for(site: ScheduleSite) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for device, served in site.served.items():
        host, _, port = served.endpoint.rpartition(":")
        body: dict[str, Any] = {"protocol": served.protocol, "timeout": 2.0}
        if served.protocol == "modbus":
            body.update(host=host, port=int(port))
        elif served.protocol == "bacnet":
            body.update(
                address=served.endpoint,
                device_instance=1001,
                local_address=f"127.0.0.1:{free_udp_port()}",
            )
        else:
            os.environ["OUTPOST_TEST_SIM_COMMUNITY"] = "public"
            body.update(host=host, port=int(port), community_env="OUTPOST_TEST_SIM_COMMUNITY")
        configs[device] = config_model(served.protocol).model_validate(body)
    return configs


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    modbus=st.lists(modbus_row, min_size=1, max_size=12),
    bacnet=st.lists(bacnet_row, min_size=1, max_size=6),
    snmp=st.lists(snmp_row, min_size=1, max_size=4),
)
def test_random_schedule_reads_good_and_decodes_what_is_served(
    modbus: list[Any], bacnet: list[Any], snmp: list[Any]
) -> None:
    text = _schedule_csv(modbus, bacnet, snmp)
    schedule, issues = parse_schedule([("random.csv", text.encode())], PROTOCOLS)
    assert schedule is not None, [str(i) for i in issues]
    asyncio.run(_read_back(schedule))


async def _read_back(schedule: Any) -> None:
    configs = {
        "plc": config_model("modbus").model_validate({"protocol": "modbus", "host": "x"}),
        "ahu": config_model("bacnet").model_validate(
            {"protocol": "bacnet", "address": "x", "device_instance": 1001}
        ),
        "pdu": config_model("snmp").model_validate(
            {"protocol": "snmp", "host": "x", "community_env": "X"}
        ),
    }
    # a tick of an hour: nothing moves between serving and reading
    site = ScheduleSite(schedule, configs, control="127.0.0.1:0", tick=3600, seed=1)
    ready = asyncio.Event()
    runner = asyncio.create_task(site.run(ready))
    context = DriverContext()
    drivers: dict[str, Any] = {}
    try:
        await asyncio.wait_for(ready.wait(), 20)
        for device, cfg in _drivers_for(site).items():
            drivers[device] = driver_class(cfg.protocol)(device, cfg, context)
        report = await probe_points(drivers, list(schedule.points), protocols=PROTOCOLS)
        served = site.sched_physics.signals
        for p in report.points:
            assert p.quality == "good", (p, [d for d in report.devices])
            assert p.value == pytest.approx(served[p.point_id], rel=1e-9, abs=1e-12), p
        for point in schedule.points:  # values sit inside the point's normal band
            lo, hi = normal_band(point, PROTOCOLS[point.device])
            value = served[point.point_id]
            if point.min is not None and point.max is not None:
                assert lo - 1e-6 <= value <= hi + 1e-6 or abs(point.scale) >= 1, (point, value)
        # writable points take a write through the real driver and hold it
        physics = site.sched_physics
        for point in schedule.points:
            if not point.writable:
                continue
            protocol = PROTOCOLS[point.device]
            wanted = quantise(point, protocol, physics.signals[point.point_id] + point.scale)
            if discrete(point, protocol):
                wanted = quantise(point, protocol, point.to_engineering(1.0))
            await drivers[point.device].write(point, wanted)
            await site._refresh()  # what the sim's tick does (frozen here)
            assert physics.signals[point.point_id] == pytest.approx(wanted, rel=1e-9), point
            again = await probe_points(drivers, [point], protocols=PROTOCOLS)
            assert again.points[0].value == pytest.approx(wanted, rel=1e-9), point
    finally:
        for d in drivers.values():
            await d.close()
        await context.aclose()
        runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            pass


def test_config_copy_points_the_agent_at_the_simulator(tmp_path: Path) -> None:
    raw = {
        "agent": {"id": "gw", "data_dir": "/var/lib/outpost"},
        "schedules": {"files": ["site.csv"]},
        "cloud": {"url": "https://fleet.example"},
        "api": {"socket": "/run/outpost.sock"},
        "devices": {
            "plc": {"protocol": "modbus", "transport": "rtu", "serial_port": "/dev/ttyUSB0"},
            "pdu": {"protocol": "snmp", "host": "10.0.0.5", "version": "3", "user": "u"},
            "rack": {"protocol": "mqtt", "host": "broker", "ca_file": "ca.pem"},
        },
    }
    from outpost.drivers.sim.from_schedule import Served

    served = {
        "plc": Served("plc", "modbus", "127.0.0.1:1502", 3),
        "pdu": Served("pdu", "snmp", "127.0.0.1:1161", 2),
    }
    doc = sim_agent_config(raw, tmp_path / "etc", served, [tmp_path / "s.csv"], tmp_path)
    assert "cloud" not in doc and "socket" not in doc["api"]
    assert doc["agent"]["data_dir"] == str(tmp_path / "sim-data")
    assert doc["devices"]["plc"] == {
        "protocol": "modbus",
        "transport": "tcp",
        "host": "127.0.0.1",
        "port": 1502,
    }
    assert doc["devices"]["pdu"]["version"] == "2c" and "user" not in doc["devices"]["pdu"]
    assert doc["devices"]["rack"]["ca_file"] == str((tmp_path / "etc" / "ca.pem").resolve())
    import tomllib

    assert tomllib.loads(dump_toml(doc)) == doc


async def _until(predicate: Any, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


def _start_sim(out: Path, control: str, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                *OUTPOST,
                "sim",
                "--schedule",
                str(DEMO_CSV),
                "-c",
                str(ROOT / "agent.example.toml"),
                "--out",
                str(out),
                "--control",
                control,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def test_demo_schedule_runs_on_the_real_agent_with_set_and_write(tmp_path: Path) -> None:
    control = f"127.0.0.1:{free_port()}"
    out = tmp_path / "sim-agent.toml"
    sim_log = tmp_path / "sim.out"
    sim = _start_sim(out, control, sim_log)
    agent = None
    try:
        deadline = time.monotonic() + 30
        while "Ctrl-C stops." not in sim_log.read_text(errors="replace"):
            assert sim.poll() is None, sim_log.read_text(errors="replace")
            assert time.monotonic() < deadline, sim_log.read_text(errors="replace")
            await asyncio.sleep(0.2)
        # edge-only and quick polls for the test; everything else is the written copy
        text = out.read_text().replace("poll_interval = 5.0", "poll_interval = 0.5")
        out.write_text(text)
        agent = start_agent(out)
        agent.socket = tmp_path / "sim-data" / "outpost.sock"
        await asyncio.to_thread(agent.wait_ready, 30)

        async def all_good() -> Any:
            r = await asyncio.to_thread(cli, out, "points", "--json")
            rows = [p for p in json.loads(r.stdout) if p["device"] != "rack-sensors"]
            return rows if rows and all(p["quality"] == "good" for p in rows) else None

        rows = await _until(all_good, 40)
        assert {p["device"] for p in rows} == {"cdu-01", "ups-01", "pdu-01", "ahu-1", "pdu-a"}

        # force a point over its alarm_hh: the agent reads it and raises the alarm
        r = await asyncio.to_thread(
            subprocess.run,
            [*OUTPOST, "sim", "set", "cdu-01.supply_temp", "45", "--control", control],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr

        async def alarm_up() -> Any:
            r = await asyncio.to_thread(cli, out, "alarms", "--json")
            return [a for a in json.loads(r.stdout) if a["id"].startswith("cdu-01.supply_temp:")]

        assert await _until(alarm_up)
        r = await asyncio.to_thread(cli, out, "read", "cdu-01.supply_temp", "--json")
        assert json.loads(r.stdout)["value"] == pytest.approx(45.0)

        # a write reaches the simulator and reads back
        r = await asyncio.to_thread(cli, out, "write", "cdu-01.supply_setpoint", "19.5", "--yes")
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(
            subprocess.run,
            [*OUTPOST, "sim", "status", "--json", "--control", control],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert json.loads(r.stdout)["signals"]["cdu-01.supply_setpoint"] == pytest.approx(19.5)
    finally:
        if agent is not None:
            agent.stop()
        if sim.poll() is None:
            os.killpg(sim.pid, signal.SIGTERM)
        sim.wait(timeout=30)
