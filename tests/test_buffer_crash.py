"""kill -9 of a process writing through Buffer, at random moments, many times, on one file.

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
import subprocess
import sys
import threading
import time
from pathlib import Path

from outpost.buffer.store import Buffer

WRITER = Path(__file__).with_name("buffer_crash_writer.py")
KILLS = 21


def _run_and_kill(
    path: Path, seed: int, rng: random.Random, layout: str = "rows"
) -> tuple[list[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(seed), layout],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("START"):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if seed % 4 == 3:
        # Anywhere from interpreter start-up to the middle of open() / WAL recovery.
        time.sleep(rng.uniform(0.0, 0.5))
    else:
        assert started.wait(20), (
            f"writer did not start: {proc.stderr.read() if proc.stderr else ''}"
        )
        time.sleep(rng.uniform(0.01, 0.25))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    reader.join(10)
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.stdout is not None:
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    return lines, err


def _check_file(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        lo, hi, count = conn.execute("SELECT min(seq), max(seq), count(*) FROM readings").fetchone()
        last_seq = conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0]
        cursor = conn.execute("SELECT value FROM meta WHERE key='synced_through'").fetchone()[0]
        if count:
            assert lo == 1, f"first seq {lo}"
            assert count == hi - lo + 1, f"gap or duplicate: {count} rows for seq {lo}..{hi}"
            assert last_seq == hi, (last_seq, hi)
        else:
            assert last_seq == 0
        wrong = conn.execute(
            "SELECT count(*) FROM readings r LEFT JOIN points p ON p.key = r.point WHERE "
            "r.value IS NOT r.seq * 0.5 "
            "OR p.point_id IS NOT printf('dev-%02d.p', r.seq % 37) "
            "OR r.quality != (CASE r.seq % 3 WHEN 0 THEN 0 WHEN 1 THEN 64 ELSE 129 END) "
            "OR abs(r.ts - (1790000000000 + r.seq)) > 0"
        ).fetchone()[0]
        assert wrong == 0, f"{wrong} rows do not hold what their seq implies"
        after = conn.execute(
            "SELECT max(json_extract(detail, '$.after_seq')), count(*), max(id) FROM events"
        ).fetchone()
        if after[1]:
            # An event is queued after its readings: committed event => readings committed.
            assert after[0] <= (hi or 0)
            assert after[2] >= after[1]
        assert cursor <= last_seq
        return hi or 0, cursor
    finally:
        conn.close()


def test_kill9_at_random_moments_loses_no_committed_reading(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rng = random.Random(20261124)
    flushed_max = 0
    synced_max = 0
    last_cursor = 0
    starts = 0
    for seed in range(KILLS):
        lines, err = _run_and_kill(path, seed, rng)
        assert "Traceback" not in err, err
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
        top, cursor = _check_file(path)
        assert top >= flushed_max, f"flushed through {flushed_max}, file ends at {top}"
        assert cursor >= synced_max, f"cursor {cursor} below acknowledged {synced_max}"
        assert cursor >= last_cursor, "sync cursor moved backwards"
        last_cursor = cursor
    assert starts >= KILLS * 3 // 4 - 1
    assert flushed_max > 1000, "the writer never got going; the test proved nothing"

    buf = Buffer(path, retention_days=3650)
    buf.open()
    try:
        st = buf.stats()
        assert st.corrupt_recoveries == 0
        assert st.last_seq >= flushed_max
        assert st.rows == st.last_seq
    finally:
        buf.close()
    assert not list(tmp_path.glob("buffer.db.corrupt-*"))
