"""A minimal asyncio Modbus TCP responder for the poll benchmarks: many devices, little CPU.

pymodbus' server costs more CPU per request than the agent spends on it, so at benchmark rates
it, not the agent, would be what is measured (and on a shared box it steals the agent's core).
This one answers read holding/input registers (function codes 3 and 4) and nothing else, one
listening port per device. Every register changes every half second (the value is a function
of the half-second tick), so an agent polling at 1 s sees every value change on every poll:
report-by-exception stores every reading, the worst case.

    .venv/bin/python bench/modbus_responder.py --devices 500 --registers 200 --base-port 26000

Prints ``ready`` once every port listens, then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from array import array
from functools import partial

_HEADER = struct.Struct(">HHHB")  # transaction, protocol, length, unit
_REQUEST = struct.Struct(">BHH")  # function, start, count


class _Block:
    """The register image every device serves, rebuilt once per half-second tick.

    Device ``d`` serves the image from register ``d`` on, so devices differ; the image is
    kept as big-endian bytes so a response is one slice."""

    def __init__(self, devices: int, registers: int) -> None:
        self.size = devices + registers
        self.tick = -1
        self.data = b""

    def current(self) -> bytes:
        tick = int(time.time() * 2)
        if tick != self.tick:
            self.tick = tick
            base = tick * 7
            words = array("H", [(base + i * 13) & 0xFFFF for i in range(self.size)])
            words.byteswap()  # to big-endian on a little-endian host
            self.data = words.tobytes()
        return self.data


class _Device(asyncio.Protocol):
    def __init__(self, block: _Block, first: int, registers: int) -> None:
        self.block = block
        self.first = first
        self.registers = registers
        self.pending = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.pending + data
        out = []
        pos = 0
        while len(buf) - pos >= 12:
            tid, proto, length, unit = _HEADER.unpack_from(buf, pos)
            end = pos + 6 + length
            if end > len(buf):
                break
            fc, start, count = _REQUEST.unpack_from(buf, pos + 7)
            if fc in (3, 4) and 1 <= count <= 125 and start + count <= self.registers:
                image = self.block.current()
                a = 2 * (self.first + start)
                body = image[a : a + 2 * count]
                out.append(_HEADER.pack(tid, proto, 3 + len(body), unit))
                out.append(bytes((fc, len(body))))
                out.append(body)
            else:  # exception 2: illegal data address (or 1 for other functions)
                code = 2 if fc in (3, 4) else 1
                out.append(_HEADER.pack(tid, proto, 3, unit) + bytes((fc | 0x80, code)))
            pos = end
        self.pending = buf[pos:]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(devices: int, registers: int, base_port: int, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    block = _Block(devices, registers)
    servers = []
    for d in range(devices):
        server = await loop.create_server(
            partial(_Device, block, d, registers),
            host,
            base_port + d,
        )
        servers.append(server)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--registers", type=int, default=200)
    ap.add_argument("--base-port", type=int, default=26000)
    args = ap.parse_args()
    asyncio.run(serve(args.devices, args.registers, args.base_port))


if __name__ == "__main__":
    main()
