"""Buffer throughput: append rate and drain rate with N readings already buffered.

    .venv/bin/python bench/buffer.py [--rows 1000000,10000000] [--measure 1000000] [--dir DIR]
                                     [--layout rows|columnar] [--data agent|synthetic]

For each N: a fresh buffer file is prefilled with N unsynced readings (the same kind of data,
through the same ``append``), then

- append: ``--measure`` readings appended from this thread while the writer thread
  group-commits; the clock stops when ``flush_sync`` confirms the last one committed, so the
  figure is what the writer sustains (appending is never the limit: see "in append", the time
  the caller spends inside ``append`` per reading, the event loop's cost). A reading dropped
  for queue space would make the figure a lie: the bench stops if ``dropped_rows`` moves.
- drain: ``read_unsynced(5000)`` + ``mark_synced(last seq)`` until ``--measure`` readings were
  read, oldest first from the cursor (what the uplink does on backfill).

``--data agent`` (the default) appends what the agent's pipeline hands over: one batch per
device poll (``--batch`` readings, 200 = a device of 200 uint16 registers read in requests of
125 + 75, one timestamp per request as the Modbus driver takes them), the pipeline's typed
arrays (ts/values float64, keys int64, quality uint8), every value changing (random walks,
scaled registers, float32 and counters, 1 % bad quality without a value), 50 devices per
second of timestamps. ``--data synthetic`` is the earlier data (batches of 500 recycled from
16, a distinct timestamp per reading, values cycling through 1,000 steps: ~0.4 bytes per
reading on disk, far below real data); kept to compare with figures measured on it.

``--layout`` columnar (the agent's default: readings as compressed chunks) or rows (the
row-per-reading Buffer); ``--read columns`` drains through ``read_unsynced_columns`` (typed
arrays, what the uplink's binary body is built from), ``--read rows`` through
``read_unsynced``. "B/reading" is the file's size over the readings in it after the drain.

Prints figures only; no pass/fail. Targets (issue 14): append >= 2 M/s, drain >= 3 M/s, flat
from 1 M to 50 M buffered.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.store import Buffer

#: Point keys: the synthetic data cycles through 2,000; the agent data is DEVICES devices of
#: ``--batch`` registers each.
POINTS = 2000
DEVICES = 50


class Batches:
    """An endless stream of append batches: ``next()`` -> (ts, keys, values, quality)."""

    def __init__(self, data: str, batch: int, pool: list[tuple[array, ...]], t0: float) -> None:
        self.data = data
        self.batch = batch
        self.t = t0
        self.i = 0
        self._pool = pool

    def next(self) -> tuple[array, ...]:
        i = self.i
        self.i += 1
        if self.data == "synthetic":
            return self._pool[i % len(self._pool)]
        _, k, v, q = self._pool[i % len(self._pool)]
        # One timestamp per Modbus request (125 registers), DEVICES polled per second.
        self.t += 1.0 / DEVICES
        first = min(125, self.batch)
        ts = array("d", [self.t]) * first + array("d", [self.t + 0.004]) * (self.batch - first)
        return ts, k, v, q


def make_pool(data: str, batch: int, keys: list[int], t0: float) -> list[tuple[array, ...]]:
    if data == "synthetic":
        return [_synthetic(batch, i * batch, t0, keys) for i in range(16)]
    return _agent_pool(batch, keys)


def _synthetic(n: int, start: int, t0: float, keys: list[int]) -> tuple[array, ...]:
    ts = array("d", [t0 + (start + i) * 0.001 for i in range(n)])
    k = array("q", [keys[(start + i) % len(keys)] for i in range(n)])
    v = array("d", [((start + i) % 1000) * 0.25 for i in range(n)])
    q = array("B", bytes(n))
    return ts, k, v, q


#: Distinct polls in the pool: 1 M readings at 200 a batch, so no chunk (50,000) repeats data.
_POOL_READINGS = 1_000_000
_F32 = struct.Struct("<f")


def _agent_pool(batch: int, keys: list[int]) -> list[tuple[array, ...]]:
    rng = random.Random(7)
    devices = max(1, len(keys) // batch)
    regs = [rng.randint(100, 3000) for _ in range(devices * batch)]
    pool: list[tuple[array, ...]] = []
    for p in range(_POOL_READINGS // batch):
        d = p % devices
        base = d * batch
        k = array("q", keys[base : base + batch])
        v = array("d", bytes(8 * batch))
        q = array("B", bytes(batch))
        for j in range(batch):
            i = base + j
            regs[i] = (regs[i] + rng.randint(1, 3) * rng.choice((-1, 1))) & 0xFFFF
            kind = i % 4
            if kind == 0:
                v[j] = regs[i] * 0.1
            elif kind == 1:
                v[j] = _F32.unpack(_F32.pack(regs[i] / 7.0))[0]
            elif kind == 2:
                v[j] = float(regs[i])
            else:
                v[j] = regs[i] * 0.01
            if rng.random() < 0.01:
                v[j], q[j] = math.nan, 129
        pool.append((array("d"), k, v, q))
    return pool


def _check_dropped(buf: Buffer) -> None:
    if buf.dropped_rows:
        sys.exit(f"{buf.dropped_rows:,} readings dropped for queue space: the figures would lie")


def prefill(buf: Buffer, rows: int, batches: Batches) -> float:
    start = time.perf_counter()
    done = 0
    while done < rows:
        ts, k, v, q = batches.next()
        n = min(len(v), rows - done)
        if n == len(v):
            buf.append(ts, k, v, q)
        else:
            buf.append(ts[:n], k[:n], v[:n], q[:n])
        done += n
        if buf.pending_rows > 1_000_000:
            buf.flush_sync()
    buf.flush_sync()
    _check_dropped(buf)
    return time.perf_counter() - start


def bench_append(buf: Buffer, total: int, batches: Batches) -> tuple[float, float, float]:
    cols = [batches.next() for _ in range(-(-total // batches.batch))]
    in_append = 0.0
    cpu = time.process_time()
    start = time.perf_counter()
    n = 0
    for ts, k, v, q in cols:
        a = time.perf_counter()
        buf.append(ts, k, v, q)
        in_append += time.perf_counter() - a
        n += len(v)
    buf.flush_sync()
    elapsed = time.perf_counter() - start
    _check_dropped(buf)
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
    ap.add_argument(
        "--batch", type=int, default=None, help="readings per append call (200; synthetic: 500)"
    )
    ap.add_argument(
        "--data",
        choices=("agent", "synthetic"),
        default="agent",
        help="what is appended (see the module docstring)",
    )
    ap.add_argument("--dir", default=None, help="where to put the files (default: a temp dir)")
    ap.add_argument("--layout", choices=("rows", "columnar"), default="columnar")
    ap.add_argument(
        "--read",
        choices=("columns", "rows"),
        default="columns",
        help="drain through read_unsynced_columns (what the uplink reads) or read_unsynced",
    )
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 500 if args.data == "synthetic" else 200
    if args.measure > 4_000_000:
        ap.error("--measure at most 4,000,000 (the writer's queue holds 5 M readings)")
    layout = ColumnarBuffer if args.layout == "columnar" else Buffer
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sizes = [int(float(x)) for x in args.rows.split(",") if x.strip()]
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    print(
        f"# buffer bench ({args.layout}): {args.measure:,} readings per figure, "
        f"{args.data} data, append batch {args.batch}, files in {base}"
    )
    print(
        "rates are readings per wall-clock second and, in brackets, per CPU-second of this "
        "process (the writer thread included): the machine may be shared"
    )
    print(
        f"{'buffered':>12} {'prefill/s':>10} {'append/s':>22} {'in append':>10} "
        f"{'drain/s':>22} {'file MB':>8} {'B/reading':>9}"
    )
    pool: list[tuple[array, ...]] | None = None
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
                n_points = POINTS if args.data == "synthetic" else DEVICES * args.batch
                keys = buf.point_keys([f"dev-{i // 50:03d}.p{i % 50:02d}" for i in range(n_points)])
                t0 = time.time() - 86400.0 * 3
                if pool is None:  # keys are the same in every fresh file
                    pool = make_pool(args.data, args.batch, keys, t0)
                batches = Batches(args.data, args.batch, pool, t0)
                pre = prefill(buf, rows, batches)
                app, app_cpu, per_call = bench_append(buf, args.measure, batches)
                drain, drain_cpu = bench_drain(buf, args.measure, columns=args.read == "columns")
                st = buf.stats()
                size = st.size_bytes / 1e6
                per_reading = st.size_bytes / max(1, st.rows)
            finally:
                buf.close()
            print(
                f"{rows:>12,} {rows / pre:>10,.0f} {app:>10,.0f} ({app_cpu:>9,.0f}) "
                f"{per_call * 1e9:>7,.0f} ns {drain:>10,.0f} ({drain_cpu:>9,.0f}) {size:>8,.0f} "
                f"{per_reading:>9.2f}",
                flush=True,
            )
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
