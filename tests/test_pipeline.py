"""Report-by-exception filter and live cache (agent/pipeline.py)."""

from __future__ import annotations

import math
import random
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


# ---------------------------------------------------------------- block filter == per-point rule


def _reference(
    state: dict[int, tuple[float, float, int]],
    index: list[int],
    result: PollResult,
    deadband: list[float],
    heartbeat: list[float],
    keys: list[int],
) -> list[tuple[float, int, float, int]]:
    """The report-by-exception rule written out plainly, one point at a time."""
    rows = []
    for j, i in enumerate(index):
        ts, v, q = result.ts[j], result.value[j], result.quality[j]
        s_ts, s_v, s_q = state.get(i, (-math.inf, math.nan, 255))
        if (
            q != s_q
            or ts - s_ts >= heartbeat[i]
            or abs(v - s_v) > deadband[i]
            or math.isnan(v) != math.isnan(s_v)
        ):
            state[i] = (ts, v, q)
            rows.append((ts, keys[i], v, q))
    return rows


def _random_site(rng: random.Random, n: int) -> tuple[list[float], list[float], PointTable]:
    deadband = [rng.choice([0.0, 0.0, 0.5, 3.0]) for _ in range(n)]
    heartbeat = [rng.choice([2.5, 5.0, 300.0]) for _ in range(n)]
    pts = [
        Point(
            f"p.{i}",
            "d",
            ModbusAddress("hr", i),
            DataType.INT16,
            deadband=deadband[i],
            heartbeat=heartbeat[i],
        )
        for i in range(n)
    ]
    return deadband, heartbeat, PointTable(Schedule(tuple(pts), "v1"), [100 + i for i in range(n)])


def _random_poll(rng: random.Random, ts: float, prev: list[float], mode: str) -> PollResult:
    """A block where nothing, everything or some things changed, sometimes with NaN/inf/bad."""
    n = len(prev)
    values = [v if math.isfinite(v) else 7.0 for v in prev]  # NaN/inf last only one poll
    quality = [0] * n
    for j in range(n):
        if mode == "all" or (mode == "some" and rng.random() < 0.3):
            values[j] = prev[j] + rng.choice([0.25, 1.0, 5.0, -2.0])
        if mode == "some" and rng.random() < 0.05:
            values[j] = rng.choice([math.nan, math.inf, -0.0, 0.0])
        if mode == "some" and rng.random() < 0.05:
            quality[j] = rng.choice([int(Quality.BAD_COMM_FAILURE), 64])
    prev[:] = values
    return PollResult(array("d", [ts] * n), array("d", values), array("B", quality))


def test_block_filter_stores_exactly_what_the_per_point_rule_stores() -> None:
    rng = random.Random(14)
    n = 40
    deadband, heartbeat, block_table = _random_site(rng, n)
    _, _, scattered_table = _random_site(random.Random(14), n)
    keys = [100 + i for i in range(n)]
    block_sink, scattered_sink = ListSink(), ListSink()
    block = Pipeline(block_table, block_sink)
    scattered = Pipeline(scattered_table, scattered_sink)
    state: dict[int, tuple[float, float, int]] = {}
    prev = [float(rng.randrange(100)) for _ in range(n)]
    order = list(range(n))
    modes = ["all", "none", "some", "none", "all", "some", "some", "none"]
    expected_total = 0
    for step in range(200):
        ts = 1000.0 + step
        result = _random_poll(rng, ts, prev, modes[step % len(modes)])
        expected = _reference(state, order, result, deadband, heartbeat, keys)
        expected_total += len(expected)
        block_sink.rows.clear()
        assert block.ingest(range(n), result) == len(expected)
        assert _same_rows(block_sink.rows, expected)
        # the same readings in a scattered order take the per-point path
        perm = rng.sample(order, n)
        shuffled = PollResult(
            array("d", [result.ts[i] for i in perm]),
            array("d", [result.value[i] for i in perm]),
            array("B", [result.quality[i] for i in perm]),
        )
        scattered_sink.rows.clear()
        scattered.ingest(perm, shuffled)
        assert _same_rows(sorted(scattered_sink.rows, key=lambda r: r[1]), expected)
        for i in order:
            assert _same(block_table.value[i], result.value[i])
            assert block_table.quality[i] == result.quality[i]
    assert block.stats.readings == scattered.stats.readings == 200 * n
    assert block.stats.stored == scattered.stats.stored == expected_total
    assert block.stats.bad == scattered.stats.bad > 0
    assert 0 < expected_total < 200 * n  # both "all stored" and "some stored" blocks ran


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _same_rows(
    got: list[tuple[float, int, float, int]], want: list[tuple[float, int, float, int]]
) -> bool:
    return len(got) == len(want) and all(
        g[0] == w[0] and g[1] == w[1] and _same(g[2], w[2]) and g[3] == w[3]
        for g, w in zip(got, want, strict=True)
    )


def test_block_filter_with_no_change_stores_nothing_and_keeps_the_live_cache() -> None:
    table, sink, pipe = _table(deadband=0.0)
    pipe.ingest(range(2), _result(100.0, [3.0, 4.0]))
    sink.rows.clear()
    assert pipe.ingest(range(2), _result(101.0, [3.0, 4.0])) == 0
    assert sink.rows == []
    assert table.ts[0] == 101.0 and table.stored_ts[0] == 100.0


def test_last_change_is_when_the_value_last_moved_block_and_scattered() -> None:
    """The status page's "last change": the first reading counts, a repeated value does not,
    a NaN (bad) reading is not a change of value; both paths agree; a reload keeps it."""
    for index in ([0, 1], [1, 0]):  # contiguous (block) and scattered
        table, _, pipe = _table(deadband=0.0)

        def changed(table: PointTable = table) -> list[float | None]:
            return [table.live(i).changed for i in range(2)]

        assert changed() == [None, None]
        values = {0: 20.0, 1: 1.0}
        pipe.ingest(index, _result(100.0, [values[i] for i in index]))
        assert changed() == [100.0, 100.0]
        values[0] = 21.0
        pipe.ingest(index, _result(101.0, [values[i] for i in index]))
        assert changed() == [101.0, 100.0]
        values[1] = math.nan  # bad reading: no value change
        bad = [int(Quality.BAD) if i == 1 else 0 for i in index]
        pipe.ingest(index, _result(102.0, [values[i] for i in index], bad))
        assert changed() == [101.0, 100.0]
        values[1] = 2.0
        pipe.ingest(index, _result(103.0, [values[i] for i in index]))
        assert changed() == [101.0, 103.0]
        pipe.ingest(index, _result(104.0, [values[i] for i in index]))  # nothing moved
        assert changed() == [101.0, 103.0]
        values = {0: 22.0, 1: 3.0}  # every value moved (the block's one-pass path)
        pipe.ingest(index, _result(105.0, [values[i] for i in index]))
        assert changed() == [105.0, 105.0]
        values[1] = 4.0
        pipe.ingest(index, _result(106.0, [values[i] for i in index]))
        assert changed() == [105.0, 106.0]
        reloaded = PointTable(table.schedule, [10, 11])
        reloaded.carry_over(table)
        assert [reloaded.live(i).changed for i in range(2)] == [105.0, 106.0]
