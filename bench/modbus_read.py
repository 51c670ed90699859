"""Points decoded per agent CPU-second by ModbusDriver.read against a pymodbus server running
in ANOTHER process (so the server's CPU is not counted).

    .venv/bin/python bench/modbus_read.py [--points 4000] [--polls 200] [--profile]

Prints figures for three maps: float32 (2 registers/point), uint16 (1/point) and a mixed map
with scale/offset and byte orders. ``--profile`` adds a cProfile summary that splits the time
between pymodbus (framing, PDU decode, transaction handling) and our decode.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outpost.drivers.base import PointGroup
from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
from outpost.point_schedules.model import ByteOrder, DataType, ModbusAddress, Point


def _serve(port_queue: multiprocessing.Queue, registers: int) -> None:  # type: ignore[type-arg]
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType as SimType
    from pymodbus.simulator import SimData, SimDevice

    async def main() -> None:
        device = SimDevice(
            id=1,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=SimType.BITS)],
                [SimData(0, values=[False] * 16, datatype=SimType.BITS)],
                [SimData(0, count=registers, values=0x4148, datatype=SimType.REGISTERS)],
                [SimData(0, count=registers, values=0x0101, datatype=SimType.REGISTERS)],
            ),
        )
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        port_queue.put(server.transport.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def make_points(kind: str, n: int) -> list[Point]:
    points = []
    orders = list(ByteOrder)
    for i in range(n):
        if kind == "float32":
            points.append(
                Point(f"p{i}", "dev", ModbusAddress("hr", 2 * i), DataType.FLOAT32, ByteOrder.ABCD)
            )
        elif kind == "uint16":
            points.append(Point(f"p{i}", "dev", ModbusAddress("ir", i), DataType.UINT16))
        else:
            dt = (DataType.FLOAT32, DataType.INT32, DataType.UINT32)[i % 3]
            points.append(
                Point(
                    f"p{i}",
                    "dev",
                    ModbusAddress("hr", 2 * i),
                    dt,
                    orders[i % 4],
                    scale=0.1 if i % 2 else 1.0,
                    min=-1e10,
                    max=1e10,
                )
            )
    return points


async def run(port: int, kind: str, n: int, polls: int, profile: bool) -> None:
    cfg = ModbusDeviceConfig(protocol="modbus", host="127.0.0.1", port=port, timeout=2.0)
    driver = ModbusDriver("dev", cfg)
    group = PointGroup("dev", make_points(kind, n), 1.0)
    driver.prepare(group)
    await driver.read(group)  # connect, warm up
    profiler = cProfile.Profile() if profile else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(polls):
        result = await driver.read(group)
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert all(q == 0 for q in result.quality), "bench read failed"
    reqs = len(group.plan.requests)
    total = n * polls
    print(
        f"{kind:8s} points={n:5d} requests/poll={reqs:3d} points/request={n / reqs:6.1f} "
        f"polls={polls}  {total / cpu:10,.0f} points/CPU-s  {total / wall:10,.0f} points/wall-s  "
        f"{cpu / (reqs * polls) * 1e6:6.1f} µs CPU/request"
    )
    if profiler:
        stats = pstats.Stats(profiler)
        ours = sum(
            v[2]
            for k, v in stats.stats.items()
            if "drivers/modbus" in k[0]  # type: ignore[attr-defined]
        )
        pym = sum(
            v[2]
            for k, v in stats.stats.items()
            if "pymodbus" in k[0]  # type: ignore[attr-defined]
        )
        total_tt = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(
            f"         profile: own-time pymodbus {pym / total_tt:5.1%}, drivers/modbus* "
            f"{ours / total_tt:5.1%}, rest (asyncio, sockets, struct) {1 - (pym + ours) / total_tt:5.1%}"
        )
        stats.sort_stats("tottime").print_stats(12)
    await driver.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=4000)
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    proc = multiprocessing.Process(target=_serve, args=(queue, 2 * args.points + 8), daemon=True)
    proc.start()
    try:
        port = queue.get(timeout=20)
        for kind in ("float32", "uint16", "mixed"):
            asyncio.run(run(port, kind, args.points, args.polls, args.profile))
    finally:
        proc.terminate()
        proc.join()


if __name__ == "__main__":
    main()
