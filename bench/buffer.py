"""Buffer throughput: append rate and drain rate with N rows already buffered.

    .venv/bin/python bench/buffer.py [--rows 1000000,10000000] [--measure 1000000] [--dir DIR]
                                     [--layout rows|columnar]

For each N: a fresh buffer file is prefilled with N unsynced readings, then

- append: ``--measure`` readings appended in poll-sized batches (``--batch``, columnar arrays
  as the pipeline hands them over) from this thread while the writer thread group-commits;
  the clock stops when ``flush_sync`` confirms the last one committed. Also shown: the time the
  caller spends inside ``append`` (the event-loop cost per reading).
- drain: ``read_unsynced(5000)`` + ``mark_synced(last seq)`` until ``--measure`` readings were
  read, oldest first from the cursor (what the uplink does on backfill).

``--layout`` columnar (the agent's default: readings as compressed chunks) or rows (the
row-per-reading Buffer); ``--read columns`` drains through ``read_unsynced_columns`` (typed
arrays, what the uplink's binary body is built from), ``--read rows`` through
``read_unsynced``.

Prints figures only; no pass/fail. Targets: append >= 250,000/s, drain >= 500,000/s, both within
20 % between 1 M and 10 M buffered.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.store import Buffer

POINTS = 2000


def _columns(n: int, start: int, t0: float, keys: list[int]) -> tuple[array, array, array, array]:
    ts = array("d", [t0 + (start + i) * 0.001 for i in range(n)])
    k = array("q", [keys[(start + i) % len(keys)] for i in range(n)])
    v = array("d", [((start + i) % 1000) * 0.25 for i in range(n)])
    q = array("B", bytes(n))
    return ts, k, v, q


def prefill(buf: Buffer, rows: int, keys: list[int], t0: float) -> float:
    chunk = 100_000
    ts, k, v, q = _columns(chunk, 0, t0, keys)
    start = time.perf_counter()
    done = 0
    while done < rows:
        n = min(chunk, rows - done)
        if n == chunk:
            buf.append(ts, k, v, q)
        else:
            buf.append(ts[:n], k[:n], v[:n], q[:n])
        done += n
        if buf.pending_rows > 1_000_000:
            buf.flush_sync()
    buf.flush_sync()
    return time.perf_counter() - start


def bench_append(
    buf: Buffer, total: int, batch: int, keys: list[int], t0: float
) -> tuple[float, float, float]:
    cols = [_columns(batch, i * batch, t0, keys) for i in range(16)]
    calls = total // batch
    in_append = 0.0
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(calls):
        ts, k, v, q = cols[i % 16]
        a = time.perf_counter()
        buf.append(ts, k, v, q)
        in_append += time.perf_counter() - a
    buf.flush_sync()
    elapsed = time.perf_counter() - start
    n = calls * batch
    return n / elapsed, n / (time.process_time() - cpu), in_append / n


def bench_drain(
    buf: Buffer, total: int, batch: int = 5000, columns: bool = True
) -> tuple[float, float]:
    got = 0
    cpu = time.process_time()
    start = time.perf_counter()
    read = buf.read_unsynced_columns if columns else buf.read_unsynced
    while got < total:
        rows = read(batch)
        if not rows.seq:
            break
        buf.mark_synced(rows.seq[-1])
        got += len(rows.seq)
    return got / (time.perf_counter() - start), got / (time.process_time() - cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--rows",
        default="1000000,10000000",
        help="comma-separated numbers of rows buffered before measuring",
    )
    ap.add_argument("--measure", type=int, default=1_000_000, help="readings per measurement")
    ap.add_argument("--batch", type=int, default=500, help="readings per append call")
    ap.add_argument("--dir", default=None, help="where to put the files (default: a temp dir)")
    ap.add_argument("--layout", choices=("rows", "columnar"), default="columnar")
    ap.add_argument(
        "--read",
        choices=("columns", "rows"),
        default="columns",
        help="drain through read_unsynced_columns (what the uplink reads) or read_unsynced",
    )
    args = ap.parse_args()
    layout = ColumnarBuffer if args.layout == "columnar" else Buffer
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sizes = [int(float(x)) for x in args.rows.split(",") if x.strip()]
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    print(
        f"# buffer bench ({args.layout}): {args.measure:,} readings per figure, "
        f"append batch {args.batch}, files in {base}"
    )
    print(
        "rates are readings per wall-clock second and, in brackets, per CPU-second of this "
        "process (the writer thread included): the machine may be shared"
    )
    print(
        f"{'buffered':>12} {'prefill/s':>10} {'append/s':>22} {'in append':>10} "
        f"{'drain/s':>22} {'file MB':>8}"
    )
    try:
        for rows in sizes:
            path = base / f"bench-{rows}.db"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(str(path) + suffix)
            buf = layout(
                path,
                max_size_mb=100_000,
                retention_days=3650,
                quick_check=False,
                maintenance_interval=5.0,
            )
            buf.open()
            try:
                keys = buf.point_keys([f"dev-{i // 50:03d}.p{i % 50:02d}" for i in range(POINTS)])
                t0 = time.time() - 3600
                pre = prefill(buf, rows, keys, t0)
                app, app_cpu, per_call = bench_append(
                    buf, args.measure, args.batch, keys, t0 + rows * 0.001
                )
                drain, drain_cpu = bench_drain(buf, args.measure, columns=args.read == "columns")
                size = buf.stats().size_bytes / 1e6
            finally:
                buf.close()
            print(
                f"{rows:>12,} {rows / pre:>10,.0f} {app:>10,.0f} ({app_cpu:>9,.0f}) "
                f"{per_call * 1e9:>7,.0f} ns {drain:>10,.0f} ({drain_cpu:>9,.0f}) {size:>8,.0f}",
                flush=True,
            )
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
