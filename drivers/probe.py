"""Read every point of a schedule once through the drivers and report how each one did.

Used by ``outpost schedule probe`` with its own drivers and, inside the agent, with the
running agent's drivers (same connections, same sessions). A probe only reads: it calls
``Driver.prepare`` on groups of its own and ``Driver.read``; it never writes.

Points are read per device in chunks of ``chunk`` points (the driver plans the requests of a
chunk as it plans a poll group). A point's *response time* is the time of the request that
carried it: the driver stamps each point with the time its response arrived, so the gaps
between distinct stamps within a chunk are the requests' durations.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from outpost.drivers.base import Driver, PointGroup
from outpost.point_schedules.model import Point
from outpost.point_schedules.quality import QUALITY_LABEL, Quality

DEFAULT_CHUNK = 32


@dataclass(slots=True)
class PointProbe:
    point_id: str
    device: str
    address: str
    value: float | None
    quality: str  # good, bad:timeout, ...; "skipped" when the protocol cannot be read once
    reason: str
    response_ms: float | None

    @property
    def good(self) -> bool:
        return self.quality == "good"


@dataclass(slots=True)
class DeviceProbe:
    device: str
    protocol: str
    reachable: bool = False
    good: int = 0
    bad: int = 0
    skipped: int = 0
    slowest_ms: float | None = None
    requests: int = 0
    error: str = ""


@dataclass(slots=True)
class ProbeReport:
    points: list[PointProbe] = field(default_factory=list)
    devices: list[DeviceProbe] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every point that could be read once was read good (skipped points do not count)."""
        return all(p.good or p.quality == "skipped" for p in self.points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "points": [asdict(p) for p in self.points],
            "devices": [asdict(d) for d in self.devices],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeReport:
        return cls(
            points=[PointProbe(**p) for p in data.get("points", [])],
            devices=[DeviceProbe(**d) for d in data.get("devices", [])],
        )


def _reason(code: int) -> str:
    if code == Quality.GOOD:
        return ""
    return {
        Quality.BAD_COMM_FAILURE: "no connection to the device",
        Quality.BAD_TIMEOUT: "the device did not answer in time",
        Quality.BAD_CONFIG_ERROR: "the device has no such address, or the type does not fit it",
        Quality.BAD_DEVICE_ERROR: "the device answered with an error (e.g. no such register)",
        Quality.UNCERTAIN_OUT_OF_RANGE: "value outside min/max",
        Quality.BAD_OUT_OF_RANGE: "value outside min/max",
    }.get(Quality(code), QUALITY_LABEL.get(code, str(code)))


async def probe_points(
    drivers: Mapping[str, Driver],
    points: Sequence[Point],
    *,
    protocols: Mapping[str, str],
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> ProbeReport:
    """Read ``points`` once; devices run side by side, a device's chunks one after another.

    ``drivers``: device id -> driver (a device missing here is reported, e.g. disabled or a
    config error). ``progress(n)`` is called with the number of points just finished."""
    by_device: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        by_device[p.device].append(p)
    results: dict[str, tuple[DeviceProbe, list[PointProbe]]] = {}

    async def one(device: str, pts: list[Point]) -> None:
        results[device] = await _probe_device(
            device, drivers.get(device), pts, protocols.get(device, "?"), chunk, progress, clock
        )

    async with asyncio.TaskGroup() as tg:
        for device, pts in by_device.items():
            tg.create_task(one(device, pts))
    report = ProbeReport()
    order = {p.point_id: i for i, p in enumerate(points)}
    for device in by_device:
        dev, pts_out = results[device]
        report.devices.append(dev)
        report.points.extend(pts_out)
    report.points.sort(key=lambda p: order[p.point_id])
    return report


async def _probe_device(
    device: str,
    driver: Driver | None,
    points: list[Point],
    protocol: str,
    chunk: int,
    progress: Callable[[int], None] | None,
    clock: Callable[[], float],
) -> tuple[DeviceProbe, list[PointProbe]]:
    dev = DeviceProbe(device=device, protocol=protocol)
    out: list[PointProbe] = []
    if driver is None or not driver.polled:
        why = (
            "device not enabled or not configured"
            if driver is None
            else f"{protocol} is push-only: values arrive when the device publishes"
        )
        dev.error = why
        for p in points:
            quality = "bad:config_error" if driver is None else "skipped"
            out.append(PointProbe(p.point_id, device, str(p.address), None, quality, why, None))
        if driver is None:
            dev.bad = len(points)
        else:
            dev.skipped = len(points)
        if progress is not None:
            progress(len(points))
        return dev, out
    for start in range(0, len(points), chunk):
        part = points[start : start + chunk]
        group = PointGroup(device=device, points=list(part), interval=1.0)
        t0 = clock()
        try:
            driver.prepare(group)
            result = await driver.read(group)
        except Exception as exc:  # a driver must not raise for device trouble; report it anyway
            dev.error = f"{type(exc).__name__}: {exc}"
            for p in part:
                out.append(
                    PointProbe(p.point_id, device, str(p.address), None, "bad", dev.error, None)
                )
            dev.bad += len(part)
            if progress is not None:
                progress(len(part))
            continue
        # distinct response stamps = requests; each one's duration is the gap to the previous
        stamps = sorted({result.ts[i] for i in range(len(part)) if not math.isnan(result.ts[i])})
        durations: dict[float, float] = {}
        previous = t0
        for ts in stamps:
            durations[ts] = max(0.0, (ts - previous) * 1e3)
            previous = ts
        dev.requests += len(stamps)
        for i, p in enumerate(part):
            code = int(result.quality[i])
            value = result.value[i]
            ms = durations.get(result.ts[i])
            label = QUALITY_LABEL.get(code, str(code))
            out.append(
                PointProbe(
                    p.point_id,
                    device,
                    str(p.address),
                    None if math.isnan(value) else value,
                    label,
                    _reason(code),
                    None if ms is None else round(ms, 2),
                )
            )
            if code == Quality.GOOD:
                dev.good += 1
            else:
                dev.bad += 1
            if ms is not None and code not in (Quality.BAD_COMM_FAILURE, Quality.BAD_TIMEOUT):
                dev.reachable = True  # an answer, even an exception, means the device is there
            if ms is not None and (dev.slowest_ms is None or ms > dev.slowest_ms):
                dev.slowest_ms = round(ms, 2)
        if progress is not None:
            progress(len(part))
    if not dev.reachable and not dev.error:
        dev.error = next((p.reason for p in out if p.reason), "")
    return dev, out
