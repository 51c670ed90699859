"""SNMP driver against real peers: Debian's net-snmp ``snmpd`` and the pysnmp PDU simulator."""

# ruff: noqa: F811  (fixtures imported from snmp_peer are redefined as parameters)

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from pydantic import ValidationError
from snmp_peer import (  # noqa: F401  (pytest fixtures)
    COMMUNITY,
    V3_AUTH_KEY,
    V3_PRIV_KEY,
    V3_USER,
    Snmpd,
    pdu_sim,
    snmpd,
    start_pdu_sim,
)

from outpost.drivers.base import DriverContext, PointGroup, PollResult, WriteError
from outpost.drivers.registry import config_model, driver_class
from outpost.drivers.sim import snmp_pdu
from outpost.drivers.sim.snmp_pdu import PDU_OID, outlet_oid
from outpost.drivers.snmp import SnmpDeviceConfig, SnmpDriver
from outpost.point_schedules.model import Point, SnmpAddress
from outpost.point_schedules.quality import Quality

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_IN_OCTETS_1 = "1.3.6.1.2.1.2.2.1.10.1"
IF_OPER_STATUS_1 = "1.3.6.1.2.1.2.2.1.8.1"
NOT_THERE = "1.3.6.1.2.1.2.2.1.10.987654"


def point(pid: str, oid: str, **kw: Any) -> Point:
    return Point(pid, "dev", SnmpAddress(oid), **kw)


@pytest.fixture
async def context() -> AsyncIterator[DriverContext]:
    ctx = DriverContext()
    yield ctx
    await ctx.aclose()


def v2c(port: int, **kw: Any) -> SnmpDeviceConfig:
    kw.setdefault("community_env", "OUTPOST_TEST_COMMUNITY")
    kw.setdefault("version", "2c")
    return SnmpDeviceConfig(host="127.0.0.1", port=port, **kw)


def v3(port: int, **kw: Any) -> SnmpDeviceConfig:
    return SnmpDeviceConfig(
        host="127.0.0.1",
        port=port,
        version="3",
        user=kw.pop("user", V3_USER),
        auth_protocol="SHA",
        auth_key_env="OUTPOST_TEST_AUTH",
        priv_protocol="AES",
        priv_key_env="OUTPOST_TEST_PRIV",
        **kw,
    )


async def read_once(driver: SnmpDriver, points: list[Point]) -> tuple[PointGroup, PollResult]:
    group = PointGroup("dev", points, 5.0)
    driver.prepare(group)
    return group, await driver.read(group)


def qualities(result: PollResult) -> list[Quality]:
    return [Quality(q) for q in result.quality]


async def test_registry_finds_snmp_driver() -> None:
    assert driver_class("snmp") is SnmpDriver
    assert config_model("snmp") is SnmpDeviceConfig


async def test_v2c_get_from_snmpd(
    snmpd: Snmpd, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
    driver = SnmpDriver("dev", v2c(snmpd.port), context)
    points = [
        point("uptime", SYS_UPTIME, scale=0.01, units="s"),
        point("lo_in", IF_IN_OCTETS_1),
        point("lo_status", IF_OPER_STATUS_1),
        point("missing", NOT_THERE),
    ]
    _, result = await read_once(driver, points)
    assert qualities(result) == [Quality.GOOD, Quality.GOOD, Quality.GOOD, Quality.BAD_CONFIG_ERROR]
    assert 0 < result.value[0] < 3600  # the test's snmpd started seconds ago; scale applied
    assert result.value[1] >= 0
    assert result.value[2] == 1.0  # lo is up
    assert math.isnan(result.value[3])
    assert all(t > 0 for t in result.ts)
    assert driver.connected


async def test_v3_authpriv_from_snmpd(
    snmpd: Snmpd, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_AUTH", V3_AUTH_KEY)
    monkeypatch.setenv("OUTPOST_TEST_PRIV", V3_PRIV_KEY)
    driver = SnmpDriver("dev", v3(snmpd.port), context)
    _, result = await read_once(
        driver, [point("uptime", SYS_UPTIME), point("st", IF_OPER_STATUS_1)]
    )
    assert qualities(result) == [Quality.GOOD, Quality.GOOD]
    assert result.value[1] == 1.0


async def test_wrong_community_gives_bad_quality_and_one_clear_log(
    snmpd: Snmpd, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", "not-the-community")
    driver = SnmpDriver("dev", v2c(snmpd.port, timeout=0.3, retries=0), context)
    group = PointGroup("dev", [point("uptime", SYS_UPTIME), point("st", IF_OPER_STATUS_1)], 5.0)
    driver.prepare(group)
    with structlog.testing.capture_logs() as logs:
        first = await driver.read(group)
        second = await driver.read(group)
    for result in (first, second):
        assert qualities(result) == [Quality.BAD_COMM_FAILURE] * 2
        assert all(math.isnan(v) for v in result.value)
    warnings = [e for e in logs if e["event"] == "snmp.no_response"]
    assert len(warnings) == 1, "one line per outage, not one per poll"
    assert "credentials are wrong" in warnings[0]["hint"]
    assert "OUTPOST_TEST_COMMUNITY" in warnings[0]["hint"]
    assert not driver.connected


async def test_wrong_v3_key_gives_bad_quality(
    snmpd: Snmpd, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_AUTH", "wrong-auth-key")
    monkeypatch.setenv("OUTPOST_TEST_PRIV", V3_PRIV_KEY)
    driver = SnmpDriver("dev", v3(snmpd.port, timeout=0.3, retries=0), context)
    _, result = await read_once(driver, [point("uptime", SYS_UPTIME)])
    assert Quality(result.quality[0]) >= Quality.BAD
    assert math.isnan(result.value[0])


async def test_missing_secret_is_a_config_error_naming_the_key(
    context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTPOST_TEST_COMMUNITY", raising=False)
    driver = SnmpDriver("dev", v2c(1), context)
    with structlog.testing.capture_logs() as logs:
        _, result = await read_once(driver, [point("uptime", SYS_UPTIME)])
    assert qualities(result) == [Quality.BAD_CONFIG_ERROR]
    errors = [e for e in logs if e["event"] == "snmp.config_error"]
    assert errors and "community_env" in errors[0]["error"]
    assert "OUTPOST_TEST_COMMUNITY" in errors[0]["error"]


async def test_community_from_file(snmpd: Snmpd, context: DriverContext, tmp_path: Any) -> None:
    secret = tmp_path / "community"
    secret.write_text(COMMUNITY + "\n")
    cfg = SnmpDeviceConfig(host="127.0.0.1", port=snmpd.port, community_file=secret)
    _, result = await read_once(SnmpDriver("dev", cfg, context), [point("u", SYS_UPTIME)])
    assert qualities(result) == [Quality.GOOD]


async def test_device_down_then_recovery(
    snmpd: Snmpd, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
    driver = SnmpDriver("dev", v2c(snmpd.port, timeout=0.3, retries=0), context)
    group = PointGroup("dev", [point("uptime", SYS_UPTIME), point("st", IF_OPER_STATUS_1)], 5.0)
    driver.prepare(group)
    assert qualities(await driver.read(group)) == [Quality.GOOD] * 2
    snmpd.stop()
    down = await driver.read(group)
    assert qualities(down) == [Quality.BAD_COMM_FAILURE] * 2
    assert not driver.connected
    snmpd.start()
    with structlog.testing.capture_logs() as logs:
        back = await driver.read(group)
    assert qualities(back) == [Quality.GOOD] * 2
    assert driver.connected
    assert any(e["event"] == "snmp.device_answering" for e in logs)


async def test_too_big_splits_and_remembers_smaller_size(
    pdu_sim: Any, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator answers tooBig to GETs of more than 8 OIDs, like a small-buffer PDU."""
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
    driver = SnmpDriver("dev", v2c(pdu_sim.port, max_varbinds=20), context)
    points = [point(f"o{n}", outlet_oid(3, n), scale=0.001, units="A") for n in range(1, 25)]
    points += [point("volts", f"{PDU_OID}.1.2.0", scale=0.1), point("temp", f"{PDU_OID}.1.8.0")]
    with structlog.testing.capture_logs() as logs:
        group, result = await read_once(driver, points)
    assert qualities(result) == [Quality.GOOD] * len(points)
    assert all(0.2 < v < 2.0 for v in result.value[:24])  # mA scaled to A
    assert 200 < result.value[24] < 260  # decivolts scaled to V
    assert 20 < result.value[25] < 30  # numeric OctetString parsed
    assert group.plan.batch <= 8
    assert any(e["event"] == "snmp.too_big" for e in logs)
    instrum_requests_before = pdu_sim_requests(pdu_sim)
    again = await driver.read(group)
    assert qualities(again) == [Quality.GOOD] * len(points)
    # The remembered size is used straight away: no more tooBig round trips.
    assert pdu_sim_requests(pdu_sim) - instrum_requests_before == len(group.plan.batches)


def pdu_sim_requests(sim: Any) -> int:
    return int(sim.model.get_requests)


async def test_text_value_and_missing_object_are_bad_for_that_point_only(
    pdu_sim: Any, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
    driver = SnmpDriver("dev", v2c(pdu_sim.port), context)
    points = [
        point("name", f"{PDU_OID}.1.1.0"),  # "sim-pdu-a": not a number
        point("no_such", f"{PDU_OID}.9.9.0"),
        point("count", f"{PDU_OID}.1.6.0", min=0, max=10),  # 24 outlets > max
        point("energy", f"{PDU_OID}.1.5.0"),  # Counter64
    ]
    _, result = await read_once(driver, points)
    assert qualities(result) == [
        Quality.BAD_CONFIG_ERROR,
        Quality.BAD_CONFIG_ERROR,
        Quality.UNCERTAIN_OUT_OF_RANGE,
        Quality.GOOD,
    ]
    assert result.value[2] == 24.0


async def test_v1_no_such_name_drops_only_that_oid(
    pdu_sim: Any, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
    driver = SnmpDriver("dev", v2c(pdu_sim.port, version="1"), context)
    points = [point("count", f"{PDU_OID}.1.6.0"), point("x", f"{PDU_OID}.9.9.0")]
    points.append(point("limit", f"{PDU_OID}.1.7.0"))
    _, result = await read_once(driver, points)
    assert qualities(result) == [Quality.GOOD, Quality.BAD_CONFIG_ERROR, Quality.GOOD]
    assert result.value[0] == 24.0


async def test_v3_against_simulator(
    pdu_sim: Any, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_AUTH", snmp_pdu.V3_AUTH_KEY)
    monkeypatch.setenv("OUTPOST_TEST_PRIV", snmp_pdu.V3_PRIV_KEY)
    driver = SnmpDriver("dev", v3(pdu_sim.port, user=snmp_pdu.V3_USER), context)
    _, result = await read_once(driver, [point("count", f"{PDU_OID}.1.6.0")])
    assert qualities(result) == [Quality.GOOD]
    assert result.value[0] == 24.0


async def test_write_set_and_read_back(
    pdu_sim: Any, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
    driver = SnmpDriver("dev", v2c(pdu_sim.port), context)
    limit = point("limit", f"{PDU_OID}.1.7.0", writable=True, scale=0.001, units="kW")
    state = point("outlet3", outlet_oid(5, 3), writable=True)
    await driver.write(limit, 5.5)
    assert pdu_sim.model.power_limit_w == 5500
    assert await driver.read_back(limit) == pytest.approx(5.5)
    await driver.write(state, 2)
    assert pdu_sim.model.outlet_on[2] is False
    _, result = await read_once(driver, [point("i3", outlet_oid(3, 3))])
    assert result.value[0] == 0.0  # outlet switched off draws nothing

    with pytest.raises(WriteError, match="not writable"):
        await driver.write(point("ro", f"{PDU_OID}.1.7.0"), 1.0)
    with pytest.raises(WriteError, match="wrongValue"):
        await driver.write(state, 7)
    with pytest.raises(WriteError, match="notWritable"):
        await driver.write(point("volts", f"{PDU_OID}.1.2.0", writable=True), 1.0)
    with pytest.raises(WriteError, match="integer"):
        await driver.write(state, 1.5)


def test_config_validation() -> None:
    assert SnmpDeviceConfig(host="h", version=2, community_env="X").version == "2c"  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="community"):
        SnmpDeviceConfig(host="h", version="2c")
    with pytest.raises(ValidationError, match="user"):
        SnmpDeviceConfig(host="h", version="3")
    with pytest.raises(ValidationError, match="priv_protocol needs auth_protocol"):
        SnmpDeviceConfig(host="h", version="3", user="u", priv_protocol="AES", priv_key_env="P")
    with pytest.raises(ValidationError, match="auth_key"):
        SnmpDeviceConfig(host="h", version="3", user="u", auth_protocol="SHA256")
    with pytest.raises(ValidationError, match="extra"):
        SnmpDeviceConfig(host="h", community_env="X", community="public")  # type: ignore[call-arg]
    cfg = SnmpDeviceConfig(
        host="h", version="3", user="u", auth_protocol="sha-256", auth_key_env="A"
    )
    assert cfg.auth_protocol == "SHA256"


async def test_simulator_scenario_changes_values(
    context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
    sim = await start_pdu_sim()
    try:
        driver = SnmpDriver("dev", v2c(sim.port), context)
        group = PointGroup(
            "dev", [point("v", f"{PDU_OID}.1.2.0"), point("w", f"{PDU_OID}.1.4.0")], 5
        )
        driver.prepare(group)
        normal = await driver.read(group)
        assert normal.value[0] > 2000 and normal.value[1] > 1000
        sim.model.scenario = "MAINS_FAILURE"
        failed = await driver.read(group)
        assert list(failed.value) == [0.0, 0.0]
    finally:
        sim.stop.set()
        await asyncio.wait_for(sim.task, 5)


async def test_two_v3_devices_same_user_different_keys(
    snmpd: Snmpd, pdu_sim: Any, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sites often reuse one v3 user name with per-device keys; each device keeps its own."""
    monkeypatch.setenv("OUTPOST_TEST_AUTH", V3_AUTH_KEY)
    monkeypatch.setenv("OUTPOST_TEST_PRIV", V3_PRIV_KEY)
    monkeypatch.setenv("OUTPOST_TEST_AUTH2", snmp_pdu.V3_AUTH_KEY)
    monkeypatch.setenv("OUTPOST_TEST_PRIV2", snmp_pdu.V3_PRIV_KEY)
    assert V3_USER == snmp_pdu.V3_USER and V3_AUTH_KEY != snmp_pdu.V3_AUTH_KEY
    first = SnmpDriver("a", v3(snmpd.port), context)
    second_cfg = v3(pdu_sim.port).model_copy(
        update={"auth_key_env": "OUTPOST_TEST_AUTH2", "priv_key_env": "OUTPOST_TEST_PRIV2"}
    )
    second = SnmpDriver("b", second_cfg, context)
    for _ in range(2):
        _, r1 = await read_once(first, [point("uptime", SYS_UPTIME)])
        _, r2 = await read_once(second, [point("count", f"{PDU_OID}.1.6.0")])
        assert qualities(r1) == [Quality.GOOD]
        assert qualities(r2) == [Quality.GOOD] and r2.value[0] == 24.0
