"""BACnet read throughput: points/s from one simulated device with 500 analog-values.

The device runs in another process (``python -m outpost.drivers.sim.bacnet_ahu --bulk 500``), the
driver here polls all 500 points as one group, back to back, for a few seconds:

- RPM with ``max_per_request`` 20 (default) and larger batches, up to all points in one
  (segmented) request;
- ReadProperty only: a second device that rejects RPM (the driver falls back by itself).

Figures: points/s (wall clock) and points per CPU-second of this (client) process.

    .venv/bin/python bench/bacnet_read.py [--points 500] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outpost.drivers.bacnet import BacnetDeviceConfig, BacnetDriver
from outpost.drivers.base import DriverContext, PointGroup
from outpost.point_schedules.model import BacnetAddress, Point
from outpost.point_schedules.quality import Quality


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sim(port: int, n: int, *, rpm: bool) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "outpost.drivers.sim.bacnet_ahu", "--address", f"127.0.0.1:{port}"]
    cmd += ["--instance", str(port), "--bulk", str(n)]
    if not rpm:
        cmd.append("--no-rpm")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("READY"):
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc


async def measure(
    port: int, n: int, seconds: float, max_per_request: int
) -> tuple[float, float, bool]:
    cfg = BacnetDeviceConfig(
        address=f"127.0.0.1:{port}",
        device_instance=port,
        local_address=f"127.0.0.1:{free_udp_port()}",
        max_per_request=max_per_request,
        timeout=2.0,
        retries=0,
    )
    ctx = DriverContext()
    drv = BacnetDriver("bench", cfg, ctx)
    points = [
        Point(point_id=f"p{i}", device="bench", address=BacnetAddress("analog-value", i))
        for i in range(1, n + 1)
    ]
    group = PointGroup(device="bench", points=points, interval=1.0)
    drv.prepare(group)
    try:
        first = await drv.read(group)  # warm-up; also where an RPM rejection is learnt
        bad = sum(1 for q in first.quality if q != Quality.GOOD)
        if bad:
            raise SystemExit(f"{bad} points not good in the warm-up read")
        reads = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            await drv.read(group)
            reads += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await drv.close()
    return reads * n / wall, reads * n / cpu, drv.uses_rpm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    n = args.points

    rpm_port, rp_port = free_udp_port(), free_udp_port()
    sims = [start_sim(rpm_port, n, rpm=True), start_sim(rp_port, n, rpm=False)]
    try:
        print(
            f"BACnet/IP read, one device with {n} analog-values on loopback, sim in another process"
        )
        print(f"{'mode':<34}{'points/s':>12}{'points/CPU-s':>16}")
        for label, port, batch in (
            ("ReadPropertyMultiple, 20/request", rpm_port, 20),
            ("ReadPropertyMultiple, 50/request", rpm_port, 50),
            ("ReadPropertyMultiple, 100/request", rpm_port, 100),
            (f"ReadPropertyMultiple, {n}/request", rpm_port, n),
            ("ReadProperty only (RPM rejected)", rp_port, 20),
        ):
            wall, cpu, used_rpm = asyncio.run(measure(port, n, args.seconds, batch))
            assert used_rpm == (port == rpm_port)
            print(f"{label:<34}{wall:>12,.0f}{cpu:>16,.0f}")
    finally:
        for proc in sims:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
