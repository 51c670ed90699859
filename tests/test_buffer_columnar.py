"""The columnar buffer (issue 14, the default layout): differential tests against the row
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
from pathlib import Path

import pytest

from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.inspect import export_readings, file_stats
from outpost.buffer.models import ReadingRows
from outpost.buffer.schema import BufferFileError
from outpost.buffer.source import SyncSource
from outpost.buffer.store import Buffer
from outpost.point_schedules.quality import Quality
from tests.receiver_fixtures import ReceiverHandle
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


def test_a_columnar_file_is_refused_by_the_row_layout(tmp_path: Path) -> None:
    """``[buffer] layout = "rows"`` on a file the columnar layout wrote: a one-line error
    naming the setting, never readings hidden from sync and eviction."""
    path = tmp_path / "buffer.db"
    cols = ColumnarBuffer(path, commit_interval=0.05, quick_check=False)
    cols.open()
    keys = cols.point_keys(POINTS[:1])
    cols.append([time.time()], keys, [1.0], [0])
    cols.flush_sync(10)
    cols.close()
    rows = Buffer(path, quick_check=False)
    with pytest.raises(BufferFileError, match='layout = "columnar"'):
        rows.open()
    again = ColumnarBuffer(path, quick_check=False)
    again.open()
    try:
        assert again.read_unsynced(10).value == [1.0]
    finally:
        again.close()
