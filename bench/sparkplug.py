"""Sparkplug B: encoding cost per reading and store-and-forward drain rate to a real broker.

    .venv/bin/python bench/sparkplug.py [--readings 200000] [--points 200] [--devices 5]

1. Encoding: DDATA payloads built and serialised for ``--readings`` readings (the node's own
   ``payloads.point_data``), 500 metrics per message: readings per CPU-second, bytes per
   reading on the wire.
2. Drain: a real buffer file filled with ``--readings`` readings, then the real
   ``SparkplugNode`` (backfill on) publishes them all as historical DDATA to a mosquitto on a
   free port while a subscriber counts them: readings per second until the last arrived, for
   data_qos 0 and 1. The buffer holds them as the agent stores them: one block per poll of a
   device, so a DDATA message carries one device's poll (up to 500 metrics).

The node's host is a small stand-in (static points, every device up, no alarms): the broker,
the buffer and the node are the real ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outpost.buffer.store import Buffer
from outpost.cloud.sparkplug import payloads as sp
from outpost.cloud.sparkplug import sparkplug_b_pb2 as pb
from outpost.cloud.sparkplug.config import SparkplugConfig
from outpost.cloud.sparkplug.node import AlarmState, SparkplugNode
from outpost.point_schedules.addresses import parse_address
from outpost.point_schedules.model import DataType, Point
from tests.mqtt_broker import Mosquitto


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_points(n: int, devices: int) -> list[Point]:
    return [
        Point(
            point_id=f"dev{i % devices}.p{i}",
            device=f"dev{i % devices}",
            address=parse_address("modbus", f"hr:{i}"),
            data_type=DataType.INT16,
            scale=0.1,
            units="degC",
        )
        for i in range(n)
    ]


class Host:
    def __init__(self, points: list[Point], keys: dict[str, int]) -> None:
        self.points = points
        self.keys = keys

    def schedule_version(self) -> str | None:
        return "bench"

    def device_points(self) -> dict[str, list[Point]]:
        out: dict[str, list[Point]] = {}
        for p in self.points:
            out.setdefault(p.device, []).append(p)
        return out

    def device_up(self) -> dict[str, bool]:
        return dict.fromkeys(self.device_points(), True)

    def live(self) -> dict[str, tuple[float | None, int, float | None]]:
        return {}

    def alarm_states(self) -> list[AlarmState]:
        return []

    def point_keys(self, point_ids: Sequence[str]) -> list[int]:
        return [self.keys[p] for p in point_ids]

    async def write(self, point_id: str, value: float, *, actor: str) -> str:
        return "refused"

    def emit(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        return None


def encoding(readings: int) -> None:
    pm = sp.PointMetric(make_points(1, 1)[0], 7, pb.Double)
    c0 = cpu()
    size = 0
    now = int(time.time() * 1000)
    for start in range(0, readings, 500):
        payload = pb.Payload(timestamp=now, seq=start % 256)
        for i in range(start, min(start + 500, readings)):
            sp.point_data(payload.metrics.add(), pm, 20.0 + i % 50 * 0.1, 0, now + i, True)
        size += len(payload.SerializeToString())
    spent = cpu() - c0
    print(
        f"encode: {readings} readings in {spent:.2f} CPU-s = "
        f"{readings / spent:,.0f} readings/CPU-s, {size / readings:.1f} bytes/reading"
    )


async def drain(readings: int, n_points: int, devices: int, qos: Literal[0, 1], work: Path) -> None:
    broker = Mosquitto(work / f"broker{qos}")
    broker.workdir.mkdir()
    broker.start()
    buf = Buffer(work / f"buffer{qos}.db", commit_interval=0.2)
    buf.open()
    try:
        points = make_points(n_points, devices)
        ids = [p.point_id for p in points]
        keys = dict(zip(ids, buf.point_keys(ids), strict=True))
        # As the agent stores them: one block per poll of a device (its points together),
        # devices polled in turn.
        by_device: dict[str, list[int]] = {}
        for p in points:
            by_device.setdefault(p.device, []).append(keys[p.point_id])
        order = [k for ks in by_device.values() for k in ks]
        t0 = time.time() - readings / 100
        for start in range(0, readings, 10_000):
            idx = range(start, min(start + 10_000, readings))
            buf.append(
                [t0 + i / 100 for i in idx],
                [order[i % n_points] for i in idx],
                [float(i % 500) for i in idx],
                [0] * len(idx),
            )
        buf.flush_sync(60)
        cfg = SparkplugConfig(
            url=f"mqtt://{broker.host}:{broker.port}",
            group_id="bench",
            publish_interval_s=0.01,
            batch_size=5000,
            backfill_on_first_start=True,
            data_qos=qos,
        )
        node = SparkplugNode(
            cfg,
            edge_node_id="gw",
            source=buf,
            host=Host(points, keys),
            state_path=work / f"sp{qos}.state",
        )
        got = 0
        done = asyncio.Event()

        async def count() -> None:
            nonlocal got
            async with aiomqtt.Client(broker.host, broker.port, identifier=f"bench{qos}") as c:
                await c.subscribe("spBv1.0/bench/DDATA/#", qos=qos)
                ready.set()
                async for msg in c.messages:
                    assert isinstance(msg.payload, bytes)
                    got += len(pb.Payload.FromString(msg.payload).metrics)
                    if got >= readings:
                        done.set()

        ready = asyncio.Event()
        counter = asyncio.create_task(count())
        await ready.wait()
        c0, w0 = cpu(), time.perf_counter()
        runner = asyncio.create_task(node.run())
        await asyncio.wait_for(done.wait(), 600)
        wall, spent = time.perf_counter() - w0, cpu() - c0
        for t in (runner, counter):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        print(
            f"drain qos {qos}: {readings} historical readings in {wall:.2f} s = "
            f"{readings / wall:,.0f} readings/s ({node.counters.messages} messages; "
            f"this process incl. subscriber {spent:.2f} CPU-s)"
        )
    finally:
        buf.close()
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--devices", type=int, default=5)
    args = ap.parse_args()
    encoding(args.readings)
    with tempfile.TemporaryDirectory() as tmp:
        qos: Literal[0, 1]
        for qos in (0, 1):
            asyncio.run(drain(args.readings, args.points, args.devices, qos, Path(tmp)))


if __name__ == "__main__":
    main()
