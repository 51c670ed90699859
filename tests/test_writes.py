"""Guarded writes through the real ModbusDriver to a real pymodbus server: every refusal case
(nothing reaches the wire), read-back verification and mismatch, every data type and byte order
round-tripping, and the audit events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from outpost.agent.control.writes import WriteOutcome, WriteRefused, WriteService, check_value
from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
from outpost.fsm.clock import ManualClock
from outpost.point_schedules.model import ByteOrder, DataType, Point
from tests.modbus_server import ModbusTestServer, registers_for, start_server
from tests.modbus_server import point as mkpoint

WRITE_FCS = {5, 6, 15, 16}

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


@dataclass
class Events:
    rows: list[tuple[float, str, str, str | None, dict[str, Any]]] = field(default_factory=list)

    def __call__(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        self.rows.append((ts, kind, source, actor, dict(detail)))


@dataclass
class Rig:
    server: ModbusTestServer
    driver: ModbusDriver
    service: WriteService
    events: Events
    down: set[str]

    def writes_on_wire(self) -> int:
        return sum(1 for r in self.server.requests if r.fc in WRITE_FCS)


def writable_points() -> list[Point]:
    return [
        mkpoint(
            "cdu-01.setpoint",
            "hr:10",
            DataType.INT16,
            device="cdu-01",
            scale=0.1,
            writable=True,
            min=15.0,
            max=30.0,
            units="degC",
        ),
        mkpoint("cdu-01.mode_word", "hr:11", DataType.UINT16, device="cdu-01", writable=True),
        mkpoint("cdu-01.count", "hr:12", DataType.INT16, device="cdu-01", writable=True),
        mkpoint("cdu-01.enable", "coil:3", DataType.BOOL, device="cdu-01", writable=True),
        mkpoint("cdu-01.flag", "hr:13.4", DataType.BOOL, device="cdu-01", writable=True),
        mkpoint("cdu-01.supply_temp", "hr:0", DataType.INT16, device="cdu-01", scale=0.1),
        mkpoint("cdu-01.input", "ir:0", DataType.UINT16, device="cdu-01", writable=True),
        mkpoint("cdu-01.clamped", "hr:20", DataType.UINT16, device="cdu-01", writable=True),
        mkpoint("ghost.value", "hr:0", DataType.UINT16, device="ghost", writable=True),
    ]


async def clamp_at_500(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    current_registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> None:
    """A device that silently limits register 20 to 500 (like a setpoint clamp)."""
    if function_code == 6 and address == 20 and set_values is not None:
        set_values[0] = min(int(set_values[0]), 500)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    server = await start_server(action=clamp_at_500)
    driver = ModbusDriver(
        "cdu-01",
        ModbusDeviceConfig(
            protocol="modbus", host="127.0.0.1", port=server.port, timeout=0.5, retries=0
        ),
    )
    events = Events()
    down: set[str] = set()
    points = {p.point_id: p for p in writable_points()}
    service = WriteService(
        points,
        {"cdu-01": driver},
        emit=events,
        device_up=lambda device: device not in down,
        clock=ManualClock(),
    )
    yield Rig(server, driver, service, events, down)
    await driver.close()
    await server.stop()


REFUSALS = [
    ("nope.point", 1.0, "unknown point 'nope.point'"),
    ("cdu-01.supply_temp", 20.0, "is not writable"),
    ("cdu-01.setpoint", 14.9, "below the point's min 15 degC"),
    ("cdu-01.setpoint", 30.5, "above the point's max 30 degC"),
    ("cdu-01.setpoint", 21.55, "not a whole number of raw units for a int16 point"),
    ("cdu-01.mode_word", 70000.0, "outside the uint16 range 0..65535"),
    ("cdu-01.mode_word", -1.0, "outside the uint16 range"),
    ("cdu-01.count", 1.5, "not a whole number of raw units for a int16"),
    ("cdu-01.count", 40000.0, "outside the int16 range -32768..32767"),
    ("cdu-01.enable", 2.0, "takes 0 or 1"),
    ("cdu-01.flag", 0.5, "takes 0 or 1"),
    ("cdu-01.count", float("nan"), "finite number"),
    ("cdu-01.input", 1.0, "input register, read-only"),
    ("ghost.value", 1.0, "device ghost has no running driver"),
]


@pytest.mark.parametrize(("point_id", "value", "message"), REFUSALS)
async def test_refusals_send_nothing(rig: Rig, point_id: str, value: float, message: str) -> None:
    await rig.service.write("cdu-01.count", 7, actor="warmup")  # the connection is up
    before = rig.writes_on_wire()
    with pytest.raises(WriteRefused, match=message.replace("(", r"\(").replace(".", r"\.")):
        await rig.service.write(point_id, value, actor="alice")
    assert rig.writes_on_wire() == before
    refused = rig.events.rows[-1]
    assert refused[1:4] == ("operator.write", point_id, "alice")
    assert refused[4]["result"] == "refused"
    assert message.split(" ")[0] in refused[4]["message"] or message in refused[4]["message"]


async def test_refused_when_device_is_down(rig: Rig) -> None:
    rig.down.add("cdu-01")
    with pytest.raises(WriteRefused, match=r"device cdu-01 is down .* nothing was sent"):
        await rig.service.write("cdu-01.count", 3, actor="alice")
    assert rig.writes_on_wire() == 0


async def test_priority_out_of_range_refused(rig: Rig) -> None:
    with pytest.raises(WriteRefused, match=r"priority must be 1\.\.16"):
        await rig.service.write("cdu-01.count", 3, actor="alice", priority=17)
    assert rig.writes_on_wire() == 0


async def test_scaled_write_reads_back_and_is_audited(rig: Rig) -> None:
    outcome = await rig.service.write("cdu-01.setpoint", 21.5, actor="alice")
    assert isinstance(outcome, WriteOutcome)
    assert (outcome.result, outcome.ok) == ("ok", True)
    assert outcome.read_back == pytest.approx(21.5)
    assert await rig.server.get("hr", 10, 1) == [215]  # raw = 21.5 / 0.1
    event = rig.events.rows[-1]
    assert event[1:4] == ("operator.write", "cdu-01.setpoint", "alice")
    assert event[4]["result"] == "ok"
    assert event[4]["read_back"] == pytest.approx(21.5)
    assert outcome.to_dict()["ts"].endswith("Z")


async def test_bits_and_coils(rig: Rig) -> None:
    await rig.server.set("hr", 13, [0b1000_0000_0000_0001])
    assert (await rig.service.write("cdu-01.flag", 1, actor="alice")).result == "ok"
    assert await rig.server.get("hr", 13, 1) == [0b1000_0000_0001_0001]  # other bits kept
    assert (await rig.service.write("cdu-01.enable", 1, actor="alice")).result == "ok"
    assert (await rig.server.get("coil", 3, 1))[0] is True
    assert (await rig.service.write("cdu-01.enable", 0, actor="alice")).result == "ok"
    assert (await rig.server.get("coil", 3, 1))[0] is False


async def test_read_back_mismatch_is_reported(rig: Rig) -> None:
    outcome = await rig.service.write("cdu-01.clamped", 800, actor="alice")
    assert (outcome.result, outcome.ok, outcome.read_back) == ("mismatch", False, 500.0)
    assert "wrote 800, read back 500" in outcome.message
    assert rig.events.rows[-1][4]["result"] == "mismatch"
    assert (await rig.service.write("cdu-01.clamped", 400, actor="alice")).result == "ok"


async def test_unverified_write_when_asked(rig: Rig) -> None:
    outcome = await rig.service.write("cdu-01.count", 5, actor="alice", verify=False)
    assert (outcome.result, outcome.read_back) == ("sent", None)
    assert await rig.server.get("hr", 12, 1) == [5]


async def test_device_that_stops_answering_is_a_failed_write(rig: Rig) -> None:
    await rig.server.stop()
    outcome = await rig.service.write("cdu-01.count", 5, actor="alice")
    assert (outcome.result, outcome.ok) == ("failed", False)
    assert "cdu-01" in outcome.message


async def test_automatic_actor_is_a_write_event(rig: Rig) -> None:
    await rig.service.write("cdu-01.count", 9, actor="mode:emergency")
    assert rig.events.rows[-1][1:4] == ("write", "cdu-01.count", "mode:emergency")


@pytest.mark.parametrize("order", list(ByteOrder))
async def test_every_type_and_byte_order_round_trips(order: ByteOrder) -> None:
    server = await start_server()
    points: dict[str, Point] = {}
    address = 0
    for data_type in NUMBERS:
        pid = f"dev.{data_type.value}"
        points[pid] = mkpoint(pid, f"hr:{address}", data_type, order, device="dev", writable=True)
        address += data_type.registers
    driver = ModbusDriver(
        "dev", ModbusDeviceConfig(protocol="modbus", host="127.0.0.1", port=server.port)
    )
    service = WriteService(
        points, {"dev": driver}, emit=Events(), device_up=lambda d: True, clock=ManualClock()
    )
    try:
        for pid, p in points.items():
            assert p.data_type is not None
            number = NUMBERS[p.data_type]
            outcome = await service.write(pid, number, actor="alice")
            assert outcome.result == "ok", outcome.message
            assert outcome.read_back == pytest.approx(float(number))
            # what the device holds is exactly the documented layout, built independently
            words = await server.get("hr", p.address.address, p.data_type.registers)  # type: ignore[union-attr]
            assert words == registers_for(p.data_type, order, number)
    finally:
        await driver.close()
        await server.stop()


def test_check_value_accepts_what_fits() -> None:
    p = mkpoint("x", "hr:0", DataType.INT16, scale=0.5, offset=10.0, writable=True)
    assert check_value(p, 11.5) == 3.0
    assert check_value(mkpoint("y", "hr:0", DataType.FLOAT32), 1.25) == 1.25
    with pytest.raises(WriteRefused, match="float32"):
        check_value(mkpoint("y", "hr:0", DataType.FLOAT32), 1e39)
