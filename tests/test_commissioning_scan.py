"""`outpost scan modbus` against a pymodbus server with holes, and `outpost read --address`
against pymodbus and snmpd, through the real CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from outpost.drivers.adhoc import AdhocError, parse_point_url
from outpost.point_schedules.model import ByteOrder, DataType
from tests.agent_process import OUTPOST
from tests.modbus_server import Tables, registers_for, start_server
from tests.snmp_peer import COMMUNITY, Snmpd


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*OUTPOST, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def _acli(*args: str, env: dict[str, str] | None = None) -> Any:
    return await asyncio.to_thread(_cli, *args, env=env)


async def test_scan_finds_the_holes_as_ranges() -> None:
    # registers 0..99, 140..141 and 300..309 answer; 100..139, 142..299 and 310.. do not
    server = await start_server({3: Tables(hr=((0, 100), (140, 2), (300, 10)), coil=((16, 16),))})
    try:
        target = f"127.0.0.1:{server.port}"
        r = await _acli("scan", "modbus", target, "--unit", "3", "--range", "0-499", "--json")
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        spans = [(run["start"], run["end"], run["outcome"]) for run in result["runs"]]
        illegal = "exception 2 (illegal data address)"
        assert spans == [
            (0, 99, "ok"),
            (100, 139, illegal),
            (140, 141, "ok"),
            (142, 299, illegal),
            (300, 309, "ok"),
            (310, 499, illegal),
        ], spans
        assert result["answering"] == 112
        # only reads were sent; the 100 answering registers took a handful of requests
        assert {req.fc for req in server.requests} == {3}
        assert result["requests"] == len(server.requests)
        assert sum(1 for req in server.requests if req.address + req.count <= 100) <= 8

        r = await _acli("scan", "modbus", target, "-u", "3", "-t", "coil", "-r", "0-47")
        assert r.returncode == 0, r.stderr
        assert "coil:16-31" in r.stdout and "16 of 48 addresses answer" in r.stdout

        r = await _acli("scan", "modbus", target, "-u", "3", "-r", "400-420")
        assert r.returncode == 1  # nothing answers there
        r = await _acli("scan", "modbus", target, "--range", "9-3")
        assert r.returncode == 2 and "--range" in r.stderr
    finally:
        await server.stop()


async def test_read_address_modbus_without_a_schedule() -> None:
    server = await start_server()
    await server.set("hr", 40, registers_for(DataType.FLOAT32, ByteOrder.CDAB, 21.25))
    await server.set("coil", 5, [True])
    try:
        base = f"modbus://127.0.0.1:{server.port}/1"
        r = await _acli("read", "--address", f"{base}/hr:40?type=float32&order=CDAB", "--json")
        assert r.returncode == 0, r.stderr
        row = json.loads(r.stdout)
        assert row["value"] == 21.25 and row["quality"] == "good"
        assert row["response_ms"] is not None
        r = await _acli("read", "--address", f"{base}/coil:5")
        assert r.returncode == 0 and "= 1  [good]" in r.stdout, r.stdout
        r = await _acli("read", "--address", f"{base}/hr:40?type=float32&order=ABCD&scale=2")
        assert r.returncode == 0  # other byte order: another number, still read good
        assert "21.25" not in r.stdout
        r = await _acli("read", "--address", f"{base}/hr:4000")
        assert r.returncode == 1 and "bad:" in r.stdout
        assert {req.fc for req in server.requests} <= {1, 3}  # never a write
    finally:
        await server.stop()


async def test_read_address_snmp(tmp_path: Any) -> None:
    peer = Snmpd(tmp_path / "snmpd")
    peer.workdir.mkdir()
    peer.start()
    try:
        url = f"snmp://127.0.0.1:{peer.port}/1.3.6.1.2.1.1.3.0?community_env=OUTPOST_T_COMM"
        r = await _acli("read", "--address", url, "--json", env={"OUTPOST_T_COMM": COMMUNITY})
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["value"] > 0  # sysUpTime
        r = await _acli("read", "--address", url, env={"OUTPOST_T_COMM": "wrong"})
        assert r.returncode == 1
    finally:
        peer.stop()


def test_address_urls_are_checked_with_the_schedule_syntax() -> None:
    p = parse_point_url("bacnet://127.0.0.1:47809/1001/ai:1?local=127.0.0.1:47900")
    assert (p.protocol, str(p.point.address)) == ("bacnet", "analog-input:1")
    assert p.device.model_dump()["device_instance"] == 1001
    cases = {
        "http://x/1/hr:1": "modbus://, bacnet:// or snmp://",
        "modbus://h:502/hr:1": "UNIT",
        "modbus://h:502/1/hr:x": "address 'hr:x'",
        "modbus://h/1/hr:1?type=float33": "type",
        "modbus://h/1/hr:1?order=ABDC": "order",
        "modbus://h/1/hr:1?colour=red": "unknown option 'colour'",
        "snmp://h/1.3.6.1?version=3": "version",
        "modbus://h/1/hr:1?scale=nan": "scale",
    }
    for url, expected in cases.items():
        try:
            parse_point_url(url)
        except AdhocError as exc:
            assert expected in str(exc), (url, str(exc))
        else:
            raise AssertionError(f"{url} was accepted")
    r = _cli("read", "--address", "modbus://h/1/hr:x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = _cli("read")
    assert r.returncode == 2 and "POINT id or --address" in r.stderr


async def test_read_address_bacnet() -> None:
    from outpost.drivers.sim.bacnet_ahu import build_ahu_objects
    from tests.bacnet_device import RunningDevice, free_udp_port

    port = free_udp_port()
    async with RunningDevice(build_ahu_objects(setpoint=18.0), 1001, port):
        url = f"bacnet://127.0.0.1:{port}/1001/av:1?local=127.0.0.1:{free_udp_port()}"
        r = await _acli("read", "--address", url, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["value"] == 18.0  # the AHU's supply air setpoint
        missing = f"bacnet://127.0.0.1:{port}/1001/ai:99?local=127.0.0.1:{free_udp_port()}"
        r = await _acli("read", "--address", missing, "--json")
        assert r.returncode == 1 and json.loads(r.stdout)["quality"].startswith("bad:")
