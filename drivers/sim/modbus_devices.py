"""Simulated Modbus TCP devices of the demo site: a CDU, a UPS and a PDU (pymodbus servers).

Each device has a register map (its "firmware"): which signal of ``SitePhysics`` sits at which
address, in which data type, byte order and scale. The maps use several types and all four
byte orders on purpose, and the UPS has a gap in its input registers (ir 40..43) that answers
with exception 2 (illegal data address), as a firmware that dropped a register does.

``point_schedules/examples/demo-site.csv`` describes the same registers from the agent's side;
a test keeps the two in step.

Writes from a client into writable registers/coils reach the physics (``SitePhysics.command``);
writes to anything else are refused with exception 2, as a real device refuses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from outpost.drivers.modbus.codec import INT_RANGE, EncodeError, decode_registers, encode_registers
from outpost.drivers.sim.physics import SitePhysics, UnknownSignal
from outpost.point_schedules.addresses import parse_modbus
from outpost.point_schedules.model import ByteOrder, DataType, ModbusAddress

log = structlog.get_logger(__name__)

_FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "di", 3: "hr", 6: "hr", 16: "hr", 4: "ir"}
_SET_FC = {"coil": 1, "di": 2, "hr": 3, "ir": 4}

A, C, B, D = ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA
F32, F64 = DataType.FLOAT32, DataType.FLOAT64
I16, U16, I32, U32, I64, U64 = (
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
)
BOOL = DataType.BOOL


@dataclass(frozen=True)
class Register:
    signal: str  # without the device prefix
    address: ModbusAddress
    data_type: DataType
    byte_order: ByteOrder = ByteOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False

    @property
    def size(self) -> int:
        return (
            1
            if self.address.is_bit_table or self.address.bit is not None
            else self.data_type.registers
        )


def _map(rows: Sequence[tuple[Any, ...]]) -> list[Register]:
    out = []
    for row in rows:
        signal, address, data_type, *rest = row
        order = rest[0] if len(rest) > 0 else A
        scale = rest[1] if len(rest) > 1 else 1.0
        offset = rest[2] if len(rest) > 2 else 0.0
        writable = rest[3] if len(rest) > 3 else False
        out.append(
            Register(signal, parse_modbus(address), data_type, order, scale, offset, writable)
        )
    return out


@dataclass(frozen=True)
class DeviceModel:
    kind: str
    description: str
    registers: list[Register]
    # valid address blocks per table: (start, count); everything else is illegal
    blocks: dict[str, tuple[tuple[int, int], ...]]


CDU = DeviceModel(
    "cdu",
    "coolant distribution unit (liquid cooling loop)",
    _map(
        [
            ("supply_temp", "ir:0", F32, A),
            ("return_temp", "ir:2", F32, A),
            ("flow_rate", "ir:4", F32, C),
            ("diff_pressure", "ir:6", U16, A, 0.1),
            ("valve_position", "ir:7", U16, A, 0.1),
            ("pump_speed", "ir:8", U16, A, 0.1),
            ("heat_load", "ir:9", U16, A, 0.1),
            ("facility_supply_temp", "ir:10", I16, A, 0.01),
            ("reservoir_level", "ir:11", U16, A, 0.1),
            ("run_hours", "ir:12", U32, C),
            ("running", "ir:14.0", BOOL),
            ("pump_fault", "ir:14.1", BOOL),
            ("high_temp_warning", "ir:14.3", BOOL),
            ("dew_point", "ir:16", F32, B),
            ("heat_energy", "ir:18", F64, D),
            ("supply_setpoint", "hr:0", I16, A, 0.1, 0.0, True),
            ("pump_speed_setpoint", "hr:1", U16, A, 0.1, 0.0, True),
            ("pump_enable", "coil:0", BOOL, A, 1.0, 0.0, True),
            ("leak_detected", "di:0", BOOL),
            ("common_alarm", "di:1", BOOL),
        ]
    ),
    {"ir": ((0, 32),), "hr": ((0, 16),), "coil": ((0, 16),), "di": ((0, 16),)},
)

UPS = DeviceModel(
    "ups",
    "double-conversion UPS with a VRLA battery string",
    _map(
        [
            ("input_voltage", "ir:0", U16, A, 0.1),
            ("input_frequency", "ir:1", U16, A, 0.01),
            ("output_voltage", "ir:2", U16, A, 0.1),
            ("output_current", "ir:3", U16, A, 0.1),
            ("load_pct", "ir:4", U16, A, 0.1),
            ("battery_charge", "ir:5", U16, A, 0.1),
            ("battery_runtime", "ir:6", U32, C, 1 / 60),
            ("battery_voltage", "ir:8", F32, C),
            ("battery_temp", "ir:10", I16, A, 0.1),
            ("cell_voltage_min", "ir:11", U16, A, 0.001),
            ("battery_health", "ir:12", U16, A),
            ("output_power", "ir:13", I32, D, 0.001),
            ("on_battery", "ir:15.0", BOOL),
            ("fault", "ir:15.1", BOOL),
            ("battery_low", "ir:15.2", BOOL),
            ("battery_replace", "ir:15.3", BOOL),
            ("output_energy", "ir:16", I64, A, 0.001),
            ("inverter_temp", "ir:44", I16, A, 0.1),
            ("ambient_temp", "ir:45", I16, A, 0.1),
            ("battery_low_threshold", "hr:0", U16, A, 1.0, 0.0, True),
        ]
    ),
    # ir 40..43 are missing in this firmware: reading them gives exception 2
    {"ir": ((0, 40), (44, 12)), "hr": ((0, 8),), "coil": ((0, 16),), "di": ((0, 16),)},
)

PDU = DeviceModel(
    "pdu",
    "three-phase rack power distribution unit",
    _map(
        [
            ("voltage_l1", "hr:0", F32, A),
            ("voltage_l2", "hr:2", F32, A),
            ("voltage_l3", "hr:4", F32, A),
            ("current_l1", "hr:6", F32, B),
            ("current_l2", "hr:8", F32, B),
            ("current_l3", "hr:10", F32, B),
            ("power_kw", "hr:12", F32, C),
            ("power_factor", "hr:14", I16, A, 0.001),
            ("frequency", "hr:15", U16, A, 0.01),
            ("energy_kwh", "hr:16", U64, D, 0.001),
            ("breaker_l1_closed", "hr:24.0", BOOL),
            ("breaker_l2_closed", "hr:24.1", BOOL),
            ("breaker_l3_closed", "hr:24.2", BOOL),
            ("inlet_temp", "hr:25", I16, A, 0.1),
            ("breaker_trip", "di:0", BOOL),
        ]
    ),
    {"hr": ((0, 32),), "ir": (), "coil": (), "di": ((0, 16),)},
)

MODELS: dict[str, DeviceModel] = {"cdu": CDU, "ups": UPS, "pdu": PDU}


def _blocks(ranges: tuple[tuple[int, int], ...], bits: bool) -> list[SimData]:
    if not ranges:  # pymodbus wants one block per table; one invalid register means "none"
        return (
            [SimData(0, count=1, datatype=SimType.INVALID)]
            if not bits
            else [SimData(0, values=[False] * 16, datatype=SimType.BITS)]
        )
    if bits:
        return [SimData(s, values=[False] * n, datatype=SimType.BITS) for s, n in ranges]
    return [SimData(s, count=n, values=0, datatype=SimType.REGISTERS) for s, n in ranges]


def _raw_registers(reg: Register, value: float) -> list[int]:
    raw = (value - reg.offset) / reg.scale
    if reg.data_type in INT_RANGE:
        lo, hi = INT_RANGE[reg.data_type]
        raw = min(max(raw, lo), hi)  # a real device saturates its registers
    try:
        return encode_registers(reg.data_type, reg.byte_order, raw)
    except EncodeError:
        return [0] * reg.data_type.registers


class ModbusSimDevice:
    """One simulated device on its own TCP port; ``refresh`` copies physics → registers."""

    def __init__(
        self,
        name: str,
        model: DeviceModel,
        physics: SitePhysics,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
    ) -> None:
        self.name = name
        self.model = model
        self.physics = physics
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.server: ModbusTcpServer | None = None
        self.writes = 0
        self._internal = False
        self._writable = {
            (r.address.table, r.address.address): r for r in model.registers if r.writable
        }
        self._hr_writable = {
            r.address.address + i
            for r in model.registers
            if r.writable and r.address.table == "hr"
            for i in range(r.size)
        }

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> int:
        m = self.model
        device = SimDevice(
            id=self.unit_id,
            simdata=(
                _blocks(m.blocks.get("coil", ()), True),
                _blocks(m.blocks.get("di", ()), True),
                _blocks(m.blocks.get("hr", ()), False),
                _blocks(m.blocks.get("ir", ()), False),
            ),
            action=self._action,
        )
        self.server = ModbusTcpServer(device, address=(self.host, self.port))
        await self.server.serve_forever(background=True)
        self.port = int(self.server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        await self.refresh()
        log.info(
            "sim.modbus.serving",
            device=self.name,
            kind=m.kind,
            endpoint=self.endpoint,
            unit_id=self.unit_id,
        )
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def refresh(self) -> None:
        """Write every signal's current value into the datastore."""
        server = self.server
        if server is None:
            return
        words: dict[tuple[str, int], int] = {}
        self._internal = True
        try:
            for reg in self.model.registers:
                value = self.physics.value(f"{self.name}.{reg.signal}")
                a = reg.address
                if a.is_bit_table:
                    await server.async_setValues(
                        self.unit_id, _SET_FC[a.table], a.address, [bool(value >= 0.5)]
                    )
                elif a.bit is not None:
                    key = (a.table, a.address)
                    words[key] = words.get(key, 0) | ((1 << a.bit) if value >= 0.5 else 0)
                else:
                    await server.async_setValues(
                        self.unit_id, _SET_FC[a.table], a.address, _raw_registers(reg, value)
                    )
            for (table, address), word in words.items():
                await server.async_setValues(self.unit_id, _SET_FC[table], address, [word])
        finally:
            self._internal = False

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is None or self._internal:
            return None
        table = _FC_TABLE.get(function_code)
        if table == "coil":
            for i, bit in enumerate(set_values):
                reg = self._writable.get(("coil", address + i))
                if reg is None:
                    return ExcCodes.ILLEGAL_ADDRESS
                self._command(reg, 1.0 if bit else 0.0)
            return None
        if table != "hr":
            return ExcCodes.ILLEGAL_FUNCTION
        touched = set(range(address, address + count))
        if not touched <= self._hr_writable:
            return ExcCodes.ILLEGAL_ADDRESS
        # the register block as it will be after this write, to decode values spanning registers
        merged = dict(enumerate(registers, start=start_address))
        for i, word in enumerate(set_values):
            merged[address + i] = int(word)
        for (tbl, reg_address), reg in self._writable.items():
            if tbl != "hr" or not touched & set(range(reg_address, reg_address + reg.size)):
                continue
            words = [merged.get(a, 0) for a in range(reg_address, reg_address + reg.size)]
            value = decode_registers(reg.data_type, reg.byte_order, words) * reg.scale + reg.offset
            self._command(reg, value)
        return None

    def _command(self, reg: Register, value: float) -> None:
        name = f"{self.name}.{reg.signal}"
        try:
            self.physics.command(name, value)
        except UnknownSignal:
            log.warning("sim.modbus.write_ignored", signal=name)
            return
        self.writes += 1
        log.info("sim.modbus.write", signal=name, value=round(value, 3))
