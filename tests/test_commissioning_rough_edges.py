"""The technician's rough edges (issue 12): relinquish asks unless --yes, config check and run
agree about a missing secret, a second `outpost demo` says one line, `sim scenario --help`
says what each scenario does. Real processes throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from outpost.drivers.sim.physics import SCENARIOS
from tests.agent_process import OUTPOST, cli, start_agent, write_config
from tests.modbus_server import free_port, start_server
from tests.snmp_peer import free_udp_port

WRITABLE = "point_id,device,address,data_type,writable,min,max\nplc.sp,plc,hr:5,uint16,true,0,100\n"


async def test_relinquish_asks_unless_yes(tmp_path: Path) -> None:
    server = await start_server()
    cfg = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": server.port}},
        WRITABLE,
    )
    agent = start_agent(cfg)
    try:
        await asyncio.to_thread(agent.wait_ready)
        asked = await asyncio.to_thread(
            subprocess.run,
            [*OUTPOST, "relinquish", "plc.sp", "-c", str(cfg)],
            input="n\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert asked.returncode == 1
        assert "relinquish plc.sp (now" in asked.stdout
        assert "not relinquished" in asked.stderr
        # --yes goes straight to the agent, which refuses a Modbus point with its reason
        r = await asyncio.to_thread(cli, cfg, "relinquish", "plc.sp", "--yes")
        assert r.returncode == 1
        assert "BACnet" in r.stderr and r.stdout == ""  # no question asked
    finally:
        agent.stop()
        await server.stop()


def test_missing_secret_config_check_and_run_agree(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {
            "pdu": {
                "protocol": "snmp",
                "host": "127.0.0.1",
                "port": free_udp_port(),
                "community_env": "OUTPOST_TEST_UNSET_COMMUNITY",
            }
        },
        "point_id,device,address\npdu.load,pdu,1.3.6.1.4.1.1.0\n",
    )
    env = {k: v for k, v in os.environ.items() if k != "OUTPOST_TEST_UNSET_COMMUNITY"}
    lines = {}
    for command in (["config", "check"], ["run"]):
        r = subprocess.run(
            [*OUTPOST, *command, "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        lines[command[-1]] = [
            line for line in r.stderr.splitlines() if "OUTPOST_TEST_UNSET" in line
        ]
    expected = f'{cfg}: key "devices.pdu": community_env: environment variable OUTPOST_TEST_UNSET_COMMUNITY is not set'
    assert lines["check"] == lines["run"] == [expected]
    assert not (tmp_path / "var" / "outpost.sock").exists()  # run started nothing
    r = cli(cfg, "config", "check", env={"OUTPOST_TEST_UNSET_COMMUNITY": "public"})
    assert r.returncode == 0, r.stderr


def test_sim_scenario_help_describes_each_scenario() -> None:
    r = subprocess.run(
        [*OUTPOST, "sim", "scenario", "--help"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in SCENARIOS:
        described = [line for line in lines if line.strip().startswith(name + " ")]
        assert described, (name, r.stdout)
        assert len(described[0].split()) > 3, described  # the name and what it does


def test_second_demo_says_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    site = tmp_path / "site.toml"
    site.write_text(
        f'control = "127.0.0.1:{free_port()}"\n'
        f'[devices.cdu-01]\nkind = "modbus-cdu"\nhost = "127.0.0.1"\nport = {port}\n'
    )
    cfg = write_config(
        tmp_path,
        {"cdu-01": {"protocol": "modbus", "host": "127.0.0.1", "port": port}},
        "point_id,device,address,data_type,scale\ncdu-01.supply_temp,cdu-01,ir:0,int16,0.1\n",
    )
    env = {**os.environ, "OUTPOST_SIM_CONFIG": str(site)}
    first_out = tmp_path / "first.out"
    with first_out.open("wb") as out:
        first = subprocess.Popen(
            [*OUTPOST, "demo", "--no-cloud", "-c", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    logs = tmp_path / "var" / "demo-logs"
    try:
        deadline = time.monotonic() + 60
        while "Outpost demo is running." not in first_out.read_text(errors="replace"):
            assert first.poll() is None, first_out.read_text(errors="replace")
            assert time.monotonic() < deadline, first_out.read_text(errors="replace")
            time.sleep(0.2)
        before = {p.name: p.read_bytes() for p in logs.iterdir() if p.suffix == ".log"}
        second = subprocess.run(
            [*OUTPOST, "demo", "--no-cloud", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert second.returncode == 1
        assert second.stdout == ""
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"a demo is already running (pid {first.pid}" in second.stderr
        after = {p.name: p.read_bytes() for p in logs.iterdir() if p.suffix == ".log"}
        assert set(after) == set(before)
        for name, data in before.items():
            assert after[name].startswith(data)  # appended to by the running demo at most
        assert first.poll() is None  # the running demo is untouched
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=30)
