"""The columnar writer's fast encode path (issue 14): exact timestamps, keys and values from
the pipeline's typed arrays, the same refusals as before, and a flush behind a long backlog."""

from __future__ import annotations

import math
import random
from array import array
from pathlib import Path

import pytest

from outpost.buffer.chunks import decode_chunk, encode_chunk, seconds_to_ms
from outpost.buffer.columnar_store import ColumnarBuffer


def _cases() -> list[list[float]]:
    rng = random.Random(5)
    out: list[list[float]] = []
    for _ in range(60):
        n = rng.randint(1, 4000)
        pick = [1.7e9 + k * 0.0015 for k in range(rng.randint(1, 30))]
        out.append([rng.uniform(-1e9, 2e9) for _ in range(n)])  # no runs
        out.append(sorted(rng.choice(pick) for _ in range(n)))  # runs, ordered
        out.append([rng.choice(pick[:3]) for _ in range(n)])  # runs, shuffled
        out.append([0.0005 * rng.randint(-3, 3) for _ in range(n)])  # halves: round to even
        runs = sorted(rng.choice(pick) for _ in range(n))
        for _ in range(3):
            runs[rng.randrange(n)] = rng.uniform(0, 2e9)  # ordered runs, a few strays
        out.append(runs)
    return out


def test_seconds_to_ms_is_round_of_every_timestamp() -> None:
    for i, ts in enumerate(_cases()):
        want = [round(t * 1000.0) for t in ts]
        ms, lo, hi = seconds_to_ms(array("d", ts) if i % 2 else ts)
        assert ms.typecode == "q"
        assert list(ms) == want, i
        assert (lo, hi) == (min(want), max(want)), i


def _polls_interleaved(rng: random.Random, devices: int, batch: int) -> list[float]:
    """A commit as the agent hands it over: each device poll's batch in order (one timestamp
    per 125-register request), the batches of many devices interleaved by completion time."""
    polls = []
    for _ in range(devices):
        t1 = 1_763_900_000.0 + rng.random()
        polls.append((t1 + rng.uniform(0.001, 0.01), t1))
    polls.sort()
    out: list[float] = []
    for t2, t1 in polls:
        first = min(125, batch)
        out += [t1] * first + [t2] * (batch - first)
    return out


def test_seconds_to_ms_is_exact_where_runs_only_look_alike() -> None:
    rng = random.Random(11)
    t, u = 1_763_900_000.125, 1_763_900_000.5
    cases: list[list[float]] = [
        _polls_interleaved(rng, 250, 200),
        _polls_interleaved(rng, 40, 130) + _polls_interleaved(rng, 40, 10),
        # Strays inside runs where neither the guessed lengths nor the galloping probes look:
        # only the byte check of the whole run sees them.
        [t] * 200 + [u] * 75 + [t] * 125 + [u] * 75 + [t] * 60 + [u] + [t] * 64 + [u] * 75,
        [t] * 100 + [u] + [t] * 27 + [u] * 300,
        # 0.0 == -0.0 but their bytes differ: both convert to 0 whichever path takes them.
        [0.0] * 40 + [-0.0] * 40 + [0.0, -0.0] * 30,
    ]
    for i, ts in enumerate(cases):
        want = [round(x * 1000.0) for x in ts]
        for col in (ts, array("d", ts)):
            ms, lo, hi = seconds_to_ms(col)
            assert list(ms) == want, i
            assert (lo, hi) == (min(want), max(want)), i
    ints = [1_763_900_000] * 50 + [1_763_900_001] * 3
    assert list(seconds_to_ms(ints)[0]) == [x * 1000 for x in ints]


def test_seconds_to_ms_refuses_what_round_refuses() -> None:
    with pytest.raises(ValueError, match="NaN"):
        seconds_to_ms(array("d", [1.0] * 100 + [math.nan] + [1.0] * 100))
    with pytest.raises(OverflowError):
        seconds_to_ms(array("d", [2.0] * 50 + [math.inf]))
    with pytest.raises(ValueError, match="no timestamps"):
        seconds_to_ms(array("d"))


def test_int64_keys_encode_like_uint32_and_out_of_range_keys_are_refused() -> None:
    rng = random.Random(2)
    n = 3000
    ts = [1_700_000_000_000 + i // 100 for i in range(n)]
    keys = [rng.randint(0, 2**32 - 1) for _ in range(n)]
    values = [rng.random() * 100 for _ in range(n)]
    quality = [rng.choice((0, 0, 0, 129)) for _ in range(n)]
    plain = encode_chunk(7, ts, keys, values, quality)
    typed = encode_chunk(
        7, array("q", ts), array("q", keys), array("d", values), array("B", quality)
    )
    assert typed == plain
    cols = decode_chunk(typed)
    assert list(cols.keys) == keys and list(cols.ts_ms) == ts and list(cols.values) == values
    for bad in (-1, 2**32):
        with pytest.raises(OverflowError):
            encode_chunk(1, array("q", [5, 5]), array("q", [1, bad]), [0.0, 0.0], [0, 0])


def test_mixed_batches_commit_exactly_and_a_bad_one_is_dropped_alone(tmp_path: Path) -> None:
    buf = ColumnarBuffer(tmp_path / "b.db", commit_interval=3600.0, quick_check=False)
    buf.open()
    try:
        k = buf.point_keys(["a", "b", "c"])
        t = 1_763_900_000.0
        buf.append(array("d", [t, t, t + 0.0005]), array("q", k), array("d", [1, 2, 3]), b"\0\0\0")
        buf.append([t + 1.0, t + 1.0], [k[0], k[2]], [4.0, math.nan], [0, 129])  # plain lists
        buf.append(array("d", [math.nan]), array("q", k[:1]), array("d", [9.0]), b"\0")  # bad ts
        buf.append(
            array("d", [t + 2.0] * 40), array("q", [k[1]] * 40), array("d", range(40)), bytes(40)
        )
        buf.flush_sync(30)
        rows = buf.read_unsynced(100)
        assert rows.seq == list(range(1, 46))
        assert rows.ts[:5] == [t, t, round((t + 0.0005) * 1000) / 1000, t + 1.0, t + 1.0]
        assert rows.point_id[:5] == ["a", "b", "c", "a", "c"]
        assert rows.value[:5] == [1.0, 2.0, 3.0, 4.0, None]
        assert rows.quality[:5] == [0, 0, 0, 0, 129]
        assert rows.value[5:] == [float(i) for i in range(40)]
        assert buf.dropped_rows == 1
    finally:
        buf.close()


def test_a_flush_behind_a_long_backlog_does_not_wait_for_the_commit_timer(tmp_path: Path) -> None:
    # One batch per transaction and a commit timer of an hour: the backlog is many times the
    # writer's 20 transactions per round. The flush must still resolve (it used to sleep a
    # whole commit_interval per round once the producer stopped appending).
    buf = ColumnarBuffer(
        tmp_path / "b.db", commit_interval=3600.0, commit_rows=1, quick_check=False
    )
    buf.open()
    try:
        (key,) = buf.point_keys(["p"])
        t = 1_763_900_000.0
        for i in range(2000):
            buf.append(array("d", [t + i]), array("q", [key]), array("d", [float(i)]), b"\0")
        buf.flush_sync(60)
        assert buf.last_seq == 2000
    finally:
        buf.close()
