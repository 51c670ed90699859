"""Backfill benchmark: how fast does a full agent buffer drain into a running receiver?

An agent buffer is pre-filled with N readings (default 2,000,000) for P points (default 500),
shaped like a real site after report-by-exception: register values scaled by 0.1/0.01,
a quarter float32 values, integer counters, about 1 % bad-quality readings without a value,
5 s polls with per-device millisecond jitter. A real receiver runs in its own process on an
embedded PostgreSQL (or ``--dsn``/``$OUTPOST_RECEIVER_DSN``). The uplink then drains the buffer;
the figures are readings/s until the backlog is zero and compressed uplink bytes per reading.

    .venv/bin/python bench/backfill.py                       # 2 M readings, 500 points
    .venv/bin/python bench/backfill.py --readings 500000 --compression gzip

Targets (issue 3): >= 50,000 readings/s and <= 8 bytes per reading on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from outpost.buffer.columnar_store import ColumnarBuffer  # noqa: E402
from outpost.buffer.store import Buffer  # noqa: E402
from outpost.cloud.config import CloudConfig  # noqa: E402
from outpost.cloud.uplink import Uplink  # noqa: E402
from outpost.cloud.uplink.batches import BACKFILL_AFTER, BACKFILL_BATCH  # noqa: E402

_F32 = struct.Struct("<f")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(buf: Buffer, readings: int, points: int, seed: int = 7) -> float:
    """Append sim-like readings; returns seconds taken."""
    rng = random.Random(seed)
    ids = [f"dev-{i // 25:02d}.point_{i % 25:02d}" for i in range(points)]
    keys = buf.point_keys(ids)
    regs = [rng.randint(100, 3000) for _ in range(points)]
    kinds = [i % 4 for i in range(points)]
    t = time.time() - 86400.0 * 3
    t0 = time.perf_counter()
    done = 0
    ts: list[float] = []
    ks: list[int] = []
    vs: list[float] = []
    qs: list[int] = []
    while done < readings:
        t += 5.0
        for i in range(points):
            if rng.random() < 0.5:  # report-by-exception: about half the points move per poll
                continue
            regs[i] += rng.randint(-3, 3)
            kind = kinds[i]
            if kind == 0:
                v = regs[i] * 0.1
            elif kind == 1:
                v = _F32.unpack(_F32.pack(regs[i] / 7.0))[0]
            elif kind == 2:
                v = float(regs[i])
            else:
                v = regs[i] * 0.01
            q = 0
            if rng.random() < 0.01:
                v, q = math.nan, 129
            ts.append(t + (i // 25) * 0.004)
            ks.append(keys[i])
            vs.append(v)
            qs.append(q)
            done += 1
            if done >= readings:
                break
        if len(ts) >= 50_000 or done >= readings:
            buf.append(ts, ks, vs, qs)
            ts, ks, vs, qs = [], [], [], []
    buf.flush_sync()
    return time.perf_counter() - t0


def measure_encode(buf: Buffer, batch: int, compression: str) -> None:
    """Cost of one batch on the agent: SQLite read and columnar encode + compression."""
    from outpost.cloud.uplink.columnar_body import encode_columnar
    from outpost.cloud.wire import (
        COLUMNAR_ZSTD_LEVEL,
        IngestBatch,
        columnar_readings,
        compress_body,
        encode_body,
    )

    reads, encodes, sizes = [], [], []
    creads: list[float] = []
    cencodes: list[float] = []
    csizes: list[float] = []
    for i in range(10):
        t0 = time.perf_counter()
        rows = buf.read_unsynced(batch, after_seq=i * batch * 3)
        t1 = time.perf_counter()
        cols = columnar_readings(rows.point_id, rows.ts, rows.value, rows.quality)
        model = IngestBatch.model_construct(
            gateway_id="bench-gw",
            first_seq=rows.seq[0],
            last_seq=rows.seq[-1],
            readings=cols,
            events=[],
            points=[],
            schedule_version=None,
        )
        body, _ = encode_body(model, compression)  # type: ignore[arg-type]
        t2 = time.perf_counter()
        reads.append(t1 - t0)
        encodes.append(t2 - t1)
        sizes.append(len(body) / len(rows))
        t3 = time.perf_counter()
        typed = buf.read_unsynced_columns(batch, after_seq=i * batch * 3)
        t4 = time.perf_counter()
        raw = encode_columnar("bench-gw", typed.seq[0], typed.seq[-1], typed)
        binary, _ = compress_body(raw, compression, zstd_level=COLUMNAR_ZSTD_LEVEL)  # type: ignore[arg-type]
        t5 = time.perf_counter()
        creads.append(t4 - t3)
        cencodes.append(t5 - t4)
        csizes.append(len(binary) / len(typed))
    print(
        f"one batch of {batch}: JSON: SQLite read {min(reads) * 1e3:.1f} ms, "
        f"encode + {compression} {min(encodes) * 1e3:.1f} ms "
        f"({batch / min(encodes):,.0f} readings/s encode), {sum(sizes) / len(sizes):.2f} B/reading"
    )
    from outpost.cloud.uplink.columnar_body import ColumnarEncoder

    encoder = ColumnarEncoder()
    bread: list[float] = []
    benc: list[float] = []
    for i in range(6):
        t0 = time.perf_counter()
        typed = buf.read_unsynced_columns(BACKFILL_BATCH, after_seq=i * BACKFILL_BATCH)
        t1 = time.perf_counter()
        raw = encoder.encode("bench-gw", typed.seq[0], typed.seq[-1], typed)
        compress_body(raw, compression, zstd_level=COLUMNAR_ZSTD_LEVEL)  # type: ignore[arg-type]
        t2 = time.perf_counter()
        if i:  # the first one warms the encoder's classification cache
            bread.append(t1 - t0)
            benc.append(t2 - t1)
    print(
        f"one backfill batch of {BACKFILL_BATCH}: read as columns {min(bread) * 1e3:.1f} ms, "
        f"encode + {compression} {min(benc) * 1e3:.1f} ms "
        f"({BACKFILL_BATCH / min(benc):,.0f} readings/s encode)"
    )
    print(
        f"one batch of {batch}: binary columnar: read as columns {min(creads) * 1e3:.1f} ms, "
        f"encode + {compression} {min(cencodes) * 1e3:.1f} ms "
        f"({batch / min(cencodes):,.0f} readings/s encode), "
        f"{sum(csizes) / len(csizes):.2f} B/reading"
    )


async def drain(
    args: argparse.Namespace,
    work: Path,
    url: str,
    token: str,
    server: Callable[[], dict[str, float]],
) -> None:
    layout = ColumnarBuffer if args.layout == "columnar" else Buffer
    buf = layout(work / "agent" / "buffer.db", max_size_mb=4096, quick_check=False)
    buf.open()
    try:
        fill_s = fill(buf, args.readings, args.points)
        total = buf.last_seq
        print(f"buffer filled: {total:,} readings for {args.points} points in {fill_s:.1f} s")
        await asyncio.to_thread(buf.run_maintenance)  # checkpoint: the WAL back into the file
        st0 = buf.stats()
        used = st0.size_bytes - st0.free_bytes
        print(
            f"  on disk         {used / 1e6:,.1f} MB ({args.layout}): "
            f"{used / max(1, total):.2f} bytes/reading"
        )
        measure_encode(buf, args.batch_size, args.compression)
        cfg = CloudConfig(
            url=url,
            enrollment_token=token,
            batch_size=args.batch_size,
            compression=args.compression,
            heartbeat_interval=30.0,
            max_in_flight=args.in_flight,
        )
        uplink = Uplink(
            cfg,
            gateway_id="bench-gw",
            data_dir=work / "agent",
            buffer=buf,
            heartbeat_source=lambda: {"mode": "normal", "agent_version": "bench"},
        )
        uplink._session.wire = args.wire  # bench knob: the JSON fallback for the before column
        task = asyncio.create_task(uplink.run())
        srv0 = server()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        first_ack: float | None = None
        while True:
            await asyncio.sleep(0.05)
            st = uplink.status()
            if first_ack is None and st["batches_sent"]:
                first_ack = time.perf_counter()
            if buf.synced_through() >= total and st["readings_sent"] >= total:
                break
            if task.done():
                task.result()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        srv1 = server()
        st = uplink.status()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await asyncio.to_thread(buf.close)
    sent = st["readings_sent"]
    print(
        f"backlog drained: {sent:,} readings sent in {elapsed:.2f} s "
        f"(incl. enrollment and first batch; first ack after "
        f"{(first_ack or t0) - t0:.2f} s)"
    )
    print(f"  throughput      {sent / elapsed:,.0f} readings/s   (issue 14 target >= 300,000)")
    print(
        f"  agent CPU       {cpu:.1f} s for the uplink process (read, encode, send): "
        f"{sent / max(cpu, 1e-9):,.0f} readings per CPU-second"
    )
    rx_cpu = srv1["receiver"] - srv0["receiver"]
    pg_cpu = srv1["postgres"] - srv0["postgres"]
    print(
        f"  server CPU      receiver {rx_cpu:.1f} s ({sent / max(rx_cpu, 1e-9):,.0f}/CPU-s), "
        f"PostgreSQL {pg_cpu:.1f} s ({sent / max(pg_cpu, 1e-9):,.0f}/CPU-s); all three "
        f"{(cpu + rx_cpu + pg_cpu) / elapsed:.2f} cores over the drain (2-core machine)"
    )
    print(f"  wire bytes      {st['bytes_sent']:,} bytes ({args.compression}, incl. heartbeats)")
    print(f"  bytes/reading   {st['bytes_sent'] / max(1, sent):.2f}   (issue 14 target <= 3)")
    print(
        f"  batches         {st['batches_sent']} ({args.batch_size:,} readings, "
        f"{BACKFILL_BATCH:,} while > {BACKFILL_AFTER:,} wait: backfill), "
        f"failed attempts {st['batches_failed']}, duplicates acked {st['duplicates_acked']}"
    )


def server_cpu(rx_pid: int, pgdata: Path) -> dict[str, float]:
    """CPU seconds (user + system) so far of the receiver process and of this receiver's
    PostgreSQL (the postmaster in ``pgdata`` and its children; other PostgreSQL servers on
    the machine are not counted)."""
    import psutil

    def cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    out = {"receiver": 0.0, "postgres": 0.0}
    with contextlib.suppress(psutil.Error):
        out["receiver"] = cpu(psutil.Process(rx_pid))
    try:
        pm = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
        procs = [pm, *pm.children()]
    except (OSError, ValueError, IndexError, psutil.Error):
        return out
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out["postgres"] += cpu(p)
    return out


def receiver_times(log_path: Path) -> None:
    """Where the time went on the receiver side (its own per-batch log lines)."""
    ms = []
    for line in log_path.read_text().splitlines():
        if '"receiver.ingest"' in line:
            with contextlib.suppress(ValueError):
                ms.append(float(json.loads(line)["ms"]))
    if ms:
        ms.sort()
        print(
            f"  receiver        {len(ms)} batches, handler time per batch: "
            f"median {ms[len(ms) // 2]:.1f} ms, p90 {ms[int(len(ms) * 0.9)]:.1f} ms, "
            f"sum {sum(ms) / 1000:.1f} s"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--readings", type=int, default=2_000_000)
    p.add_argument("--points", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--compression", choices=("zstd", "gzip"), default="zstd")
    p.add_argument("--in-flight", type=int, default=2, help="max batches in flight")
    p.add_argument(
        "--wire",
        choices=("columnar", "json"),
        default="columnar",
        help="ingest body: the binary columnar one (default) or the JSON fallback",
    )
    p.add_argument("--dsn", default=os.environ.get("OUTPOST_RECEIVER_DSN"))
    p.add_argument(
        "--layout", choices=("rows", "columnar"), default="columnar", help="agent buffer layout"
    )
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    with tempfile.TemporaryDirectory(prefix="outpost-backfill-") as tmp:
        work = Path(tmp)
        # The embedded PostgreSQL runs as an unprivileged user when we are root: let it in.
        work.chmod(0o755)
        (work / "agent").mkdir()
        port = free_port()
        env = dict(os.environ, OUTPOST_RECEIVER_ADMIN_TOKEN="bench-admin")
        base = [sys.executable, "-m", "outpost.cloud.receiver"]
        db = ["--data-dir", str(work / "rx")] + (["--dsn", args.dsn] if args.dsn else [])
        log_file = (work / "receiver.log").open("w")
        rx = subprocess.Popen(
            [*base, "serve", *db, "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if rx.poll() is not None or time.monotonic() > deadline:
                    print((work / "receiver.log").read_text(), file=sys.stderr)
                    raise SystemExit("receiver did not become ready")
                time.sleep(0.2)
            token = subprocess.run(
                [*base, "enroll", "bench-gw", *db],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            pgdata = work / "rx" / "pg"
            asyncio.run(drain(args, work, url, token, lambda: server_cpu(rx.pid, pgdata)))
            receiver_times(work / "receiver.log")
        finally:
            rx.terminate()
            try:
                rx.wait(30)
            except subprocess.TimeoutExpired:
                rx.kill()
            log_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
