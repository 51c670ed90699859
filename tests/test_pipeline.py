"""Report-by-exception filter and live cache (agent/pipeline.py)."""

from __future__ import annotations

import math
from array import array

from outpost.agent.core.pipeline import Pipeline
from outpost.agent.core.points import PointTable
from outpost.drivers.base import PollResult
from outpost.point_schedules.model import DataType, ModbusAddress, Point, Schedule
from outpost.point_schedules.quality import Quality


class ListSink:
    """Collects what the pipeline would store (a stand-in for our own Buffer boundary)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, int, float, int]] = []

    def append(self, ts, keys, values, quality) -> None:  # type: ignore[no-untyped-def]
        self.rows.extend(zip(ts, keys, values, quality, strict=True))


def _table(deadband: float = 0.5, heartbeat: float = 60.0) -> tuple[PointTable, ListSink, Pipeline]:
    pts = [
        Point(
            "p.a",
            "d",
            ModbusAddress("hr", 0),
            DataType.INT16,
            deadband=deadband,
            heartbeat=heartbeat,
        ),
        Point(
            "p.b", "d", ModbusAddress("hr", 1), DataType.INT16, deadband=0.0, heartbeat=heartbeat
        ),
    ]
    table = PointTable(Schedule(tuple(pts), "v1"), [10, 11])
    sink = ListSink()
    return table, sink, Pipeline(table, sink)


def _result(ts: float, values: list[float], q: list[int] | None = None) -> PollResult:
    n = len(values)
    return PollResult(array("d", [ts] * n), array("d", values), array("B", q or [0] * n))


def test_first_reading_is_stored_then_deadband_filters() -> None:
    table, sink, pipe = _table()
    pipe.ingest([0, 1], _result(100.0, [20.0, 1.0]))
    assert [(k, v) for _, k, v, _ in sink.rows] == [(10, 20.0), (11, 1.0)]
    sink.rows.clear()
    pipe.ingest([0, 1], _result(101.0, [20.4, 1.0]))  # within deadband; b unchanged
    assert sink.rows == []
    assert table.value[0] == 20.4  # live cache always holds the newest value
    pipe.ingest([0, 1], _result(102.0, [20.6, 1.0]))  # moved 0.6 from last STORED (20.0)
    assert [(k, v) for _, k, v, _ in sink.rows] == [(10, 20.6)]


def test_zero_deadband_stores_every_change_but_not_repeats() -> None:
    _, sink, pipe = _table()
    for i, v in enumerate([1.0, 1.0, 2.0, 2.0, 1.0]):
        pipe.ingest([1], _result(100.0 + i, [v]))
    assert [v for _, _, v, _ in sink.rows] == [1.0, 2.0, 1.0]


def test_heartbeat_stores_unchanged_value() -> None:
    _, sink, pipe = _table(heartbeat=10.0)
    pipe.ingest([0], _result(100.0, [5.0]))
    pipe.ingest([0], _result(105.0, [5.0]))
    pipe.ingest([0], _result(110.0, [5.0]))  # heartbeat expired
    pipe.ingest([0], _result(115.0, [5.0]))
    assert [t for t, _, _, _ in sink.rows] == [100.0, 110.0]


def test_quality_change_is_stored_both_ways() -> None:
    table, sink, pipe = _table()
    pipe.ingest([0], _result(100.0, [5.0]))
    pipe.ingest([0], _result(101.0, [math.nan], [Quality.BAD_COMM_FAILURE]))
    pipe.ingest([0], _result(102.0, [math.nan], [Quality.BAD_COMM_FAILURE]))  # repeat: not stored
    pipe.ingest([0], _result(103.0, [5.0]))  # back to good, same value: stored (quality changed)
    assert [(t, q) for t, _, _, q in sink.rows] == [
        (100.0, 0),
        (101.0, Quality.BAD_COMM_FAILURE),
        (103.0, 0),
    ]
    assert table.live(0).quality == "good"


def test_alarm_hook_sees_only_alarm_points() -> None:
    seen: list[tuple[str, float]] = []
    table, sink, _ = _table()
    pipe = Pipeline(table, sink, alarm_hook=lambda pid, ts, v, q: seen.append((pid, v)))
    pipe.set_alarm_points(frozenset({"p.b"}))
    positions = pipe.alarm_positions([0, 1])
    pipe.ingest([0, 1], _result(100.0, [1.0, 2.0]), positions)
    assert seen == [("p.b", 2.0)]


def test_carry_over_keeps_live_and_rbe_state_on_reload() -> None:
    table, _sink, pipe = _table()
    pipe.ingest([0, 1], _result(100.0, [20.0, 1.0]))
    new = PointTable(table.schedule, [10, 11])
    new.carry_over(table)
    assert new.value[0] == 20.0 and new.stored_value[0] == 20.0
