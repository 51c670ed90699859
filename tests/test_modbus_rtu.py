"""Modbus RTU on a serial line (a socat pseudo-terminal pair and pymodbus' serial server) and
RTU over TCP (a pymodbus serial-server imitation): data types and byte orders, several unit
ids on one line, a silent unit, a line that disappears and comes back."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from pymodbus.framer import FramerType

from outpost.drivers.base import DriverContext, PointGroup
from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
from outpost.point_schedules.model import ByteOrder, DataType, Point
from outpost.point_schedules.quality import Quality
from tests.modbus_server import (
    ModbusTestServer,
    PtyPair,
    Tables,
    registers_for,
    start_serial_server,
    start_server,
)
from tests.modbus_server import point as mkpoint

NUMBERS = {
    DataType.INT16: -12345,
    DataType.UINT16: 54321,
    DataType.INT32: -123456789,
    DataType.UINT32: 3_000_000_001,
    DataType.INT64: -1_234_567_890_123,
    DataType.UINT64: 9_007_199_254_740_992,
    DataType.FLOAT32: 21.5,
    DataType.FLOAT64: -1234.0009765625,
}


def rtu(path: Path, unit: int = 1, **kw: object) -> ModbusDeviceConfig:
    base: dict[str, object] = {
        "protocol": "modbus",
        "transport": "rtu",
        "serial_port": str(path),
        "baudrate": 19200,
        "parity": "N",  # a pseudo-terminal refuses parity settings
        "unit_id": unit,
        "timeout": 0.3,
        "retries": 0,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
    }
    base.update(kw)
    return ModbusDeviceConfig.model_validate(base)


def rtu_over_tcp(port: int, unit: int = 1, **kw: object) -> ModbusDeviceConfig:
    base: dict[str, object] = {
        "protocol": "modbus",
        "transport": "rtu-over-tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit_id": unit,
        "timeout": 0.3,
        "retries": 0,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
    }
    base.update(kw)
    return ModbusDeviceConfig.model_validate(base)


def group_of(driver: ModbusDriver, points: list[Point]) -> PointGroup:
    group = PointGroup(device=driver.device_id, points=points, interval=1.0)
    driver.prepare(group)
    return group


@pytest.fixture
async def cable(tmp_path: Path) -> AsyncIterator[PtyPair]:
    pair = PtyPair(tmp_path / "ttyA", tmp_path / "ttyB")
    await pair.start()
    try:
        yield pair
    finally:
        await pair.stop()


async def load_every_type(server: ModbusTestServer, unit: int) -> tuple[list[Point], dict]:
    """Every data type in every byte order in hr and ir, plus coils/discrete inputs/bits."""
    points: list[Point] = []
    expected: dict[str, float] = {}
    for table in ("hr", "ir"):
        address = 0
        for data_type, number in NUMBERS.items():
            for order in ByteOrder:
                pid = f"{table}.{data_type.value}.{order.value}".lower()
                points.append(mkpoint(pid, f"{table}:{address}", data_type, order))
                regs = registers_for(data_type, order, number)
                await server.set(table, address, regs, unit=unit)
                expected[pid] = float(number)
                address += data_type.registers
    await server.set("coil", 3, [True], unit=unit)
    await server.set("di", 7, [True], unit=unit)
    await server.set("hr", 150, [0b1000_0000_0000_1001], unit=unit)
    points += [
        mkpoint("coil3", "coil:3", DataType.BOOL),
        mkpoint("coil4", "coil:4", DataType.BOOL),
        mkpoint("di7", "di:7", DataType.BOOL),
        mkpoint("bit0", "hr:150.0", DataType.BOOL),
        mkpoint("bit15", "hr:150.15", DataType.BOOL),
    ]
    expected |= {"coil3": 1, "coil4": 0, "di7": 1, "bit0": 1, "bit15": 1}
    return points, expected


def assert_decoded(points: list[Point], result: object, expected: dict[str, float]) -> None:
    got = {p.point_id: (result.value[i], result.quality[i]) for i, p in enumerate(points)}  # type: ignore[attr-defined]
    for pid, value in expected.items():
        assert got[pid] == (pytest.approx(value), Quality.GOOD), pid


async def test_every_type_and_byte_order_over_a_serial_line(cable: PtyPair) -> None:
    server = await start_serial_server(cable.b, {1: Tables()})
    driver = ModbusDriver("dev", rtu(cable.a))
    try:
        points, expected = await load_every_type(server, 1)
        group = group_of(driver, points)
        result = await driver.read(group)
        assert_decoded(points, result, expected)
        # hr 0..79 and hr 150 (beyond max_gap), ir 0..79, coils, discrete inputs
        assert len(server.reads()) == len(group.plan.requests) == 5
        # a write goes over the line too, and reads back
        sp = mkpoint("sp", "hr:160", DataType.FLOAT32, ByteOrder.CDAB, writable=True)
        await driver.write(sp, 19.5)
        assert await server.get("hr", 160, 2) == registers_for(
            DataType.FLOAT32, ByteOrder.CDAB, 19.5
        )
        assert await driver.read_back(sp) == pytest.approx(19.5)
    finally:
        await driver.close()
        await server.stop()


async def test_every_type_and_byte_order_rtu_over_tcp() -> None:
    server = await start_server({1: Tables(), 2: Tables()}, framer=FramerType.RTU)
    ctx = DriverContext()
    drivers = [ModbusDriver(f"d{u}", rtu_over_tcp(server.port, u), ctx) for u in (1, 2)]
    try:
        assert drivers[0].link is drivers[1].link  # one TCP connection to the serial server
        for unit, driver in zip((1, 2), drivers, strict=True):
            points, expected = await load_every_type(server, unit)
            result = await driver.read(group_of(driver, points))
            assert_decoded(points, result, expected)
    finally:
        for driver in drivers:
            await driver.close()
        await server.stop()


async def test_units_share_the_line_in_turn_and_a_silent_unit_costs_one_timeout(
    cable: PtyPair,
) -> None:
    # units 1 and 2 answer; unit 3 is configured but does not answer
    server = await start_serial_server(cable.b, {1: Tables(), 2: Tables()}, silent=(3,))
    ctx = DriverContext()
    drivers = {u: ModbusDriver(f"u{u}", rtu(cable.a, u), ctx) for u in (1, 2, 3)}
    try:
        assert len({id(d.link) for d in drivers.values()}) == 1  # one line, one client
        for unit in (1, 2):
            for address in (0, 40, 80):
                await server.set("hr", address, [unit * 1000 + address], unit=unit)
        # three requests per unit (gaps wider than max_gap)
        groups = {
            u: group_of(d, [mkpoint(f"r{a}", f"hr:{a}", device=d.device_id) for a in (0, 40, 80)])
            for u, d in drivers.items()
        }
        for poll in range(3):
            start = len(server.requests)
            results = await asyncio.gather(*(drivers[u].read(groups[u]) for u in (1, 2, 3)))
            for unit in (1, 2):
                assert list(results[unit - 1].value) == [unit * 1000 + a for a in (0, 40, 80)]
                assert set(results[unit - 1].quality) == {Quality.GOOD}
            # the silent unit times out on its first request and gives up the rest of its poll
            assert list(results[2].quality) == [Quality.BAD_TIMEOUT] * 3
            order = [r.unit for r in server.requests[start:]]
            assert order.count(1) == order.count(2) == 3, poll
            # first come, first served: the answering units alternate, request by request
            answering = [u for u in order if u != 3]
            assert answering == [1, 2, 1, 2, 1, 2], order
    finally:
        for driver in drivers.values():
            await driver.close()
        await server.stop()


async def test_a_line_that_disappears_and_comes_back(cable: PtyPair) -> None:
    server = await start_serial_server(cable.b, {1: Tables()})
    driver = ModbusDriver("dev", rtu(cable.a))
    group = group_of(driver, [mkpoint("a", "hr:1")])
    try:
        await server.set("hr", 1, [77])
        result = await driver.read(group)
        assert (result.value[0], result.quality[0]) == (77, Quality.GOOD)

        # the USB adapter is pulled: the line and the slave behind it are gone
        await server.stop()
        await cable.stop()
        result = await driver.read(group)
        assert result.quality[0] in (Quality.BAD_COMM_FAILURE, Quality.BAD_TIMEOUT)
        result = await driver.read(group)
        assert result.quality[0] == Quality.BAD_COMM_FAILURE
        assert math.isnan(result.value[0])
        assert not driver.connected

        # plugged back in at the same path: the driver reopens it by itself
        await cable.start()
        server = await start_serial_server(cable.b, {1: Tables()})
        await server.set("hr", 1, [78])
        deadline = time.monotonic() + 5
        while True:
            result = await driver.read(group)
            if result.quality[0] == Quality.GOOD or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert (result.value[0], result.quality[0]) == (78, Quality.GOOD)
        assert driver.connected
    finally:
        await driver.close()
        await server.stop()


async def test_rtu_over_tcp_units_take_turns_and_a_silent_unit_times_out() -> None:
    server = await start_server({1: Tables(), 2: Tables()}, framer=FramerType.RTU, silent=(3,))
    ctx = DriverContext()
    drivers = {u: ModbusDriver(f"u{u}", rtu_over_tcp(server.port, u), ctx) for u in (1, 2, 3)}
    try:
        for unit in (1, 2):
            await server.set("hr", 0, [unit], unit=unit)
            await server.set("hr", 40, [unit + 10], unit=unit)
        groups = {
            u: group_of(d, [mkpoint(f"r{a}", f"hr:{a}", device=d.device_id) for a in (0, 40)])
            for u, d in drivers.items()
        }
        start = len(server.requests)
        results = await asyncio.gather(*(drivers[u].read(groups[u]) for u in (1, 2, 3)))
        assert [list(r.value) for r in results[:2]] == [[1, 11], [2, 12]]
        assert list(results[2].quality) == [Quality.BAD_TIMEOUT] * 2
        order = [r.unit for r in server.requests[start:]]
        assert [u for u in order if u != 3] == [1, 2, 1, 2] and order.count(3) == 1
    finally:
        for driver in drivers.values():
            await driver.close()
        await server.stop()


def test_inter_frame_delay_follows_the_spec() -> None:
    def gap(**kw: object) -> float:
        return rtu(Path("/dev/ttyS0"), **kw).frame_gap

    # 3.5 characters of start + 8 data + parity + stop bits
    assert gap(baudrate=9600, parity="N") == pytest.approx(3.5 * 10 / 9600)
    assert gap(baudrate=19200, parity="E") == pytest.approx(3.5 * 11 / 19200)
    assert gap(baudrate=9600, parity="N", stopbits=2) == pytest.approx(3.5 * 11 / 9600)
    # fixed 1.75 ms above 19200 baud
    assert gap(baudrate=38400) == gap(baudrate=115200) == pytest.approx(0.00175)
    assert rtu_over_tcp(502).frame_gap == 0.0  # the serial server keeps its own line


def test_transport_keys_are_checked() -> None:
    with pytest.raises(ValidationError, match="needs serial_port"):
        ModbusDeviceConfig.model_validate({"protocol": "modbus", "transport": "rtu"})
    with pytest.raises(ValidationError, match="host and port are for"):
        ModbusDeviceConfig.model_validate(
            {"protocol": "modbus", "transport": "rtu", "serial_port": "/dev/ttyS0", "host": "h"}
        )
    with pytest.raises(ValidationError, match="baudrate, parity only apply"):
        ModbusDeviceConfig.model_validate(
            {"protocol": "modbus", "host": "h", "baudrate": 9600, "parity": "N"}
        )
    with pytest.raises(ValidationError, match='transport = "rtu-over-tcp" needs host'):
        ModbusDeviceConfig.model_validate({"protocol": "modbus", "transport": "rtu-over-tcp"})
    with pytest.raises(ValidationError, match="parity"):
        rtu(Path("/dev/ttyS0"), parity="X")
    cfg = rtu(Path("/dev/ttyUSB0"), baudrate=9600)
    assert cfg.line == "/dev/ttyUSB0" and cfg.transport == "rtu"
    # defaults per the serial-line spec: 19200 baud, even parity, one stop bit
    spec = ModbusDeviceConfig.model_validate(
        {"protocol": "modbus", "transport": "rtu", "serial_port": "/dev/ttyS0"}
    )
    assert (spec.baudrate, spec.parity, spec.stopbits, spec.bytesize) == (19200, "E", 1, 8)
