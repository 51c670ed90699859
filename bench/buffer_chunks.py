"""Columnar chunks (issue 14) against the row-per-reading buffer, on the same readings.

    .venv/bin/python bench/buffer_chunks.py [--readings 1000000] [--chunk 50000]

Data: ``bench/wire_size.py``'s sim-like site (500 points, 5 s polls, report-by-exception,
scaled registers, float32, counters, 1 % bad quality without a value). Prints bytes per
reading on disk (row format: the SQLite file after a checkpoint; chunks: compressed blobs),
the chunk codec's encode/decode rates, and append/drain through a ``chunks`` table in a
SQLite file (append: seconds -> ms and one chunk per commit, as the writer would; drain:
windows of 5,000 from a cursor into ReadingRows with point ids, as the uplink reads), all per
CPU-second. Figures only, no pass/fail.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import structlog
from wire_size import sim_rows  # bench/ is the script's directory

from outpost.buffer import columnar, schema
from outpost.buffer.chunks import decode_chunk, encode_chunk
from outpost.buffer.models import ReadingRows
from outpost.buffer.store import Buffer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=50_000, help="readings per chunk (a commit)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    ids, ts_s, values, quality = sim_rows(500, args.readings)
    vals = [math.nan if v is None else v for v in values]
    ts_ms = [round(t * 1000.0) for t in ts_s]
    names = sorted(set(ids))
    key_of = {p: i + 1 for i, p in enumerate(names)}
    keys = [key_of[p] for p in ids]
    n, step = len(keys), args.chunk

    t0 = time.process_time()
    chunks = [
        encode_chunk(
            1 + a,
            ts_ms[a : a + step],
            keys[a : a + step],
            vals[a : a + step],
            quality[a : a + step],
        )
        for a in range(0, n, step)
    ]
    enc_s = time.process_time() - t0
    t0 = time.process_time()
    decoded = sum(len(decode_chunk(c)) for c in chunks)
    dec_s = time.process_time() - t0
    assert decoded == n
    blob_bytes = sum(len(c.blob) for c in chunks)
    # Each chunk row also carries first_seq, n, min_ts, max_ts, codec: ~40 bytes in SQLite.
    row_overhead = 40 * len(chunks)

    with tempfile.TemporaryDirectory(prefix="outpost-bench-") as tmp:
        path = Path(tmp) / "buffer.db"
        buf = Buffer(path, commit_rows=step, quick_check=False)
        buf.open()
        try:
            bkeys = buf.point_keys(names)
            rk = [bkeys[key_of[p] - 1] for p in ids]
            for a in range(0, n, step):
                buf.append(
                    ts_s[a : a + step], rk[a : a + step], vals[a : a + step], quality[a : a + step]
                )
            buf.flush_sync()
        finally:
            buf.close()  # checkpoints the WAL into the file
        row_bytes = path.stat().st_size

        append_s, drain_s, file_bytes = _through_sqlite(
            Path(tmp) / "chunks.db", ts_s, keys, vals, quality, names, step
        )

    print(f"# {n:,} readings, {len(chunks)} chunks of {step:,}")
    print(f"row format (SQLite file)   {row_bytes / n:6.2f} bytes/reading")
    print(f"chunks (blob + row)        {(blob_bytes + row_overhead) / n:6.2f} bytes/reading")
    print(f"chunk encode               {n / enc_s:12,.0f} readings per CPU-second")
    print(f"chunk decode               {n / dec_s:12,.0f} readings per CPU-second")
    print(f"chunks table file          {file_bytes / n:6.2f} bytes/reading")
    print(f"chunks table append        {n / append_s:12,.0f} readings per CPU-second")
    print(f"chunks table drain         {n / drain_s:12,.0f} readings per CPU-second")


def _through_sqlite(
    path: Path,
    ts_s: list[float],
    keys: list[int],
    vals: list[float],
    quality: list[int],
    names: list[str],
    step: int,
) -> tuple[float, float, int]:
    conn = schema.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    columnar.create(conn)
    n = len(keys)
    t0 = time.process_time()
    for a in range(0, n, step):
        ms = [round(t * 1000.0) for t in ts_s[a : a + step]]
        with schema.transaction(conn):
            columnar.insert(
                conn, a + 1, ms, keys[a : a + step], vals[a : a + step], quality[a : a + step]
            )
    append_s = time.process_time() - t0
    by_key: list[str | None] = [None, *names]
    t0 = time.process_time()
    cursor, got = 0, 0
    while True:
        with schema.transaction(conn, "DEFERRED"):
            parts = columnar.read_range(conn, cursor, None, 5000)
        if not parts:
            break
        for p in parts:
            rows = ReadingRows(
                seq=list(range(p.first_seq, p.first_seq + len(p))),
                ts=[t / 1000.0 for t in p.ts_ms],
                point_id=[by_key[k] or f"#{k}" for k in p.keys],
                value=[None if v != v else v for v in p.values],
                quality=list(p.quality),
            )
            got += len(rows)
            cursor = rows.seq[-1]
    drain_s = time.process_time() - t0
    assert got == n
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return append_s, drain_s, path.stat().st_size


if __name__ == "__main__":
    main()
