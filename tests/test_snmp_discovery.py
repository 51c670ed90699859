"""SNMP discovery against a real ``snmpd``: the skeleton it proposes is valid and readable."""

# ruff: noqa: F811  (fixtures imported from snmp_peer are redefined as parameters)

from __future__ import annotations

import csv
import io

import pytest
from snmp_peer import COMMUNITY, Snmpd, free_udp_port, snmpd  # noqa: F401

from outpost.drivers.base import DriverContext, PointGroup
from outpost.drivers.snmp import SnmpDeviceConfig, SnmpDriver
from outpost.drivers.snmp.discovery import DiscoveryError, discover_snmp
from outpost.point_schedules.addresses import parse_address
from outpost.point_schedules.model import Point
from outpost.point_schedules.quality import Quality
from outpost.point_schedules.skeleton import SKELETON_COLUMNS, write_skeleton


async def test_discovery_on_snmpd_writes_a_readable_skeleton(
    snmpd: Snmpd, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages: list[str] = []
    found = await discover_snmp(
        "127.0.0.1", snmpd.port, community=COMMUNITY, progress=messages.append
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
