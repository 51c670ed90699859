"""kill -9 of a process writing through Buffer (either layout), at random moments, many times, on one file.

A real subprocess (tests/buffer_crash_writer.py) appends readings whose every column is derived
from the seq; the test SIGKILLs it (sometimes while it is still opening the file), then checks
the file: committed seqs are exactly 1..last (no gap, no duplicate), every row holds the
values its seq implies, every seq the writer was told was flushed is there, the sync cursor
never went backwards, and the next process opens the same file without error (and without
mistaking it for a corrupt one).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from outpost.buffer import columnar, schema
from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.inspect import open_readonly
from outpost.buffer.store import Buffer
from tests.fork_server import ForkClient

WRITER = Path(__file__).with_name("buffer_crash_writer.py")
#: kills per case: the default layout at the audit's scale (50), the others beside it
KILLS = {"columnar": 50, "rows": 25, "rows-then-columnar": 24}
FULL_CHECK_EVERY = 8


def _run_and_kill(
    fork: ForkClient,
    path: Path,
    seed: int,
    rng: random.Random,
    layout: str = "rows",
    early: float | None = None,
) -> list[str]:
    """One writer process (forked by the fork server), SIGKILLed; returns what it printed.
    ``early``: kill this many seconds after the fork, whatever the writer is doing."""
    mark = len(fork.seen)
    pid = fork.run(str(path), str(seed), layout)
    if early is not None:
        time.sleep(early)
    elif seed % 4 == 3:
        # Anywhere from the fork to the middle of open() / WAL recovery.
        time.sleep(rng.uniform(0.0, 0.05))
    else:
        fork.expect(lambda line: line.startswith("START"), 20)
        time.sleep(rng.uniform(0.01, 0.25))
    code = fork.kill(pid)
    assert code == -signal.SIGKILL, (code, fork.seen[mark:])
    return fork.seen[mark:]


def _stored(conn: sqlite3.Connection) -> list[tuple[int, int, int, float | None, int]]:
    """(seq, ts ms, point key, value, quality) of every stored reading, seq order, from both
    layouts at once: a file killed while being migrated holds rows and chunks."""
    out = [
        (int(r[0]), int(r[1]), int(r[2]), r[3], int(r[4]))
        for r in conn.execute("SELECT seq, ts, point, value, quality FROM readings")
    ]
    if columnar.present(conn):
        for part in columnar.read_range(conn, 0, None, 2**62):
            out += zip(
                range(part.first_seq, part.first_seq + len(part)),
                part.ts_ms,
                part.keys,
                part.values,
                part.quality,
                strict=True,
            )
    out.sort()
    return out


def _counters(path: Path) -> tuple[int, int]:
    """(last committed seq, sync cursor) as the file records them."""
    with open_readonly(path) as conn:
        last_seq = conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0]
        cursor = conn.execute("SELECT value FROM meta WHERE key='synced_through'").fetchone()[0]
    assert cursor <= last_seq
    return int(last_seq), int(cursor)


def _check_file(path: Path) -> tuple[int, int]:
    """Either layout (or a file half migrated): seqs 1..last without gap or duplicate, every
    reading what its seq implies, events only after their readings, cursor <= last."""
    with open_readonly(path) as conn:
        stored = _stored(conn)
        names = schema.point_names(conn)
        last_seq = conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0]
        cursor = conn.execute("SELECT value FROM meta WHERE key='synced_through'").fetchone()[0]
        after = conn.execute(
            "SELECT max(json_extract(detail, '$.after_seq')), count(*), max(id) FROM events"
        ).fetchone()
    seqs = [r[0] for r in stored]
    hi = seqs[-1] if seqs else 0
    if seqs:
        assert seqs[0] == 1, f"first seq {seqs[0]}"
        assert seqs == list(range(1, hi + 1)), f"gap or duplicate: {len(seqs)} rows for 1..{hi}"
        assert last_seq == hi, (last_seq, hi)
    else:
        assert last_seq == 0
    wrong = [
        seq
        for seq, ts, key, value, quality in stored
        if value != seq * 0.5
        or (names[key] if key < len(names) else None) != f"dev-{seq % 37:02d}.p"
        or quality != (0, 64, 129)[seq % 3]
        or ts != 1_790_000_000_000 + seq
    ]
    assert not wrong, f"{len(wrong)} rows do not hold what their seq implies, first {wrong[0]}"
    if after[1]:
        # An event is queued after its readings: committed event => readings committed.
        assert after[0] <= hi
        assert after[2] >= after[1]
    assert cursor <= last_seq
    return hi, cursor


@pytest.mark.parametrize("layout", ["rows", "columnar", "rows-then-columnar"])
def test_kill9_at_random_moments_loses_no_committed_reading(tmp_path: Path, layout: str) -> None:
    """``rows-then-columnar``: the first half of the kills write a row-layout file, the second
    half open it columnar, so the in-place migration itself is killed (the first columnar run
    is killed 0.1-0.6 s after start, while it converts ~100k readings at ~1 M/s)."""
    path = tmp_path / "buffer.db"
    rng = random.Random(20261124)
    flushed_max = 0
    synced_max = 0
    last_cursor = 0
    starts = 0
    kills = KILLS[layout]
    log = tmp_path / "writer.log"
    # every writer is a real process killed by a real SIGKILL, forked from a server that
    # imported once (tests/fork_server.py): rounds cost ~0.2 s instead of an interpreter start
    fork = ForkClient([sys.executable, str(WRITER), "serve"], log)
    for seed in range(kills):
        run_layout = layout
        early = None
        if layout == "rows-then-columnar":
            run_layout = "rows" if seed < kills // 2 else "columnar"
            if seed == kills // 2:
                early = rng.uniform(0.1, 0.6)
        try:
            lines = _run_and_kill(fork, path, seed, rng, run_layout, early=early)
        except BaseException:
            fork.close()
            raise
        for line in lines:
            word, _, num = line.partition(" ")
            if word == "START":
                starts += 1
                # What the previous runs were told was committed is still there at open.
                assert int(num) >= flushed_max
            elif word == "FLUSHED":
                flushed_max = max(flushed_max, int(num))
            elif word == "SYNCED":
                synced_max = max(synced_max, int(num))
        # Reading every row back costs O(file) in Python: fully every FULL_CHECK_EVERY kills
        # and after the last; in between the committed counters (cheap) must still hold.
        if seed % FULL_CHECK_EVERY == FULL_CHECK_EVERY - 1 or seed == kills - 1:
            top, cursor = _check_file(path)
        else:
            top, cursor = _counters(path)
        assert top >= flushed_max, f"flushed through {flushed_max}, file ends at {top}"
        assert cursor >= synced_max, f"cursor {cursor} below acknowledged {synced_max}"
        assert cursor >= last_cursor, "sync cursor moved backwards"
        last_cursor = cursor
    fork.close()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    assert starts >= kills * 3 // 4 - 1
    assert flushed_max > 1000, "the writer never got going; the test proved nothing"

    buf = (Buffer if layout == "rows" else ColumnarBuffer)(path, retention_days=3650)
    buf.open()
    try:
        st = buf.stats()
        assert st.corrupt_recoveries == 0
        assert st.last_seq >= flushed_max
        assert st.rows == st.last_seq
    finally:
        buf.close()
    assert not list(tmp_path.glob("buffer.db.corrupt-*"))
