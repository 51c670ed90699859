"""Real pymodbus TCP servers for the Modbus tests (shared helpers, imported by test modules).

Servers run in the test's event loop on an ephemeral port (or a given port, to restart a
"device" where the driver expects it). Every request the server receives is recorded by the
server's own ``trace_pdu`` hook, so tests count real wire requests.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from outpost.point_schedules.model import ByteOrder, DataType, ModbusAddress, Point

# function code used with the server datastore per table
FC = {"coil": 1, "di": 2, "hr": 3, "ir": 4}
Ranges = Sequence[tuple[int, int]]  # (first address, count) blocks that answer; the rest is illegal


@dataclass
class Tables:
    """Valid address blocks per table for one unit id (registers start at 0)."""

    hr: Ranges = ((0, 200),)
    ir: Ranges = ((0, 200),)
    coil: Ranges = ((0, 64),)
    di: Ranges = ((0, 64),)


@dataclass
class SeenRequest:
    unit: int
    fc: int
    address: int
    count: int


@dataclass
class ModbusTestServer:
    server: ModbusTcpServer | ModbusSerialServer
    port: int
    requests: list[SeenRequest] = field(default_factory=list)

    async def set(
        self, table: str, address: int, values: list[int] | list[bool], unit: int = 1
    ) -> None:
        await self.server.async_setValues(unit, FC[table], address, values)

    async def get(self, table: str, address: int, count: int, unit: int = 1) -> list[Any]:
        return list(await self.server.async_getValues(unit, FC[table], address, count))

    def reads(self, unit: int | None = None) -> list[SeenRequest]:
        return [
            r for r in self.requests if r.fc in (1, 2, 3, 4) and (unit is None or r.unit == unit)
        ]

    async def stop(self) -> None:
        await self.server.shutdown()
        await asyncio.sleep(0)


def _sim_blocks(ranges: Ranges, bits: bool) -> list[SimData]:
    if not ranges:
        # pymodbus needs at least one block per table; a single invalid register is "nothing"
        return (
            [SimData(0, count=1, datatype=SimType.INVALID)]
            if not bits
            else [SimData(0, values=[False] * 16, datatype=SimType.BITS)]
        )
    if bits:
        return [
            SimData(start, values=[False] * count, datatype=SimType.BITS) for start, count in ranges
        ]
    return [
        SimData(start, count=count, values=0, datatype=SimType.REGISTERS) for start, count in ranges
    ]


def sim_device(
    unit: int, tables: Tables | None = None, action: Callable[..., Any] | None = None
) -> SimDevice:
    t = tables or Tables()
    return SimDevice(
        id=unit,
        simdata=(
            _sim_blocks(t.coil, True),
            _sim_blocks(t.di, True),
            _sim_blocks(t.hr, False),
            _sim_blocks(t.ir, False),
        ),
        action=action,
    )


def _tracer(seen: list[SeenRequest]) -> Callable[[bool, ModbusPDU], ModbusPDU]:
    def trace_pdu(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            seen.append(
                SeenRequest(
                    pdu.dev_id,
                    pdu.function_code,
                    getattr(pdu, "address", -1),
                    getattr(pdu, "count", 0),
                )
            )
        return pdu

    return trace_pdu


def _muting(silent: tuple[int, ...]) -> Callable[[bool, bytes], bytes]:
    """Drops the answers of ``silent`` unit ids (an RTU frame starts with the unit id):
    pymodbus' simulator answers unknown ids itself, a dead unit on a bus answers nothing."""
    mute = frozenset(silent)

    def drop(sending: bool, frame: bytes) -> bytes:
        return b"" if sending and frame and frame[0] in mute else frame

    return drop


async def start_server(
    units: dict[int, Tables] | None = None,
    *,
    port: int = 0,
    action: Callable[..., Any] | None = None,
    framer: FramerType = FramerType.SOCKET,
    silent: tuple[int, ...] = (),
) -> ModbusTestServer:
    """Serve ``units`` (unit id → tables) on 127.0.0.1:``port`` (0 = ephemeral); with
    ``framer=FramerType.RTU`` it is a serial server (RTU frames over TCP) and the ``silent``
    unit ids behind it never answer."""
    units = units or {1: Tables()}
    seen: list[SeenRequest] = []
    devices = [sim_device(unit, tables, action) for unit, tables in units.items()]
    devices += [sim_device(unit) for unit in silent if unit not in units]
    server = ModbusTcpServer(
        devices,
        address=("127.0.0.1", port),
        framer=framer,
        trace_pdu=_tracer(seen),
        trace_packet=_muting(silent) if silent else None,
    )
    await server.serve_forever(background=True)
    bound = server.transport.sockets[0].getsockname()[1]
    return ModbusTestServer(server, bound, seen)


async def start_serial_server(
    path: Path,
    units: dict[int, Tables] | None = None,
    *,
    silent: tuple[int, ...] = (),
    baudrate: int = 19200,
) -> ModbusTestServer:
    """RTU slaves (several unit ids) on the serial device ``path``. The ``silent`` unit ids
    hear their requests but never answer, like a dead unit on a real bus (their answers are
    dropped before they reach the line: pymodbus' simulator answers unknown ids itself)."""
    units = units or {1: Tables()}
    seen: list[SeenRequest] = []
    devices = [sim_device(unit, tables) for unit, tables in units.items()]
    devices += [sim_device(unit) for unit in silent if unit not in units]
    server = ModbusSerialServer(
        devices,
        framer=FramerType.RTU,
        port=str(path),
        baudrate=baudrate,
        parity="N",  # a pseudo-terminal refuses parity settings
        trace_pdu=_tracer(seen),
        trace_packet=_muting(silent),
    )
    await server.serve_forever(background=True)
    return ModbusTestServer(server, 0, seen)


@dataclass
class PtyPair:
    """A null-modem cable made of two linked pseudo-terminals (socat): the driver opens
    ``a``, the RTU slave ``b``. ``stop`` pulls the cable; ``start`` again plugs it back at the
    same paths."""

    a: Path
    b: Path
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "socat",
            f"pty,raw,echo=0,link={self.a}",
            f"pty,raw,echo=0,link={self.b}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await _until(lambda: self.a.exists() and self.b.exists(), "socat made no pty pair")

    async def stop(self) -> None:
        if self.process is not None:
            if self.process.returncode is None:
                self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 5)
            self.process = None
        # socat removes its links when it exits
        await _until(lambda: not self.a.exists() and not self.b.exists(), "pty links left")


async def _until(cond: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- values
STRUCT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}


def registers_for(data_type: DataType, order: ByteOrder, value: float | int) -> list[int]:
    """Wire registers for ``value``, built independently of the driver's codec: big-endian
    bytes, then the documented permutation (CDAB = words reversed, BADC = bytes swapped in
    each word, DCBA = all bytes reversed)."""
    data = struct.pack(">" + STRUCT[data_type], value)
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order is ByteOrder.CDAB:
        words = words[::-1]
    elif order is ByteOrder.BADC:
        words = [w[::-1] for w in words]
    elif order is ByteOrder.DCBA:
        words = [w[::-1] for w in words[::-1]]
    return [int.from_bytes(w, "big") for w in words]


def point(
    point_id: str,
    address: str,
    data_type: DataType | None = DataType.UINT16,
    byte_order: ByteOrder = ByteOrder.ABCD,
    *,
    device: str = "dev",
    **kw: Any,
) -> Point:
    table, _, rest = address.partition(":")
    reg, _, bit = rest.partition(".")
    return Point(
        point_id=point_id,
        device=device,
        address=ModbusAddress(table, int(reg), int(bit) if bit else None),  # type: ignore[arg-type]
        data_type=data_type,
        byte_order=byte_order,
        **kw,
    )
