"""ModbusDriver against real pymodbus TCP servers (in the test's event loop, ephemeral ports)."""

from __future__ import annotations

import asyncio
import math
import struct
import time

import pytest
from structlog.testing import capture_logs

from outpost.drivers.base import DriverContext, PointGroup, WriteError
from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
from outpost.point_schedules.model import ByteOrder, DataType, Point
from outpost.point_schedules.quality import Quality
from tests.modbus_server import Tables, free_port, registers_for, start_server
from tests.modbus_server import point as mkpoint

NUMBERS = {
    DataType.INT16: -12345,
    DataType.UINT16: 54321,
    DataType.INT32: -123456789,
    DataType.UINT32: 3_000_000_001,
    DataType.INT64: -1_234_567_890_123,
    DataType.UINT64: 9_007_199_254_740_993 - 1,  # exactly representable as a double
    DataType.FLOAT32: 21.5,
    DataType.FLOAT64: -1234.0009765625,
}


def config(port: int, **kw: object) -> ModbusDeviceConfig:
    base: dict[str, object] = {
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "timeout": 0.5,
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


async def test_every_type_and_byte_order_decodes() -> None:
    server = await start_server()
    driver = ModbusDriver("dev", config(server.port))
    points: list[Point] = []
    expected: dict[str, float] = {}
    for table in ("hr", "ir"):
        address = 0
        for data_type, number in NUMBERS.items():
            for order in ByteOrder:
                pid = f"{table}.{data_type.value}.{order.value}".lower()
                points.append(mkpoint(pid, f"{table}:{address}", data_type, order))
                await server.set(table, address, registers_for(data_type, order, number))
                expected[pid] = float(number)
                address += data_type.registers
    # bits: coils, discrete inputs, bitN of a register, bool over a whole register
    await server.set("coil", 3, [True])
    await server.set("di", 7, [True])
    await server.set("hr", 150, [0b1000_0000_0000_1001])
    await server.set("hr", 151, [0])
    points += [
        mkpoint("coil3", "coil:3", DataType.BOOL),
        mkpoint("coil4", "coil:4", DataType.BOOL),
        mkpoint("di7", "di:7", DataType.BOOL),
        mkpoint("bit0", "hr:150.0", DataType.BOOL),
        mkpoint("bit1", "hr:150.1", DataType.BOOL),
        mkpoint("bit15", "hr:150.15", DataType.BOOL),
        mkpoint("reg_bool", "hr:151", DataType.BOOL),
    ]
    expected |= {"coil3": 1, "coil4": 0, "di7": 1, "bit0": 1, "bit1": 0, "bit15": 1, "reg_bool": 0}
    # scale/offset, range check, NaN
    await server.set("hr", 160, [2150])
    await server.set("hr", 161, registers_for(DataType.FLOAT32, ByteOrder.ABCD, math.nan))
    await server.set("hr", 163, [500])
    points += [
        mkpoint("scaled", "hr:160", DataType.INT16, scale=0.01, offset=-1.0),
        mkpoint("nan", "hr:161", DataType.FLOAT32),
        mkpoint("high", "hr:163", DataType.UINT16, min=0, max=100),
        mkpoint("same_reg_signed", "hr:163", DataType.INT16),  # overlapping views of a register
    ]
    expected |= {"scaled": 20.5, "high": 500, "same_reg_signed": 500}
    group = group_of(driver, points)
    before = time.time()
    result = await driver.read(group)
    after = time.time()
    got = {
        p.point_id: (result.value[i], result.quality[i], result.ts[i]) for i, p in enumerate(points)
    }
    for pid, value in expected.items():
        v, q, ts = got[pid]
        assert v == pytest.approx(value), pid
        assert q == (Quality.UNCERTAIN_OUT_OF_RANGE if pid == "high" else Quality.GOOD), pid
        assert before <= ts <= after
    assert math.isnan(got["nan"][0]) and got["nan"][1] == Quality.BAD_DEVICE_ERROR
    # hr 0..79 and hr 150..164 (gap 70 > max_gap), ir 0..79, coils, discrete inputs
    assert len(group.plan.requests) == 5
    assert len(server.reads()) == 5
    await driver.close()
    await server.stop()


async def test_sparse_map_uses_few_requests_as_seen_by_the_server() -> None:
    server = await start_server({1: Tables(hr=((0, 2000),), ir=((0, 100),))})
    driver = ModbusDriver("dev", config(server.port, max_gap=10, max_registers_per_request=100))
    addresses = [0, 5, 9, 30, 40, 200, 205, 299, 1000, 1001, 1500]
    points = [mkpoint(f"p{a}", f"hr:{a}", DataType.FLOAT32) for a in addresses]
    group = group_of(driver, points)
    # 0..10 | 30..41 | 200..206 | 299..300 (gap 93 > 10) | 1000..1002 | 1500..1501
    assert [(r.start, r.count) for r in group.plan.requests] == [
        (0, 11),
        (30, 12),
        (200, 7),
        (299, 2),
        (1000, 3),
        (1500, 2),
    ]
    for _ in range(3):
        result = await driver.read(group)
        assert all(q == Quality.GOOD for q in result.quality)
    reads = server.reads()
    assert len(reads) == 3 * 6
    assert [(r.address, r.count) for r in reads[:6]] == [
        (r.start, r.count) for r in group.plan.requests
    ]
    await driver.close()
    await server.stop()


async def test_illegal_address_spoils_only_its_points_and_is_logged_once() -> None:
    # hr 40..43 do not exist on the device; ir is fine
    server = await start_server({1: Tables(hr=((0, 40), (44, 60)), ir=((0, 10),))})
    driver = ModbusDriver("dev", config(server.port))
    hr_points = [mkpoint(f"h{a}", f"hr:{a}") for a in (0, 10, 20, 30, 39, 42, 45, 50, 60, 70)]
    points = [*hr_points, mkpoint("i0", "ir:0"), mkpoint("i5", "ir:5")]
    for a in (0, 10, 20, 30, 39, 45, 50, 60, 70):
        await server.set("hr", a, [a + 1000])
    group = group_of(driver, points)
    assert len(group.plan.requests) == 2  # hr 0..70 and ir 0..5 before the device told us
    with capture_logs() as logs:
        for _ in range(3):
            result = await driver.read(group)
            for i, p in enumerate(points):
                if p.point_id == "h42":
                    assert result.quality[i] == Quality.BAD_CONFIG_ERROR
                    assert math.isnan(result.value[i])
                else:
                    assert result.quality[i] == Quality.GOOD, p.point_id
                    if p.point_id.startswith("h"):
                        assert result.value[i] == int(p.point_id[1:]) + 1000
    bad = [e for e in logs if e["event"] == "modbus.bad_address"]
    assert len(bad) == 1 and bad[0]["points"] == ["h42"] and bad[0]["address"] == "hr:42"
    # after isolating, a poll needs only the split requests: no more bisecting
    per_poll = len(group.plan.requests)
    n = len(server.reads())
    await driver.read(group)
    assert len(server.reads()) - n == per_poll
    assert per_poll <= 5
    await driver.close()
    await server.stop()


async def test_requests_merge_again_around_an_isolated_bad_address_and_after_it_heals() -> None:
    """Issue 13 item 7: once the bad address stands alone, the other points are merged again
    (no reload); when the device later accepts the address, it merges back in."""
    server = await start_server({1: Tables(hr=((0, 40), (44, 60)), ir=((0, 10),))})
    port = server.port
    driver = ModbusDriver("dev", config(port))
    addresses = (0, 10, 20, 30, 39, 42, 45, 50, 60, 70)
    points = [*(mkpoint(f"h{a}", f"hr:{a}") for a in addresses), mkpoint("i5", "ir:5")]
    group = group_of(driver, points)
    spans = lambda: [(r.table, r.start, r.count) for r in group.plan.requests]  # noqa: E731
    assert spans() == [("hr", 0, 71), ("ir", 5, 1)]
    result = await driver.read(group)
    assert result.quality[addresses.index(42)] == Quality.BAD_CONFIG_ERROR
    # the bisection's pieces are gone: before the bad address, the bad address, after it
    assert spans() == [("hr", 0, 40), ("hr", 42, 1), ("hr", 45, 26), ("ir", 5, 1)]
    n = len(server.reads())
    result = await driver.read(group)
    assert len(server.reads()) - n == 4
    assert [q for i, q in enumerate(result.quality) if i != addresses.index(42)] == [
        Quality.GOOD
    ] * 10

    # the device is reconfigured and now has hr 40..43: the isolated request heals and merges
    await server.stop()
    server = await start_server(port=port)
    await server.set("hr", 42, [4242])
    deadline = time.monotonic() + 5
    while True:
        result = await driver.read(group)
        if result.quality[addresses.index(42)] == Quality.GOOD or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert result.value[addresses.index(42)] == 4242
    assert spans() == [("hr", 0, 71), ("ir", 5, 1)]
    await driver.close()
    await server.stop()


async def test_device_down_then_back_on_the_same_port() -> None:
    port = free_port()
    driver = ModbusDriver("dev", config(port))
    points = [mkpoint("a", "hr:1"), mkpoint("b", "coil:1", DataType.BOOL)]
    group = group_of(driver, points)
    with capture_logs() as logs:
        for _ in range(3):
            result = await driver.read(group)
            assert list(result.quality) == [Quality.BAD_COMM_FAILURE] * 2
            assert all(math.isnan(v) for v in result.value)
            assert all(ts > 0 for ts in result.ts)
            await asyncio.sleep(0.06)
    assert not driver.connected
    assert len([e for e in logs if e["event"] == "modbus.connect_failed"]) == 1

    server = await start_server(port=port)
    await server.set("hr", 1, [77])
    deadline = time.monotonic() + 3
    while True:
        result = await driver.read(group)
        if result.quality[0] == Quality.GOOD or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert result.value[0] == 77 and result.quality[1] == Quality.GOOD
    assert driver.connected

    # the server goes away mid-life: comm failure, then recovery again
    await server.stop()
    deadline = time.monotonic() + 3
    while True:
        result = await driver.read(group)
        if result.quality[0] != Quality.GOOD or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert list(result.quality) == [Quality.BAD_COMM_FAILURE] * 2
    server = await start_server(port=port)
    await server.set("hr", 1, [78])
    deadline = time.monotonic() + 3
    while True:
        result = await driver.read(group)
        if result.quality[0] == Quality.GOOD or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert result.value[0] == 78
    await driver.close()
    await server.stop()


async def test_reconnect_backoff_doubles_and_is_capped() -> None:
    driver = ModbusDriver("dev", config(free_port(), reconnect_min=0.01, reconnect_max=0.04))
    group = group_of(driver, [mkpoint("a", "hr:0")])
    delays: list[float] = []
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        await driver.read(group)
        if not delays or delays[-1] != driver.reconnect_delay:
            delays.append(driver.reconnect_delay)
        await asyncio.sleep(0.002)
    assert delays[:3] == [0.01, 0.02, 0.04]
    assert max(delays) == 0.04
    # with the cap at 40 ms, 0.6 s allows roughly 15 attempts, not one per read
    attempts = driver.link.connect_attempts
    assert 5 <= attempts <= 25
    await driver.close()


async def test_timeout_marks_request_bad_timeout() -> None:
    """A peer that accepts TCP but never answers Modbus (a plain asyncio server of our own)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        await asyncio.sleep(5)
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    driver = ModbusDriver("dev", config(port, timeout=0.2))
    group = group_of(driver, [mkpoint("a", "hr:0"), mkpoint("b", "ir:0")])
    result = await driver.read(group)
    assert list(result.quality) == [Quality.BAD_TIMEOUT, Quality.BAD_TIMEOUT]
    await driver.close()
    srv.close()


WRITE_VALUES = {
    DataType.INT16: -321.0,
    DataType.UINT16: 65000.0,
    DataType.INT32: -70000.0,
    DataType.UINT32: 4_000_000_000.0,
    DataType.INT64: -5_000_000_000.0,
    DataType.UINT64: 2.0**53,
    DataType.FLOAT32: 18.25,
    DataType.FLOAT64: 1e-3,
}


async def test_write_round_trips_for_every_type_and_order() -> None:
    server = await start_server()
    driver = ModbusDriver("dev", config(server.port))
    address = 0
    for data_type, value in WRITE_VALUES.items():
        for order in ByteOrder:
            p = mkpoint(f"w{address}", f"hr:{address}", data_type, order, writable=True)
            n0 = len(server.requests)
            await driver.write(p, value)
            writes = [r for r in server.requests[n0:] if r.fc in (6, 16)]
            assert len(writes) == 1  # multi-register values go in ONE request
            regs = await server.get("hr", address, data_type.registers)
            assert regs == registers_for(
                data_type, order, int(value) if "int" in data_type.value else value
            )
            assert await driver.read_back(p) == pytest.approx(value)
            address += data_type.registers
    # engineering value with scale/offset → raw register
    sp = mkpoint("sp", "hr:150", DataType.INT16, scale=0.1, offset=0.0, writable=True)
    await driver.write(sp, 19.5)
    assert await server.get("hr", 150, 1) == [195]
    assert await driver.read_back(sp) == pytest.approx(19.5)
    # bitN: read-modify-write leaves the other bits alone
    await server.set("hr", 151, [0b1010])
    b0 = mkpoint("b0", "hr:151.0", DataType.BOOL, writable=True)
    b3 = mkpoint("b3", "hr:151.3", DataType.BOOL, writable=True)
    await driver.write(b0, 1)
    await driver.write(b3, 0)
    assert await server.get("hr", 151, 1) == [0b0011]
    assert await driver.read_back(b0) == 1.0
    # coil
    coil = mkpoint("c", "coil:9", DataType.BOOL, writable=True)
    await driver.write(coil, 1)
    assert await server.get("coil", 9, 1) == [True]
    await driver.write(coil, 0)
    assert await driver.read_back(coil) == 0.0
    await driver.close()
    await server.stop()


async def test_write_errors_are_clear() -> None:
    server = await start_server({1: Tables(hr=((0, 10),))})
    driver = ModbusDriver("dev", config(server.port))
    with pytest.raises(WriteError, match="input registers, which are read-only"):
        await driver.write(mkpoint("i", "ir:0"), 1)
    with pytest.raises(WriteError, match="illegal data address"):
        await driver.write(mkpoint("x", "hr:50", DataType.UINT16), 1)
    with pytest.raises(WriteError, match="int16 range"):
        await driver.write(mkpoint("y", "hr:0", DataType.INT16), 40000)
    with pytest.raises(WriteError, match="read-back failed: bad:config_error"):
        await driver.read_back(mkpoint("x", "hr:50", DataType.UINT16))
    await driver.close()
    await server.stop()
    down = ModbusDriver("dev2", config(free_port()))
    with pytest.raises(WriteError, match="not connected"):
        await down.write(mkpoint("z", "hr:0"), 1)
    await down.close()


async def test_two_unit_ids_share_one_connection() -> None:
    server = await start_server({1: Tables(), 2: Tables()})
    await server.set("hr", 0, [11], unit=1)
    await server.set("hr", 0, [22], unit=2)
    context = DriverContext()
    d1 = ModbusDriver("u1", config(server.port, unit_id=1), context)
    d2 = ModbusDriver("u2", config(server.port, unit_id=2), context)
    assert d1.link is d2.link
    g1 = group_of(d1, [mkpoint("a", "hr:0", device="u1")])
    g2 = group_of(d2, [mkpoint("b", "hr:0", device="u2")])
    r1, r2 = await asyncio.gather(d1.read(g1), d2.read(g2))
    assert (r1.value[0], r2.value[0]) == (11, 22)
    assert len(server.server.active_connections) == 1
    assert sorted(r.unit for r in server.reads()) == [1, 2]
    await d1.close()
    assert d2.link.connected  # still in use by d2
    await d2.close()
    assert not context.resources
    await server.stop()


def test_config_rejects_unknown_keys_and_bad_ranges() -> None:
    with pytest.raises(ValueError, match="extra"):
        ModbusDeviceConfig.model_validate({"protocol": "modbus", "host": "h", "slave": 1})
    with pytest.raises(ValueError, match="max_registers_per_request"):
        ModbusDeviceConfig.model_validate(
            {"protocol": "modbus", "host": "h", "max_registers_per_request": 200}
        )
    with pytest.raises(ValueError, match="reconnect_max"):
        ModbusDeviceConfig.model_validate(
            {"protocol": "modbus", "host": "h", "reconnect_min": 5, "reconnect_max": 1}
        )
    assert struct.calcsize(">f") == 4


async def test_persistent_device_failure_is_split_after_repeated_polls() -> None:
    """Exception 4 (device failure) may be transient, so the request is split only after it
    failed SPLIT_AFTER polls in a row; then only the failing register's point stays bad."""
    from pymodbus.constants import ExcCodes

    from outpost.drivers.modbus.driver import SPLIT_AFTER

    async def broken_sensor(fc, _start, address, count, _regs, _values):  # type: ignore[no-untyped-def]
        if fc == 3 and _values is None and address <= 50 < address + count:
            return ExcCodes.DEVICE_FAILURE
        return None

    server = await start_server(action=broken_sensor)
    for a in (40, 45, 50, 55, 60):
        await server.set("hr", a, [a])
    driver = ModbusDriver("dev", config(server.port))
    points = [mkpoint(f"h{a}", f"hr:{a}") for a in (40, 45, 50, 55, 60)]
    group = group_of(driver, points)
    with capture_logs() as logs:
        for _ in range(SPLIT_AFTER - 1):
            result = await driver.read(group)
            assert list(result.quality) == [Quality.BAD_DEVICE_ERROR] * 5
        for _ in range(3):
            result = await driver.read(group)
            assert [result.value[i] for i in (0, 1, 3, 4)] == [40, 45, 55, 60]
            assert list(result.quality) == [
                Quality.GOOD,
                Quality.GOOD,
                Quality.BAD_DEVICE_ERROR,
                Quality.GOOD,
                Quality.GOOD,
            ]
    failed = [e for e in logs if e["event"] == "modbus.request_failed"]
    # the original request once, then the isolated register once: not once per poll
    assert len(failed) <= 3
    assert failed[-1]["request"] == "hr:50+1"
    await driver.close()
    await server.stop()


async def test_tcp_read_is_retried_with_its_transaction_id_when_the_first_goes_unanswered() -> None:
    """Modbus TCP reads are framed by the driver itself (``ModbusLink.read``): a request the
    device drops is sent again, same transaction id, and the answer to the retry is used."""
    import struct

    frames: list[tuple[int, int, int, int, int]] = []

    async def drops_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readexactly(12)
            except asyncio.IncompleteReadError:
                return
            tid, _proto, _length, unit, fc, start, count = struct.unpack(">HHHBBHH", head)
            frames.append((tid, unit, fc, start, count))
            if len(frames) % 2:
                continue  # the first of each pair is dropped
            body = struct.pack(f">BB{count}H", fc, 2 * count, *range(start + 7, start + 7 + count))
            writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
            await writer.drain()

    srv = await asyncio.start_server(drops_first, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    driver = ModbusDriver("dev", config(port, timeout=0.2, retries=1, unit_id=5))
    assert driver.link.lean
    group = group_of(driver, [mkpoint("a", "hr:10"), mkpoint("b", "hr:11")])
    result = await driver.read(group)
    assert list(result.quality) == [Quality.GOOD, Quality.GOOD]
    assert list(result.value) == [17.0, 18.0]
    (tid, unit, fc, start, count), again = frames
    assert again == (tid, unit, fc, start, count) and (unit, fc, start, count) == (5, 3, 10, 2)
    await driver.close()
    srv.close()
