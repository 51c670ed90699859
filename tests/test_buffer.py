"""The SQLite store-and-forward buffer, on real files: sync cursor and range acks, size bound
eviction order, retention, corrupt-file recovery, events, exports, concurrency."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.inspect import export_events, export_readings, file_stats
from outpost.buffer.schema import BufferFileError
from outpost.buffer.source import SyncSource
from outpost.buffer.store import Buffer, BufferClosedError
from outpost.point_schedules.quality import Quality

POINTS = ["ahu-1.supply_temp", "cdu-01.flow", "pdu-a.kw"]


#: The layout every test of this module runs on (the ``layout`` fixture runs each twice).
_LAYOUT = {"name": "columnar"}


@pytest.fixture(params=["columnar", "rows"], autouse=True)
def layout(request: pytest.FixtureRequest) -> Iterator[str]:
    _LAYOUT["name"] = request.param
    yield request.param
    _LAYOUT["name"] = "columnar"


def _open(path: Path, **kw: object) -> Buffer:
    kw.setdefault("commit_interval", 0.05)
    kw.setdefault("maintenance_interval", 3600.0)  # tests trigger maintenance explicitly
    cls = ColumnarBuffer if _LAYOUT["name"] == "columnar" else Buffer
    buf = cls(path, **kw)  # type: ignore[arg-type]
    buf.open()
    return buf


@pytest.fixture
def buf(tmp_path: Path) -> Iterator[Buffer]:
    b = _open(tmp_path / "buffer.db")
    yield b
    b.close()


def _fill(
    buf: Buffer,
    n: int,
    *,
    t0: float | None = None,
    keys: list[int] | None = None,
    step: float = 0.001,
    value0: float = 0.0,
) -> tuple[int, int]:
    """Append n readings (value = value0 + i), flush; returns the (first, last) seq."""
    keys = keys or buf.point_keys(POINTS)
    t0 = time.time() if t0 is None else t0
    first = buf.last_seq + 1
    buf.append(
        array("d", [t0 + i * step for i in range(n)]),
        array("q", [keys[i % len(keys)] for i in range(n)]),
        array("d", [value0 + i for i in range(n)]),
        array("B", [int(Quality.GOOD)] * n),
    )
    buf.flush_sync(30)
    assert buf.last_seq == first + n - 1
    return first, buf.last_seq


def _seqs(path: Path) -> list[int]:
    """The seqs stored in the file, through the file tools' export (both layouts)."""
    out = io.StringIO()
    export_readings(path, out, "jsonl", None, None, None)
    return [json.loads(line)["seq"] for line in out.getvalue().splitlines()]


# ---------------------------------------------------------------- append, flush, read


def test_append_assigns_seq_in_order_and_reads_back_exactly(buf: Buffer) -> None:
    keys = buf.point_keys(POINTS)
    assert buf.point_keys(list(reversed(POINTS))) == list(reversed(keys))  # idempotent
    t = 1_795_000_000.123
    buf.append(
        [t, t + 1],
        [keys[0], keys[1]],
        [21.5, float("nan")],
        [Quality.GOOD, Quality.BAD_COMM_FAILURE],
    )
    buf.append(
        array("d", [t + 2]),
        array("q", [keys[2]]),
        array("d", [0.1 + 0.2]),
        array("B", [Quality.UNCERTAIN_OUT_OF_RANGE]),
    )
    buf.flush_sync(10)
    rows = buf.read_unsynced(10)
    assert rows.seq == [1, 2, 3]
    assert rows.point_id == POINTS
    assert rows.value == [21.5, None, 0.1 + 0.2]  # bit-exact float; NaN comes back as None
    assert rows.quality == [0, 129, 65]
    assert rows.ts == [1_795_000_000.123, 1_795_000_001.123, 1_795_000_002.123]
    st = buf.stats()
    assert (st.rows, st.unsynced_rows, st.last_seq, st.synced_through) == (3, 3, 3, 0)
    assert st.oldest_unsynced_age_s is not None and st.oldest_unsynced_age_s > 1000


def test_append_copies_columns_and_rejects_ragged_input(buf: Buffer) -> None:
    keys = buf.point_keys(POINTS)
    values = array("d", [1.0, 2.0])
    buf.append(array("d", [1.0, 2.0]), keys[:2], values, array("B", [0, 0]))
    values[0] = 99.0  # the caller reuses its array right away
    buf.flush_sync(10)
    assert buf.read_unsynced(10).value == [1.0, 2.0]
    with pytest.raises(ValueError, match="columns differ"):
        buf.append([1.0], keys[:2], [1.0, 2.0], [0, 0])


async def test_async_flush_waits_for_the_commit(tmp_path: Path) -> None:
    b = _open(tmp_path / "b.db", commit_interval=30.0)  # only flush can make it commit soon
    try:
        keys = b.point_keys(POINTS)
        b.append([time.time()], keys[:1], [1.0], [0])
        b.append_event(time.time(), "mode", "fsm", None, {"to": "normal"})
        assert b.pending_rows == 1
        await b.flush()
        assert b.pending_rows == 0
        assert b.last_seq == 1
        assert _seqs(tmp_path / "b.db") == [1]
        assert file_stats(tmp_path / "b.db").events == 1
    finally:
        b.close()


def test_group_commit_by_rows_without_waiting_for_the_interval(tmp_path: Path) -> None:
    b = _open(tmp_path / "b.db", commit_interval=60.0, commit_rows=100)
    try:
        keys = b.point_keys(POINTS)
        b.append([1.0] * 150, [keys[0]] * 150, [1.0] * 150, [0] * 150)
        deadline = time.monotonic() + 10
        while b.last_seq < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.last_seq == 150
    finally:
        b.close()


def test_writer_heartbeat_advances_while_idle(buf: Buffer) -> None:
    assert buf.writer_alive
    before = buf.last_commit_monotonic
    time.sleep(0.3)
    assert buf.last_commit_monotonic > before


def test_concurrent_appenders_keep_each_threads_order(buf: Buffer) -> None:
    keys = buf.point_keys(POINTS)

    def work(k: int) -> None:
        for i in range(200):
            buf.append([float(i)] * 5, [keys[k]] * 5, [float(i)] * 5, [0] * 5)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    buf.flush_sync(10)
    rows = buf.read_unsynced(10_000)
    assert rows.seq == list(range(1, 3001))
    for pid in POINTS:
        vals = [v for p, v in zip(rows.point_id, rows.value, strict=True) if p == pid]
        assert vals == [float(i) for i in range(200) for _ in range(5)]


def test_close_commits_queue_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = _open(path, commit_interval=60.0)
    keys = b.point_keys(POINTS)
    b.append([1.0, 2.0], keys[:2], [1.0, 2.0], [0, 0])
    b.close()
    b.close()
    assert not b.writer_alive
    with pytest.raises(BufferClosedError):
        b.append([1.0], keys[:1], [1.0], [0])
    assert _seqs(path) == [1, 2]
    assert file_stats(path).last_seq == 2


# ---------------------------------------------------------------- cursor and range acks


def test_mark_synced_never_moves_backwards_nor_past_the_last_seq(buf: Buffer) -> None:
    _fill(buf, 100)
    buf.mark_synced(40)
    buf.mark_synced(10)
    assert buf.synced_through() == 40
    buf.mark_synced(10_000)
    assert buf.synced_through() == 100  # clamped: no future seq can be "already synced"
    assert buf.stats().unsynced_rows == 0
    assert len(buf.read_unsynced(10)) == 0


def test_range_acks_out_of_order_fold_into_the_cursor(buf: Buffer) -> None:
    _fill(buf, 100)
    # live-first: the newest batch is acknowledged before the backlog
    buf.mark_range_synced(81, 100)
    assert buf.synced_through() == 0
    st = buf.stats()
    assert st.unsynced_rows == 80
    assert buf.read_latest(5).seq == [76, 77, 78, 79, 80]
    assert buf.read_unsynced(200).seq == list(range(1, 81))
    assert buf.read_unsynced(5, after_seq=78).seq == [79, 80]
    # islands merge when they touch each other...
    buf.mark_range_synced(41, 50)
    buf.mark_range_synced(51, 60)
    buf.mark_range_synced(55, 70)
    assert buf.read_unsynced(200).seq == [*range(1, 41), *range(71, 81)]
    assert buf.read_latest(3).seq == [78, 79, 80]
    assert buf.stats().unsynced_rows == 50
    # ...and fold into the cursor once the backlog below them is acknowledged
    buf.mark_range_synced(1, 40)
    assert buf.synced_through() == 70
    buf.mark_synced(80)
    assert buf.synced_through() == 100
    assert buf.stats().unsynced_rows == 0
    conn = sqlite3.connect(buf.path)
    assert conn.execute("SELECT count(*) FROM synced_ranges").fetchone()[0] == 0
    conn.close()
    with pytest.raises(ValueError):
        buf.mark_range_synced(5, 4)


def test_rejected_batch_is_dead_lettered_counted_and_handled(buf: Buffer) -> None:
    _fill(buf, 30)
    buf.add_rejected(1, 10, 422, "point_id unknown", b"\x28\xb5payload")
    assert buf.synced_through() == 10
    st = buf.stats()
    assert st.rejected_batches == 1
    assert st.unsynced_rows == 20
    (rej,) = buf.read_rejected()
    assert (rej["first_seq"], rej["last_seq"], rej["status"], rej["payload_bytes"]) == (
        1,
        10,
        422,
        9,
    )


# ---------------------------------------------------------------- size bound and retention


def _fill_many(buf: Buffer, n: int, chunk: int = 1000) -> None:
    """Appends of ``chunk`` readings: the columnar layout commits whole appends, so its
    chunks start at multiples of 1,000 and the cursor and islands below fall on their edges."""
    keys = buf.point_keys(POINTS)
    rng = random.Random(n)
    t0 = time.time()
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        buf.append(
            array("d", [t0 + (start + i) * 1e-3 for i in range(m)]),
            array("q", [keys[(start + i) % 3] for i in range(m)]),
            array("d", [rng.random() for _ in range(m)]),  # incompressible for chunks
            array("B", bytes(m)),
        )
    buf.flush_sync(30)


def _bound_mb() -> float:
    """A size bound that 60,000 readings of :func:`_fill_many` exceed on either layout."""
    return 1.0 if _LAYOUT["name"] == "rows" else 0.4


def _disk_bytes(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return (count - free) * page


def test_size_bound_evicts_synced_rows_first(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    lost: list[int] = []
    b = _open(path, max_size_mb=_bound_mb(), commit_rows=1000, on_unsynced_evicted=lost.append)
    try:
        _fill_many(b, 60_000)
        assert _disk_bytes(path) > _bound_mb() * 1024 * 1024
        b.mark_synced(50_000)
        b.run_maintenance()
        st = b.stats()
        seqs = _seqs(path)
        assert st.evicted_synced > 0
        assert st.evicted_unsynced == 0 and lost == []
        # Oldest synced rows went, contiguous from the start; every unsynced row is still there.
        assert seqs == list(range(st.evicted_synced + 1, 60_001))
        assert st.unsynced_rows == 10_000
        assert st.rows + st.evicted_synced + st.evicted_unsynced == st.last_seq  # every row counted
        assert _disk_bytes(path) <= _bound_mb() * 1024 * 1024
    finally:
        b.close()


def test_size_bound_then_evicts_unsynced_oldest_first_counted(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    lost: list[int] = []
    b = _open(path, max_size_mb=_bound_mb(), commit_rows=1000, on_unsynced_evicted=lost.append)
    try:
        _fill_many(b, 60_000)
        b.append_event(time.time(), "alarm", "fsm", None, {"unsynced": True})
        b.mark_synced(5_000)
        b.mark_range_synced(30_001, 35_000)  # an island acked out of order: synced, goes first
        b.run_maintenance()
        assert len(b.read_unsynced_events(10)) == 1  # unsynced events go after every reading
        st = b.stats()
        seqs = set(_seqs(path))
        assert st.evicted_synced == 10_000
        assert st.evicted_unsynced > 0
        assert sum(lost) == st.evicted_unsynced
        lowest = min(seqs)
        # The unsynced rows lost are exactly the oldest ones, right after the synced ones.
        assert lowest == 5_000 + st.evicted_unsynced + 1
        assert seqs == set(range(lowest, 30_001)) | set(range(35_001, 60_001))
        # The cursor moved past the lost rows so the uplink does not wait for them.
        assert st.synced_through == lowest - 1
        assert st.unsynced_rows == len(seqs)
        assert st.rows + st.evicted_synced + st.evicted_unsynced == st.last_seq
        assert _disk_bytes(path) <= _bound_mb() * 1024 * 1024
        # seq stays monotonic after the eviction
        first, _ = _fill(b, 10)
        assert first == 60_001
    finally:
        b.close()
    assert file_stats(path).evicted_unsynced == st.evicted_unsynced  # persisted


def test_retention_drops_only_old_synced_rows_and_events(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = _open(path, retention_days=7)
    try:
        old = time.time() - 10 * 86400
        _fill(b, 1000, t0=old)  # seq 1..1000, old, will be synced
        _fill(b, 1000, t0=old)  # seq 1001..2000, old, stays unsynced
        _fill(b, 1000)  # seq 2001..3000, recent
        e0 = b.stats().last_event_id  # event ids start above any earlier file's
        b.append_event(old, "alarm", "fsm", None, {"n": 1})
        b.append_event(old, "alarm", "fsm", None, {"n": 2})
        b.flush_sync(10)
        b.mark_events_synced(e0 + 1)
        b.mark_synced(1000)
        b.mark_range_synced(2001, 2500)
        b.run_maintenance()
        st = b.stats()
        assert st.expired_rows == 1000
        assert _seqs(path) == list(range(1001, 3001))
        assert [e.id for e in b.read_unsynced_events(10)] == [e0 + 2]
        assert st.events == 1  # the synced old event expired, the unsynced one did not
        b.mark_synced(3000)
        b.run_maintenance()
        assert _seqs(path) == list(range(2001, 3001))  # recent synced rows are local history
        assert b.stats().expired_rows == 2000
        assert b.stats().evicted_synced == 0  # retention is not eviction
    finally:
        b.close()


def test_seq_stays_monotonic_after_every_row_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = _open(path, retention_days=1)
    _fill(b, 500, t0=time.time() - 5 * 86400)
    b.mark_synced(500)
    b.run_maintenance()
    assert _seqs(path) == []
    b.close()
    b = _open(path)
    try:
        assert b.stats().rows == 0
        first, last = _fill(b, 3)
        assert (first, last) == (501, 503)
    finally:
        b.close()


# ---------------------------------------------------------------- corrupt files


@pytest.mark.parametrize("kind", ["random", "truncated", "text", "foreign_sqlite"])
def test_corrupt_file_is_moved_aside_and_a_fresh_one_starts(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "buffer.db"
    if kind == "random":
        path.write_bytes(os.urandom(64 * 1024))
    elif kind == "text":
        path.write_text("this is not a database\n" * 100)
    elif kind == "foreign_sqlite":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)")
        conn.commit()
        conn.close()
    else:
        b = _open(path)
        _fill_many(b, 20_000)
        b.close()
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2)
    original = path.read_bytes()
    alarms: list[Path] = []
    with capture_logs() as logs:
        b = _open(path, on_corrupt_recovered=alarms.append)
    try:
        assert alarms == [b.corrupt_moved_to]
        errors = [e for e in logs if e["event"] == "buffer.corrupt"]
        assert len(errors) == 1 and errors[0]["log_level"] == "error"
        moved = Path(errors[0]["moved_to"])
        assert errors[0]["path"] == str(path)
        assert moved.name.startswith("buffer.db.corrupt-")
        assert moved.read_bytes() == original  # kept for forensics, never deleted
        st = b.stats()
        assert st.corrupt_recoveries == 1
        assert st.rows == 0
        first, _ = _fill(b, 5)
        if kind == "truncated":
            assert first > 1  # seq continues above anything the old file can have held
        assert b.read_unsynced(10).seq[0] == first
    finally:
        b.close()
    # A second corruption: the counter is carried into the next fresh file.
    path.write_bytes(b"garbage" * 1000)
    b = _open(path)
    try:
        assert b.stats().corrupt_recoveries == 2
        assert (
            len([p for p in tmp_path.glob("buffer.db.corrupt-*") if not p.name.endswith("-wal")])
            == 2
        )
    finally:
        b.close()


def test_healthy_file_is_never_moved_aside_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    for _ in range(3):
        b = _open(path)
        _fill(b, 100)
        b.close()
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert _seqs(path) == list(range(1, 301))


# ---------------------------------------------------------------- events and history


def test_events_have_monotonic_ids_and_a_cursor(buf: Buffer) -> None:
    t = time.time()
    e0 = buf.stats().last_event_id  # event ids start above any earlier file's
    for i in range(5):
        buf.append_event(
            t + i,
            "alarm",
            "fsm",
            "alice" if i % 2 else None,
            {"point_id": "cdu-01.flow", "n": i, "when": datetime.now(UTC)},
        )
    buf.flush_sync(10)
    ev = buf.read_unsynced_events(3)
    assert [e.id for e in ev] == [e0 + 1, e0 + 2, e0 + 3]
    assert ev[1].actor == "alice" and ev[0].actor is None
    assert ev[2].detail["n"] == 2 and isinstance(ev[2].detail["when"], str)
    buf.mark_events_synced(e0 + 3)
    buf.mark_events_synced(e0 + 1)  # never backwards
    buf.mark_events_synced(e0 + 99)  # never past the last id
    assert buf.read_unsynced_events(10) == []
    buf.append_event(t, "mode", "operator", "bob", {})
    buf.flush_sync(10)
    assert [e.id for e in buf.read_unsynced_events(10)] == [e0 + 6]
    st = buf.stats()
    assert (st.events, st.unsynced_events, st.last_event_id) == (6, 1, e0 + 6)


def test_history_of_one_point_by_time(buf: Buffer) -> None:
    keys = buf.point_keys(POINTS)
    t0 = 1_795_000_000.0
    for block in range(5):  # five commits = five blocks, 100 s apart
        ts = [t0 + block * 100 + i for i in range(30)]
        buf.append(
            ts, [keys[i % 3] for i in range(30)], [block * 1000.0 + i for i in range(30)], [0] * 30
        )
        buf.flush_sync(10)
    h = buf.history("cdu-01.flow", t0 + 100, t0 + 215)
    assert h.point_id == ["cdu-01.flow"] * len(h)
    assert h.value == [1000.0 + i for i in range(1, 30, 3)] + [2000.0 + i for i in range(1, 16, 3)]
    assert h.seq == sorted(h.seq)
    newest = buf.history("cdu-01.flow", t0, None, limit=4)
    assert newest.value == [4000.0 + i for i in (19, 22, 25, 28)]
    assert len(buf.history("no.such.point", t0)) == 0


# ---------------------------------------------------------------- files: stats and export


def _export(path: Path, fmt: str, **kw: object) -> str:
    out = io.StringIO()
    kw.setdefault("since", None)
    kw.setdefault("until", None)
    kw.setdefault("point", None)
    export_readings(path, out, fmt, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def test_export_csv_and_jsonl_exact_columns(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = _open(path)
    keys = b.point_keys(POINTS)
    t = datetime(2026, 11, 24, 13, 5, 7, 250000, tzinfo=UTC).timestamp()
    b.append(
        [t, t + 0.001, t + 60],
        keys,
        [21.5, float("nan"), -3.0],
        [Quality.GOOD, Quality.BAD_COMM_FAILURE, Quality.UNCERTAIN_STALE],
    )
    b.close()
    text = _export(path, "csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [
        ["seq", "ts", "point_id", "value", "quality"],
        ["1", "2026-11-24T13:05:07.250Z", "ahu-1.supply_temp", "21.5", "good"],
        ["2", "2026-11-24T13:05:07.251Z", "cdu-01.flow", "", "bad:comm_failure"],
        ["3", "2026-11-24T13:06:07.250Z", "pdu-a.kw", "-3.0", "uncertain:stale"],
    ]
    lines = [json.loads(x) for x in _export(path, "jsonl").splitlines()]
    assert [list(x) for x in lines] == [["seq", "ts", "point_id", "value", "quality"]] * 3
    assert lines[1] == {
        "seq": 2,
        "ts": "2026-11-24T13:05:07.251Z",
        "point_id": "cdu-01.flow",
        "value": None,
        "quality": "bad:comm_failure",
    }
    only = _export(path, "jsonl", point="pdu-a.kw")
    assert [json.loads(x)["seq"] for x in only.splitlines()] == [3]
    window = _export(
        path,
        "csv",
        since=datetime(2026, 11, 24, 13, 5, 7, 251000, tzinfo=UTC),
        until=datetime(2026, 11, 24, 13, 6),
    )  # naive = UTC, until is exclusive
    assert [r[0] for r in csv.reader(io.StringIO(window))] == ["seq", "2"]
    assert _export(path, "csv", point="nope") == "seq,ts,point_id,value,quality\n"


def test_export_events(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = _open(path)
    e0 = b.stats().last_event_id  # event ids start above any earlier file's
    t = datetime(2026, 11, 24, 13, 0, tzinfo=UTC).timestamp()
    b.append_event(t, "alarm.activated", "alarms", None, {"point_id": "cdu-01.flow"})
    b.append_event(t + 1, "alarm.acked", "operator", "alice", {"id": 7})
    b.close()
    out = io.StringIO()
    assert export_events(path, out, "jsonl", None, None) == 2
    first, second = (json.loads(x) for x in out.getvalue().splitlines())
    assert first == {
        "id": e0 + 1,
        "ts": "2026-11-24T13:00:00.000Z",
        "kind": "alarm.activated",
        "source": "alarms",
        "actor": None,
        "detail": {"point_id": "cdu-01.flow"},
    }
    assert second["actor"] == "alice"
    out = io.StringIO()
    export_events(path, out, "csv", datetime(2026, 11, 24, 13, 0, 1, tzinfo=UTC), None)
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [
        ["id", "ts", "kind", "source", "actor", "detail"],
        [str(e0 + 2), "2026-11-24T13:00:01.000Z", "alarm.acked", "operator", "alice", '{"id":7}'],
    ]


def test_file_stats_and_export_while_the_agent_writes(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = _open(path, commit_interval=0.01, commit_rows=500)
    keys = b.point_keys(POINTS)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            b.append(
                [time.time()] * 50, [keys[0]] * 50, [float(i + j) for j in range(50)], [0] * 50
            )
            i += 50
            time.sleep(0.001)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.2)
        for _ in range(5):
            st = file_stats(path)
            assert st.rows == st.last_seq and st.rows > 0
            text = _export(path, "csv")
            seqs = [int(r[0]) for r in list(csv.reader(io.StringIO(text)))[1:]]
            # a consistent snapshot: contiguous from 1, whatever was committed at that moment
            assert seqs == list(range(1, len(seqs) + 1))
    finally:
        stop.set()
        t.join()
        b.close()
    live_free = file_stats(path)
    assert live_free.rows == live_free.last_seq == len(_seqs(path))


def test_file_tools_refuse_missing_and_non_buffer_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        file_stats(tmp_path / "absent.db")
    bad = tmp_path / "bad.db"
    bad.write_text("hello")
    with pytest.raises(BufferFileError, match="not a SQLite database"):
        file_stats(bad)
    assert bad.read_text() == "hello"  # the tools never move or repair anything


def test_corruption_under_the_running_writer_moves_on_to_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    alarms: list[Path] = []
    b = _open(path, on_corrupt_recovered=alarms.append)
    try:
        keys = b.point_keys(POINTS)
        _fill(b, 100, keys=keys)
        e0 = b.stats().last_event_id
        b.append_event(time.time(), "mode", "fsm", None, {})
        b.flush_sync(10)
        # Break the file behind the agent's back the way SQLite's own tests do: point the
        # table holding the readings (of either layout) at another table's b-tree.
        table = "chunks" if _LAYOUT["name"] == "columnar" else "readings"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA writable_schema = ON")
        meta_root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'meta'"
        ).fetchone()[0]
        conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = ?", (meta_root, table))
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        conn.execute(f"PRAGMA schema_version = {version + 1}")
        conn.commit()
        conn.close()
        with capture_logs() as logs:
            b.append([time.time()], [keys[2]], [7.0], [0])
            b.append_event(time.time(), "mode", "fsm", None, {"after": "corruption"})
            b.flush_sync(10)
        assert [e["event"] for e in logs if e["event"] == "buffer.corrupt"] == ["buffer.corrupt"]
        assert b.corrupt_moved_to is not None and b.corrupt_moved_to.exists()
        assert alarms == [b.corrupt_moved_to]
        assert b.writer_alive
        rows = b.read_unsynced(10)
        assert rows.seq == [101]  # seq continues, the queued reading was not lost
        assert rows.point_id == ["pdu-a.kw"] and rows.value == [7.0]
        assert [e.id for e in b.read_unsynced_events(10)] == [e0 + 2]
        st = b.stats()
        assert st.corrupt_recoveries == 1 and st.last_seq == 101
    finally:
        b.close()


def test_queue_bound_drops_and_counts_instead_of_growing_without_limit(tmp_path: Path) -> None:
    b = _open(tmp_path / "b.db", commit_interval=60.0, max_pending_rows=10)
    try:
        keys = b.point_keys(POINTS)
        b.append([1.0] * 8, [keys[0]] * 8, [1.0] * 8, [0] * 8)
        with capture_logs() as logs:
            b.append([2.0] * 5, [keys[0]] * 5, [2.0] * 5, [0] * 5)
        assert b.dropped_rows == 5
        assert any(e["event"] == "buffer.queue_full" for e in logs)
        b.flush_sync(10)
        assert b.stats().rows == 8 and b.stats().dropped_rows == 5
    finally:
        b.close()


def test_close_commits_a_queue_longer_than_one_writer_round(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = _open(path, commit_interval=60.0, commit_rows=10)
    keys = b.point_keys(POINTS)
    for i in range(60):  # 60 transactions' worth; the writer does at most 20 per round
        b.append([float(i)] * 10, [keys[0]] * 10, [float(i)] * 10, [0] * 10)
    b.close()
    assert _seqs(path) == list(range(1, 601))


_op = st.one_of(
    st.tuples(st.just("mark"), st.integers(0, 70)),
    st.tuples(st.sampled_from(["range", "reject"]), st.integers(1, 70), st.integers(0, 15)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=12))
def test_cursor_and_islands_match_a_model_of_handled_seqs(ops: list[tuple]) -> None:
    n = 60
    with tempfile.TemporaryDirectory() as d:
        b = _open(Path(d) / "b.db", quick_check=False)
        try:
            _fill(b, n)
            handled: set[int] = set()
            for op in ops:
                if op[0] == "mark":
                    b.mark_synced(op[1])
                    handled |= set(range(1, min(op[1], n) + 1))
                else:
                    first, last = op[1], op[1] + op[2]
                    if op[0] == "range":
                        b.mark_range_synced(first, last)
                    else:
                        b.add_rejected(first, last, 400, "bad", b"")
                    handled |= set(range(first, min(last, n) + 1))
            cursor = 0
            while cursor + 1 in handled:
                cursor += 1
            unsynced = sorted(set(range(1, n + 1)) - handled)
            assert b.synced_through() == cursor
            assert b.read_unsynced(1000).seq == unsynced
            assert b.read_unsynced(7).seq == unsynced[:7]
            assert b.read_latest(5).seq == unsynced[-5:]
            assert b.stats().unsynced_rows == len(unsynced)
        finally:
            b.close()


def test_a_malformed_batch_is_dropped_and_counted_without_stalling_the_rest(buf: Buffer) -> None:
    keys = buf.point_keys(POINTS)
    t = time.time()
    with capture_logs() as logs:
        buf.append([t, t], keys[:2], [1.0, 2.0], [0, 0])
        buf.append([float("nan"), t], keys[:2], [3.0, 4.0], [0, 0])  # a driver bug
        buf.append([t], keys[:1], ["not a number"], [0])  # type: ignore[list-item]
        buf.append_event(t, "mode", "fsm", None, {})
        buf.append([t], keys[2:], [5.0], [0])
        buf.flush_sync(10)
    assert buf.writer_alive
    rows = buf.read_unsynced(10)
    assert rows.seq == [1, 2, 3] and rows.value == [1.0, 2.0, 5.0]
    assert buf.dropped_rows == 3 and buf.stats().dropped_rows == 3
    assert len(buf.read_unsynced_events(10)) == 1
    assert sum(e["event"] == "buffer.item_dropped" for e in logs) == 2


def test_buffer_satisfies_the_uplinks_sync_source(buf: Buffer) -> None:
    # Method names at runtime; the signatures are checked by mypy in outpost.buffer.store.
    assert isinstance(buf, SyncSource)


@pytest.mark.parametrize("reset", ["deleted", "zero_length"])
def test_event_ids_survive_a_buffer_reset(tmp_path: Path, reset: str) -> None:
    """The receiver keeps events unique on (gateway, event id) and ignores repeats: ids that
    restarted after a reset would make every new event look like an old one and vanish."""
    path = tmp_path / "buffer.db"
    b = _open(path)
    for i in range(3):
        b.append_event(time.time(), "alarm", "fsm", None, {"n": i})
    b.flush_sync(10)
    before = b.stats().last_event_id
    b.close()
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if reset == "deleted" or suffix:
            p.unlink(missing_ok=True)
        else:
            p.write_bytes(b"")
    b = _open(path)
    try:
        b.append_event(time.time(), "alarm", "fsm", None, {"n": "after"})
        b.flush_sync(10)
        ids = [e.id for e in b.read_unsynced_events(10)]
    finally:
        b.close()
    assert len(ids) == 1 and ids[0] > before


def test_a_buffer_that_cannot_commit_says_so_and_retries_once_a_second(tmp_path: Path) -> None:
    """Disk full (SQLITE_FULL, here through max_page_count on the writer's connection): the
    failure is reported once, the watchdog's clock stands still while rows wait, appends do
    not hurry the 1 s retry, and everything queued is committed once space is back."""
    seen: list[tuple[bool, str | None]] = []
    b = _open(tmp_path / "b.db", commit_rows=1, on_commit_failure=lambda f, e: seen.append((f, e)))
    try:
        keys = b.point_keys(POINTS)
        _fill(b, 10, keys=keys)
        b.flush_sync(10)
        conn = b._files.writer
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        appended = 10
        clock: float | None = None
        start = time.monotonic()
        # Load for ~3 s: every append of a full batch wakes the writer (commit_rows=1).
        while time.monotonic() - start < 3.0 or clock is None:
            t = time.time()
            b.append(
                array("d", [t + i * 1e-3 for i in range(500)]),
                array("q", [keys[i % len(keys)] for i in range(500)]),
                array("d", [float(i) for i in range(500)]),
                array("B", [int(Quality.GOOD)] * 500),
            )
            appended += 500
            if clock is None and b.commit_failing:
                clock, failures0, t_fail = (
                    b.last_commit_monotonic,
                    b.commit_failures,
                    time.monotonic(),
                )
            time.sleep(0.02)
            assert time.monotonic() - start < 30, "the commit never failed"
        window = time.monotonic() - t_fail
        assert b.commit_failing and b.commit_failing_since is not None
        assert b.last_commit_monotonic == clock  # no progress reported while rows wait
        assert b.commit_failures - failures0 <= window / 1.0 + 2  # ~once a second, no spinning
        assert len(seen) == 1 and seen[0][0] is True and "full" in (seen[0][1] or "")
        assert b.pending_rows > 0
        conn.execute("PRAGMA max_page_count = 1073741823")
        b.flush_sync(30)
        assert not b.commit_failing and b.commit_failing_since is None
        assert seen[-1] == (False, None) and len(seen) == 2
        assert b.last_commit_monotonic > clock
        st = b.stats()
        assert st.rows == appended and st.dropped_rows == 0
    finally:
        b.close()


def test_size_bound_evicts_events_too_synced_first_then_unsynced_oldest_first(
    tmp_path: Path,
) -> None:
    """A buffer full of events (an alarm storm while the uplink is down) stays within its
    bound: synced events go first, then unsynced ones oldest first, counted and reported,
    and the events cursor moves past them."""
    path = tmp_path / "b.db"
    lost: list[int] = []
    b = _open(path, max_size_mb=0.25, on_unsynced_events_evicted=lost.append)
    try:
        e0 = b.stats().last_event_id
        for i in range(4000):
            b.append_event(time.time(), "alarm", "fsm", None, {"n": i, "pad": "x" * 150})
        b.flush_sync(30)
        b.mark_events_synced(e0 + 1000)
        b.run_maintenance()
        st = b.stats()
        left = [e.id for e in b.read_unsynced_events(5000)]
    finally:
        b.close()
    assert st.evicted_events == 1000  # every synced event went before any unsynced one
    assert st.evicted_unsynced_events > 0 and sum(lost) == st.evicted_unsynced_events
    # The unsynced events lost are exactly the oldest ones; the rest is contiguous.
    first_left = e0 + 1000 + st.evicted_unsynced_events + 1
    assert left == list(range(first_left, e0 + 4001))
    assert st.events_synced_through == first_left - 1
    assert st.events + st.evicted_events + st.evicted_unsynced_events == 4000
    assert _disk_bytes(path) <= 0.25 * 1024 * 1024
