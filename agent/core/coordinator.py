"""One coordinator per device, in the manner of Home Assistant's DataUpdateCoordinator: it
owns the driver, polls its point groups and fans the results out through the pipeline.
Nothing else talks to the device for reads: the runtime drives ``poll`` from the scheduler for
polled drivers and runs ``stream`` for push drivers (``Runtime._build_scheduler``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import structlog

from outpost.agent.core.pipeline import Pipeline
from outpost.drivers.base import Driver, PointGroup, PollResult
from outpost.point_schedules.quality import Quality

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class DeviceHealth:
    connected: bool = False
    last_ok_ts: float | None = None
    last_poll_ts: float | None = None
    down_since: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "connected": self.connected,
            "last_ok_ts": self.last_ok_ts,
            "down_since": self.down_since,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
        }


class DeviceCoordinator:
    def __init__(self, device_id: str, driver: Driver, pipeline: Pipeline) -> None:
        self.device_id = device_id
        self.driver = driver
        self.pipeline = pipeline
        self.groups: list[PointGroup] = []
        self.health = DeviceHealth()
        self._alarm_positions: dict[int, list[tuple[int, str]]] = {}
        # per group: its global index as a ``range`` when contiguous (the pipeline's block
        # path then skips comparing a list of every index on each poll)
        self._index: dict[int, Sequence[int]] = {}

    def set_groups(self, groups: Sequence[PointGroup]) -> None:
        self.groups = list(groups)
        for g in self.groups:
            self.driver.prepare(g)
        self._index = {id(g): _as_range(g.index) for g in self.groups}
        self.refresh_alarm_positions()

    def refresh_alarm_positions(self) -> None:
        self._alarm_positions = {id(g): self.pipeline.alarm_positions(g.index) for g in self.groups}

    async def poll(self, group: PointGroup) -> None:
        result = await self.driver.read(group)
        self._account(result)
        key = id(group)
        self.pipeline.ingest(
            self._index.get(key, group.index), result, self._alarm_positions.get(key, ())
        )

    async def stream(self, group: PointGroup) -> None:
        """Push drivers: run the driver's stream, every update going through ``push``."""
        await self.driver.stream(partial(self.push, group))

    def push(self, group: PointGroup, positions: Sequence[int], result: PollResult) -> None:
        """Sink for push drivers: ``positions`` index ``group.points``."""
        index = group.index
        self._account(result)
        global_index = [index[p] for p in positions]
        self.pipeline.ingest(global_index, result, self.pipeline.alarm_positions(global_index))

    def _account(self, result: PollResult) -> None:
        now = time.time()
        h = self.health
        h.last_poll_ts = now
        n = len(result)
        if n == 0:
            return
        q = result.quality
        # every point failing for comms implies the first one did: one look, not two counts
        if (q[0] == _COMM or q[0] == _TIMEOUT) and q.count(_COMM) + q.count(_TIMEOUT) == n:
            h.consecutive_failures += 1
            if h.down_since is None:
                h.down_since = now
            if h.connected:
                log.warning(
                    "device.down", device=self.device_id, reason=Quality(result.quality[0]).label
                )
            h.connected = False
            h.last_error = Quality(result.quality[0]).label
        else:
            if not h.connected and h.consecutive_failures:
                log.info("device.up", device=self.device_id, after_failures=h.consecutive_failures)
            h.connected = True
            h.consecutive_failures = 0
            h.down_since = None
            h.last_ok_ts = now
            h.last_error = None


_COMM = int(Quality.BAD_COMM_FAILURE)
_TIMEOUT = int(Quality.BAD_TIMEOUT)


def _as_range(index: Sequence[int]) -> Sequence[int]:
    n = len(index)
    if n and index[-1] - index[0] == n - 1 and list(range(index[0], index[0] + n)) == index:
        return range(index[0], index[0] + n)
    return index
