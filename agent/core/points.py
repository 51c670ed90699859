"""Per-point state in flat arrays, indexed by a point's position in the loaded schedule.

The hot path touches these arrays by integer index only: no dict lookup, no object per
reading. ``PointTable`` holds the live cache (newest polled value of every point) and the
report-by-exception state (what was last *stored*).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from outpost.point_schedules.model import Point, Schedule
from outpost.point_schedules.quality import QUALITY_LABEL, Quality

NEVER = 255  # quality code meaning "nothing stored yet" (real codes are < 255)


@dataclass(slots=True)
class LiveValue:
    point_id: str
    device: str
    value: float | None
    quality: str
    ts: float | None
    units: str
    #: when the value last moved to a new value (the first reading counts); None: no value yet
    changed: float | None = None


class PointTable:
    def __init__(self, schedule: Schedule, buffer_keys: Sequence[int]) -> None:
        self.schedule = schedule
        self.points: Sequence[Point] = schedule.points  # the schedule's tuple, not a copy
        self.ids: list[str] = [p.point_id for p in self.points]
        self.index: dict[str, int] = schedule.index()  # shared with the write service
        n = len(self.points)
        self.keys = array("q", buffer_keys)
        # live cache
        self.ts = array("d", [math.nan]) * n
        self.value = array("d", [math.nan]) * n
        self.quality = array("B", [NEVER]) * n
        self.changed_ts = array("d", [0.0]) * n  # 0.0: no value seen yet
        # report-by-exception state
        self.stored_value = array("d", [math.nan]) * n
        self.stored_ts = array("d", [-math.inf]) * n
        self.stored_quality = array("B", [NEVER]) * n
        self.deadband = array("d", [p.deadband for p in self.points])
        self.heartbeat = array("d", [p.heartbeat for p in self.points])

    def __len__(self) -> int:
        return len(self.points)

    def carry_over(self, old: PointTable) -> None:
        """After a schedule reload keep the live and RBE state of points that still exist, so a
        reload neither blanks the status page nor forces a burst of stores."""
        for i, pid in enumerate(self.ids):
            j = old.index.get(pid)
            if j is None:
                continue
            self.ts[i] = old.ts[j]
            self.value[i] = old.value[j]
            self.quality[i] = old.quality[j]
            self.changed_ts[i] = old.changed_ts[j]
            if old.points[j] == self.points[i]:
                self.stored_value[i] = old.stored_value[j]
                self.stored_ts[i] = old.stored_ts[j]
                self.stored_quality[i] = old.stored_quality[j]

    def good_values(self) -> dict[str, float]:
        """The latest value of every point whose last reading was good."""
        value, quality = self.value, self.quality
        return {
            pid: value[i]
            for i, pid in enumerate(self.ids)
            if quality[i] < Quality.UNCERTAIN and not math.isnan(value[i])
        }

    def live(self, i: int) -> LiveValue:
        p = self.points[i]
        q = self.quality[i]
        v = self.value[i]
        return LiveValue(
            point_id=p.point_id,
            device=p.device,
            value=None if math.isnan(v) else v,
            quality="unknown" if q == NEVER else QUALITY_LABEL[q],
            ts=None if math.isnan(self.ts[i]) else self.ts[i],
            units=p.units,
            changed=self.changed_ts[i] or None,
        )
