"""The columnar buffer (issue 14, not the default): differential tests against the row
buffer on the same appends and acknowledgements, the size bound over whole chunks, and an
exactly-once sync through the real uplink into a real receiver."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path

from outpost.buffer import columnar, schema
from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.inspect import export_readings, file_stats, open_readonly
from outpost.buffer.models import ReadingRows
from outpost.buffer.source import SyncSource
from outpost.buffer.store import Buffer
from outpost.point_schedules.quality import Quality
from tests.receiver_fixtures import ReceiverHandle
from tests.test_buffer_crash import _run_and_kill
from tests.uplink_harness import (
    Writer,
    all_synced,
    assert_identical,
    cloud_config,
    make_uplink,
    wait_for,
)

pytest_plugins = ("tests.receiver_fixtures",)

POINTS = [f"dev-{i // 10}.p{i % 10}" for i in range(30)]


def _pair(tmp_path: Path, **kw: object) -> tuple[Buffer, Buffer]:
    kw.setdefault("commit_interval", 0.05)
    kw.setdefault("maintenance_interval", 3600.0)
    rows = Buffer(tmp_path / "rows.db", **kw)  # type: ignore[arg-type]
    cols = ColumnarBuffer(tmp_path / "cols.db", **kw)  # type: ignore[arg-type]
    rows.open()
    cols.open()
    return rows, cols


def _append_same(bufs: tuple[Buffer, ...], rounds: int, rng: random.Random) -> None:
    keys = [b.point_keys(POINTS) for b in bufs]
    assert all(k == keys[0] for k in keys)
    t = 1_795_000_000.0
    for r in range(rounds):
        n = rng.randint(1, 200)
        ts = [t + r + i * 0.001 for i in range(n)]
        ks = [keys[0][rng.randrange(len(POINTS))] for _ in range(n)]
        vs = [float("nan") if rng.random() < 0.03 else rng.uniform(-1e3, 1e3) for _ in range(n)]
        qs = [int(Quality.BAD_COMM_FAILURE) if v != v else 0 for v in vs]
        for b in bufs:
            b.append(ts, ks, vs, qs)
            if r % 5 == 0:
                b.append_event(t + r, "alarm", POINTS[r % len(POINTS)], None, {"r": r})
            if r % 3 == 0:
                b.flush_sync(10)  # several commits: several chunks
    for b in bufs:
        b.flush_sync(10)


def _same(a: ReadingRows, b: ReadingRows) -> None:
    assert a.seq == b.seq
    assert a.ts == b.ts and a.point_id == b.point_id and a.quality == b.quality
    assert a.value == b.value


def test_columnar_buffer_reads_exactly_what_the_row_buffer_reads(tmp_path: Path) -> None:
    rows, cols = _pair(tmp_path)
    try:
        assert isinstance(cols, SyncSource)
        _append_same((rows, cols), 60, random.Random(5))
        assert rows.last_seq == cols.last_seq > 1000
        top = rows.last_seq
        rng = random.Random(9)
        for _ in range(20):
            limit, after = rng.randint(1, 700), rng.choice([None, rng.randint(0, top)])
            _same(rows.read_unsynced(limit, after), cols.read_unsynced(limit, after))
            _same(rows.read_latest(limit), cols.read_latest(limit))
        # out-of-order acks (islands), a cursor move, a dead letter: the same on both
        for b in (rows, cols):
            b.mark_range_synced(top - 300, top - 200)
            b.mark_range_synced(100, 250)
            b.mark_synced(40)
            b.add_rejected(400, 410, 422, "test", b"x")
        for _ in range(20):
            limit, after = rng.randint(1, 700), rng.choice([None, rng.randint(0, top)])
            _same(rows.read_unsynced(limit, after), cols.read_unsynced(limit, after))
            _same(rows.read_latest(limit), cols.read_latest(limit))
        for pid in POINTS[:3]:
            _same(rows.history(pid, 0.0), cols.history(pid, 0.0))
            _same(
                rows.history(pid, 1_795_000_010.0, 1_795_000_030.0, limit=7),
                cols.history(pid, 1_795_000_010.0, 1_795_000_030.0, limit=7),
            )
        a, b = rows.stats(), cols.stats()
        for field in (
            "rows",
            "unsynced_rows",
            "last_seq",
            "synced_through",
            "events",
            "unsynced_events",
            "rejected_batches",
        ):
            assert getattr(a, field) == getattr(b, field), field
        assert b.size_bytes < a.size_bytes
        assert [e.id - rows.stats().last_event_id for e in rows.read_unsynced_events(50)] == [
            e.id - cols.stats().last_event_id for e in cols.read_unsynced_events(50)
        ]
    finally:
        rows.close()
        cols.close()


def test_columnar_size_bound_evicts_whole_chunks_synced_first_counted(tmp_path: Path) -> None:
    lost: list[int] = []
    b = ColumnarBuffer(
        tmp_path / "cols.db",
        max_size_mb=0.5,
        commit_interval=0.05,
        maintenance_interval=3600.0,
        on_unsynced_evicted=lost.append,
    )
    b.open()
    try:
        keys = b.point_keys(POINTS)
        rng = random.Random(2)
        for _ in range(60):  # 60 chunks of 2,000 incompressible-ish readings
            n = 2000
            b.append(
                [time.time() + i * 1e-3 for i in range(n)],
                [keys[i % len(keys)] for i in range(n)],
                [rng.random() for _ in range(n)],
                [0] * n,
            )
            b.flush_sync(10)
        b.mark_synced(10_000)  # five chunks synced
        b.run_maintenance()
        st = b.stats()
        first_left = b.read_unsynced(1).seq[0]
    finally:
        b.close()
    assert st.evicted_synced == 10_000  # the synced chunks went first
    assert st.evicted_unsynced > 0 and sum(lost) == st.evicted_unsynced
    assert st.evicted_unsynced % 2000 == 0  # whole chunks
    assert first_left == 10_000 + st.evicted_unsynced + 1
    assert st.synced_through == first_left - 1
    assert st.rows + st.evicted_synced + st.evicted_unsynced == st.last_seq == 120_000
    # live pages (free ones are reused by new chunks) and the WAL up to its cap (64 KB here)
    assert st.size_bytes - st.free_bytes <= 0.5 * 1024 * 1024 + 64 * 1024


async def test_columnar_buffer_syncs_exactly_once(receiver: ReceiverHandle, tmp_path: Path) -> None:
    gw = "gw-columnar"
    token = await receiver.enroll(gw)
    (tmp_path / "gateway.token").write_text(token)
    buf = ColumnarBuffer(tmp_path / "buffer.db", commit_interval=0.05, quick_check=False)
    buf.open()
    try:
        writer = Writer(buf, points=30)
        base = int(time.time() * 1000) - 600_000
        for i in range(200):
            writer.round(base + i * 1000)
        await buf.flush()
        everything = buf.read_unsynced(10**9)
        expected = [
            (p, round(t * 1000), v, q)
            for p, t, v, q in zip(
                everything.point_id,
                everything.ts,
                everything.value,
                everything.quality,
                strict=True,
            )
        ]
        event_ids = [e.id for e in buf.read_unsynced_events(10**6)]
        uplink = make_uplink(cloud_config(receiver.url, batch_size=700), gw, tmp_path, buf)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 60, "full sync")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        buf.close()
    assert len(expected) == 200 * 30
    assert_identical(expected, await receiver.readings(gw))
    assert await receiver.event_ids(gw) == event_ids != []


def test_file_tools_read_a_columnar_file_like_a_row_file(tmp_path: Path) -> None:
    rows, cols = _pair(tmp_path)
    try:
        _append_same((rows, cols), 30, random.Random(11))
        for b in (rows, cols):
            b.mark_range_synced(50, 80)
            b.mark_synced(20)
    finally:
        rows.close()
        cols.close()
    a, b = file_stats(tmp_path / "rows.db"), file_stats(tmp_path / "cols.db")
    for field in ("rows", "unsynced_rows", "last_seq", "synced_through", "events"):
        assert getattr(a, field) == getattr(b, field), field
    since = datetime.fromtimestamp(1_795_000_005, UTC)
    until = datetime.fromtimestamp(1_795_000_020, UTC)
    for fmt in ("csv", "jsonl"):
        for point in (None, POINTS[4]):
            outs = []
            for name in ("rows.db", "cols.db"):
                out = io.StringIO()
                export_readings(tmp_path / name, out, fmt, since, until, point)
                outs.append(out.getvalue())
            assert outs[0] == outs[1] and outs[0].count("\n") > 10


def _check_columnar_file(path: Path) -> tuple[int, int]:
    """Every stored reading holds what its seq implies, seqs contiguous from 1, events only
    after their readings (as the row test checks the table)."""
    with open_readonly(path) as conn:
        parts = columnar.read_range(conn, 0, None, 2**62)
        names = schema.point_names(conn)
        after = conn.execute(
            "SELECT max(json_extract(detail, '$.after_seq')), count(*) FROM events"
        ).fetchone()
    st = file_stats(path)
    n = sum(len(p) for p in parts)
    seqs = range(1, n + 1)
    assert [p.first_seq for p in parts] == list(accumulate([1, *(len(p) for p in parts[:-1])])), (
        "gap or overlap between chunks"
    )
    assert st.last_seq == n == st.rows
    ts = [t for p in parts for t in p.ts_ms]
    assert ts == [1_790_000_000_000 + s for s in seqs]
    assert [v for p in parts for v in p.values] == [s * 0.5 for s in seqs]
    assert [names[k] for p in parts for k in p.keys] == [f"dev-{s % 37:02d}.p" for s in seqs]
    assert [q for p in parts for q in p.quality] == [(0, 64, 129)[s % 3] for s in seqs]
    if after[1]:
        assert after[0] <= n  # an event is queued after its readings
    assert st.synced_through <= st.last_seq
    return st.last_seq, st.synced_through


def test_columnar_kill9_at_random_moments_loses_no_committed_reading(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rng = random.Random(20261204)
    flushed_max = synced_max = last_cursor = 0
    for seed in range(12):
        lines, err = _run_and_kill(path, seed, rng, "columnar")
        assert "Traceback" not in err, err
        for line in lines:
            word, _, num = line.partition(" ")
            if word == "START":
                assert int(num) >= flushed_max
            elif word == "FLUSHED":
                flushed_max = max(flushed_max, int(num))
            elif word == "SYNCED":
                synced_max = max(synced_max, int(num))
        top, cursor = _check_columnar_file(path)
        assert top >= flushed_max and cursor >= max(synced_max, last_cursor)
        last_cursor = cursor
    assert flushed_max > 1000, "the writer never got going; the test proved nothing"
    assert not list(tmp_path.glob("buffer.db.corrupt-*"))


def test_a_row_file_is_migrated_in_place_and_reads_the_same(tmp_path: Path) -> None:
    """Open a row-layout file (with islands, a moved cursor, dead letters, events and an
    eviction gap) as a ColumnarBuffer: every reading keeps its seq and content, the sync state
    is untouched, and the row table is empty afterwards."""
    old = Buffer(tmp_path / "rows.db", commit_interval=0.05, maintenance_interval=3600.0)
    old.open()
    try:
        _append_same((old,), 80, random.Random(21))
        top = old.last_seq
        old.mark_range_synced(200, 400)  # an island ...
        old.mark_range_synced(top - 50, top - 10)
        old.mark_synced(30)
        old.add_rejected(600, 605, 422, "test", b"x")
    finally:
        old.close()
    # ... that eviction empties in the middle: a gap in the seqs
    with sqlite3.connect(tmp_path / "rows.db") as conn:
        conn.execute("DELETE FROM readings WHERE seq BETWEEN 250 AND 300")
    conn.close()
    shutil.copy(tmp_path / "rows.db", tmp_path / "cols.db")
    rows = Buffer(tmp_path / "rows.db", commit_interval=0.05, maintenance_interval=3600.0)
    cols = ColumnarBuffer(tmp_path / "cols.db", commit_interval=0.05, maintenance_interval=3600.0)
    rows.open()
    cols.open()
    try:
        for limit, after in ((10**6, None), (100, 240), (77, None), (500, 0)):
            _same(rows.read_unsynced(limit, after), cols.read_unsynced(limit, after))
            _same(rows.read_latest(limit), cols.read_latest(limit))
        for pid in POINTS[:3]:
            _same(rows.history(pid, 0.0), cols.history(pid, 0.0))
        a, b = rows.stats(), cols.stats()
        for field in (
            "rows",
            "unsynced_rows",
            "last_seq",
            "synced_through",
            "events",
            "rejected_batches",
            "last_event_id",
        ):
            assert getattr(a, field) == getattr(b, field), field
        # and it goes on: the next commit continues the seq as a chunk
        _append_same((rows, cols), 3, random.Random(22))
        _same(rows.read_latest(50), cols.read_latest(50))
    finally:
        rows.close()
        cols.close()
    with sqlite3.connect(tmp_path / "cols.db") as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] > 1
    conn.close()


def test_columnar_retention_expires_what_the_row_buffer_expires(tmp_path: Path) -> None:
    rows, cols = _pair(tmp_path, retention_days=7)
    try:
        keys = rows.point_keys(POINTS)
        assert cols.point_keys(POINTS) == keys
        now = time.time()
        old = now - 10 * 86400
        for b in (rows, cols):
            for start in (old, old + 100, now):  # two old commits, one recent
                b.append(
                    [start + i for i in range(500)],
                    [keys[i % 30] for i in range(500)],
                    [float(i) for i in range(500)],
                    [0] * 500,
                )
                b.flush_sync(10)
            b.append_event(old, "alarm", "fsm", None, {})
            b.flush_sync(10)
            b.mark_synced(500)  # the first old commit only
            b.mark_events_synced(b.stats().last_event_id)
            b.run_maintenance()
        a, c = rows.stats(), cols.stats()
        assert a.expired_rows == c.expired_rows == 500
        assert (a.rows, a.events) == (c.rows, c.events) == (1000, 0)
        _same(rows.read_unsynced(10_000), cols.read_unsynced(10_000))
        _same(rows.history(POINTS[0], 0.0), cols.history(POINTS[0], 0.0))
    finally:
        rows.close()
        cols.close()
