"""poll result → live cache → alarm hooks → report-by-exception → buffer.

One call per polled group. The loop body is the hottest Python in the agent: it reads and
writes flat arrays by index and appends to four lists; everything per-group (which positions
carry alarms, buffer keys) is resolved before the loop.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from outpost.agent.core.points import PointTable
from outpost.drivers.base import PollResult
from outpost.point_schedules.quality import Quality

AlarmHook = Callable[[str, float, float, int], None]  # point_id, ts, value, quality


class ReadingSink(Protocol):
    """What the pipeline stores into (``buffer.store.Buffer`` is one)."""

    def append(
        self,
        ts: Sequence[float],
        keys: Sequence[int],
        values: Sequence[float],
        quality: Sequence[int],
    ) -> None: ...


@dataclass(slots=True)
class PipelineStats:
    readings: int = 0
    stored: int = 0
    bad: int = 0


class Pipeline:
    def __init__(
        self, table: PointTable, sink: ReadingSink, alarm_hook: AlarmHook | None = None
    ) -> None:
        self.table = table
        self.sink = sink
        self.alarm_hook = alarm_hook
        self.stats = PipelineStats()
        self._alarm_ids: frozenset[str] = frozenset()

    def set_alarm_points(self, point_ids: frozenset[str]) -> None:
        self._alarm_ids = point_ids

    def alarm_positions(self, index: Sequence[int]) -> list[tuple[int, str]]:
        """Positions within a group whose points have alarm definitions (precomputed per group)."""
        ids = self.table.ids
        return [(j, ids[i]) for j, i in enumerate(index) if ids[i] in self._alarm_ids]

    def ingest(
        self,
        index: Sequence[int],
        result: PollResult,
        alarm_positions: Sequence[tuple[int, str]] = (),
    ) -> int:
        """Apply one poll result for the points at global ``index``; returns rows stored."""
        t = self.table
        live_ts, live_value, live_quality = t.ts, t.value, t.quality
        s_value, s_ts, s_quality = t.stored_value, t.stored_ts, t.stored_quality
        deadband, heartbeat, keys = t.deadband, t.heartbeat, t.keys
        r_ts, r_value, r_quality = result.ts, result.value, result.quality

        out_ts: list[float] = []
        out_key: list[int] = []
        out_value: list[float] = []
        out_quality: list[int] = []
        bad = 0
        for j, i in enumerate(index):
            ts = r_ts[j]
            v = r_value[j]
            q = r_quality[j]
            live_ts[i] = ts
            live_value[i] = v
            live_quality[i] = q
            if q >= Quality.BAD:
                bad += 1
            if (
                q != s_quality[i]
                or ts - s_ts[i] >= heartbeat[i]
                or abs(v - s_value[i]) > deadband[i]
                or (v != v) != (s_value[i] != s_value[i])  # NaN appeared/disappeared
            ):
                s_quality[i] = q
                s_ts[i] = ts
                s_value[i] = v
                out_ts.append(ts)
                out_key.append(keys[i])
                out_value.append(v)
                out_quality.append(q)

        if alarm_positions and self.alarm_hook is not None:
            hook = self.alarm_hook
            for j, pid in alarm_positions:
                hook(pid, r_ts[j], r_value[j], r_quality[j])

        n = len(index)
        stored = len(out_ts)
        self.stats.readings += n
        self.stats.bad += bad
        if stored:
            self.stats.stored += stored
            self.sink.append(
                array("d", out_ts),
                array("q", out_key),
                array("d", out_value),
                array("B", out_quality),
            )
        return stored
