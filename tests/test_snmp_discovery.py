"""SNMP discovery against a real ``snmpd``: the skeleton it proposes is valid and readable."""

# ruff: noqa: F811  (fixtures imported from snmp_peer are redefined as parameters)

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from snmp_peer import COMMUNITY, Snmpd, free_udp_port, snmpd, start_pdu_sim  # noqa: F401

from outpost.agent.core.config import load_config
from outpost.drivers.base import DriverContext, PointGroup
from outpost.drivers.sim.snmp_pdu import PDU_OID
from outpost.drivers.snmp import SnmpDeviceConfig, SnmpDriver
from outpost.drivers.snmp.discovery import (
    DiscoveryError,
    config_snippet,
    discover_snmp,
    parse_oid,
    parse_target,
)
from outpost.point_schedules.addresses import parse_address
from outpost.point_schedules.model import Point
from outpost.point_schedules.quality import Quality
from outpost.point_schedules.skeleton import SKELETON_COLUMNS, write_skeleton


async def test_discovery_on_snmpd_writes_a_readable_skeleton(
    snmpd: Snmpd, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages: list[str] = []
    # Net-SNMP's own enterprise subtree is its agent's module registry, whose rows come and
    # go; the enterprise walk is tested on the simulated PDU below.
    found = await discover_snmp(
        "127.0.0.1", snmpd.port, community=COMMUNITY, enterprise=False, progress=messages.append
    )
    assert any("ifTable" in m for m in messages), "progress is reported while walking"

    by_name = {p.name: p for p in found}
    assert "sys_uptime" in by_name
    lo = [p for p in found if p.name.startswith("lo.")]
    assert {"lo.oper_status", "lo.in_octets", "lo.out_octets"} <= {p.name for p in lo}
    assert by_name["lo.oper_status"].address == "1.3.6.1.2.1.2.2.1.8.1"
    # Linux snmpd has ifXTable: the 64-bit counters are preferred.
    assert by_name["lo.in_octets"].address.startswith("1.3.6.1.2.1.31.1.1.1.6.")
    device = found[0].device
    assert all(p.device == device for p in found) and device  # suggested from sysName

    out = io.StringIO()
    count = write_skeleton(found, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == len(rows) == len(found)
    assert tuple(rows[0]) == SKELETON_COLUMNS
    assert len({r["point_id"] for r in rows}) == len(rows)
    points = []
    for r in rows:
        address = parse_address("snmp", r["address"])  # the schedule parser accepts every row
        points.append(Point(r["point_id"], r["device"], address))

    # Every discovered point reads good from the device it was discovered on.
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
    ctx = DriverContext()
    try:
        cfg = SnmpDeviceConfig(
            host="127.0.0.1", port=snmpd.port, community_env="OUTPOST_TEST_COMMUNITY"
        )
        driver = SnmpDriver(device, cfg, ctx)
        group = PointGroup(device, points, 5.0)
        driver.prepare(group)
        result = await driver.read(group)
        assert [Quality(q) for q in result.quality] == [Quality.GOOD] * len(points)
    finally:
        await ctx.aclose()


async def test_discovery_without_answer_says_what_to_check() -> None:
    port = free_udp_port()  # nothing listens there
    with pytest.raises(DiscoveryError, match="community"):
        await discover_snmp("127.0.0.1", port, community="public", timeout=0.3)


async def test_discovery_on_the_simulated_pdu_finds_its_readings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 12: more than sysUpTime on the simulated PDU: the enterprise subtree named by
    sysObjectID, ENTITY-SENSOR-MIB, extra --walk subtrees; the configured id; a config block
    the agent accepts; every proposed point reads good."""
    sim = await start_pdu_sim(max_response_varbinds=8)
    try:
        messages: list[str] = []
        found = await discover_snmp(
            "127.0.0.1",
            sim.port,
            community=COMMUNITY,
            device_id="pdu-a",
            walk=[
                ".1.3.6.1.2.1.1",
                "1.3.6.1.4.1.99999.1.2",
            ],  # system group; a part of the vendor's
            progress=messages.append,
        )
        assert {p.device for p in found} == {"pdu-a"}
        by_address = {p.address: p for p in found}
        assert len(by_address) == len(found)  # the overlapping walks propose each OID once
        # the vendor subtree: input voltage, frequency, power, energy, the text temperature,
        # every outlet's current, power and state
        assert any("1.3.6.1.4.1.99999" in m for m in messages)
        for oid in ("1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.7.0", "1.8.0"):
            assert f"{PDU_OID}.{oid}" in by_address, oid
        outlets = sim.model.outlets
        for column in (3, 4, 5):
            assert {f"{PDU_OID}.2.1.{column}.{n}" for n in range(1, outlets + 1)} <= set(by_address)
        assert f"{PDU_OID}.2.1.2.1" not in by_address  # an outlet's name is not a number
        assert by_address[f"{PDU_OID}.1.8.0"].description.startswith("OctetString")
        # ENTITY-SENSOR-MIB, named by entPhysicalName, with the scale it needs
        sensor = by_address["1.3.6.1.2.1.99.1.1.1.4.1"]
        assert sensor.name == "sensor.inlet-temp" and sensor.units == "degC"
        assert "1e-1" in sensor.description
        assert by_address["1.3.6.1.2.1.99.1.1.1.4.2"].units == "V"
        assert by_address["1.3.6.1.2.1.1.3.0"].name == "sys_uptime"
        assert len(found) > 3 * outlets

        # the block to paste passes the agent's config loader
        snippet = config_snippet("pdu-a", "127.0.0.1", sim.port, "PDU_COMMUNITY")
        config = tmp_path / "agent.toml"
        config.write_text(f'[agent]\nid = "gw"\n\n{snippet}', "utf-8")
        device = load_config(config, check_files=False).devices["pdu-a"]
        assert isinstance(device, SnmpDeviceConfig)
        assert (device.host, device.port, device.community_env) == (
            "127.0.0.1",
            sim.port,
            "PDU_COMMUNITY",
        )

        # every proposed row is a valid schedule row that reads good through the driver
        out = io.StringIO()
        write_skeleton(found, out)
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        points = [
            Point(r["point_id"], r["device"], parse_address("snmp", r["address"])) for r in rows
        ]
        monkeypatch.setenv("PDU_COMMUNITY", COMMUNITY)
        ctx = DriverContext()
        try:
            driver = SnmpDriver("pdu-a", device, ctx)
            group = PointGroup("pdu-a", points, 5.0)
            driver.prepare(group)
            result = await driver.read(group)
            bad = [p.point_id for p, q in zip(points, result.quality, strict=True) if q]
            assert bad == []
        finally:
            await ctx.aclose()
    finally:
        sim.stop.set()
        await sim.task


def test_target_and_oid_parsing() -> None:
    assert parse_target("10.0.7.11") == ("10.0.7.11", 161)
    assert parse_target("10.0.7.11:16161") == ("10.0.7.11", 16161)
    assert parse_target("pdu-a.example") == ("pdu-a.example", 161)
    assert parse_target("[fe80::1]:1161") == ("fe80::1", 1161)
    assert parse_target("fe80::1") == ("fe80::1", 161)
    for bad in ("", ":161", "h:0", "h:x", "[fe80::1", "h:70000"):
        with pytest.raises(ValueError):
            parse_target(bad)
    assert parse_oid(".1.3.6.1.4.1.318") == "1.3.6.1.4.1.318"
    for bad in ("1", "ifTable", "1.3.x"):
        with pytest.raises(ValueError, match="numeric OID"):
            parse_oid(bad)
