"""SNMP read throughput: points/s from Debian's ``snmpd`` with 50 OIDs per device across 20
device entries (all pointing at one local snmpd, polled concurrently, back to back).

snmpd runs as its own process (started here on a free loopback port, like the tests do); the
50 OIDs are numeric ifTable/ifXTable/system values of this machine. Figures: points/s (wall
clock) and points per CPU-second of this (driver) process, for a few ``max_varbinds`` with
v2c (fast BER path) and for v3 authPriv (pysnmp path).

    .venv/bin/python bench/snmp_read.py [--devices 20] [--oids 50] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import structlog  # noqa: E402
from pyasn1.type import univ  # noqa: E402
from snmp_peer import COMMUNITY, V3_AUTH_KEY, V3_PRIV_KEY, V3_USER, Snmpd  # noqa: E402

from outpost.drivers.base import DriverContext, PointGroup  # noqa: E402
from outpost.drivers.snmp import SnmpDeviceConfig, SnmpDriver  # noqa: E402
from outpost.drivers.snmp.discovery import IF_TABLE, IF_X_TABLE, SYSTEM, _Walker  # noqa: E402
from outpost.point_schedules.model import Point, SnmpAddress  # noqa: E402
from outpost.point_schedules.quality import Quality  # noqa: E402


async def numeric_oids(port: int, want: int) -> list[str]:
    from pysnmp.hlapi.v3arch.asyncio import CommunityData, SnmpEngine, UdpTransportTarget

    engine = SnmpEngine()
    try:
        target = await UdpTransportTarget.create(("127.0.0.1", port), timeout=2, retries=1)
        walker = _Walker(engine, CommunityData(COMMUNITY), target)
        oids: list[str] = []
        for root in (SYSTEM, IF_TABLE, IF_X_TABLE):
            for suffix, value in (await walker.walk(root)).items():
                if isinstance(value, univ.Integer):
                    oids.append(root + "." + ".".join(map(str, suffix)))
        if len(oids) < want:
            raise SystemExit(f"only {len(oids)} numeric OIDs on this snmpd; use --oids {len(oids)}")
        return oids[:want]
    finally:
        engine.close_dispatcher()


async def run(
    port: int, devices: int, oids: list[str], seconds: float, max_varbinds: int, version: str
) -> None:
    ctx = DriverContext()
    drivers, groups = [], []
    for d in range(devices):
        device = f"snmp-{d:02d}"
        if version == "3":
            creds: dict[str, str] = dict(
                user=V3_USER,
                auth_protocol="SHA",
                auth_key_env="BENCH_AUTH",
                priv_protocol="AES",
                priv_key_env="BENCH_PRIV",
            )
        else:
            creds = dict(community_env="BENCH_COMMUNITY")
        cfg = SnmpDeviceConfig(
            host="127.0.0.1",
            port=port,
            version=version,  # type: ignore[arg-type]
            max_varbinds=max_varbinds,
            timeout=2.0,
            **creds,  # type: ignore[arg-type]
        )
        driver = SnmpDriver(device, cfg, ctx)
        points = [Point(f"{device}.p{i}", device, SnmpAddress(o)) for i, o in enumerate(oids)]
        group = PointGroup(device, points, 1.0)
        driver.prepare(group)
        drivers.append(driver)
        groups.append(group)
    try:
        await asyncio.gather(*(d.read(g) for d, g in zip(drivers, groups, strict=True)))  # warm
        good = total = polls = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            results = await asyncio.gather(
                *(d.read(g) for d, g in zip(drivers, groups, strict=True))
            )
            polls += 1
            for r in results:
                total += len(r)
                good += sum(1 for q in r.quality if q == Quality.GOOD)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(
            f"v{version:2s} max_varbinds={max_varbinds:3d}: {devices} devices x {len(oids)} OIDs, "
            f"{polls} rounds, {total / wall:8.0f} points/s wall, "
            f"{total / cpu:8.0f} points/CPU-s (driver process), good {good}/{total}"
        )
    finally:
        await ctx.aclose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--oids", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    os.environ["BENCH_COMMUNITY"] = COMMUNITY
    os.environ["BENCH_AUTH"] = V3_AUTH_KEY
    os.environ["BENCH_PRIV"] = V3_PRIV_KEY
    with tempfile.TemporaryDirectory() as tmp:
        peer = Snmpd(Path(tmp))
        peer.start()
        try:
            oids = await numeric_oids(peer.port, args.oids)
            for max_varbinds in (10, 20, 50):
                await run(peer.port, args.devices, oids, args.seconds, max_varbinds, "2c")
            # v3 authPriv goes through pysnmp (USM): far more CPU per value.
            await run(peer.port, args.devices, oids, args.seconds, 20, "3")
        finally:
            peer.stop()


if __name__ == "__main__":
    asyncio.run(main())
