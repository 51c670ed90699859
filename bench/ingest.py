"""Receiver ingest throughput: readings/s accepted through POST /api/v1/ingest.

    .venv/bin/python bench/ingest.py [--clients 4] [--batches 40] [--batch-size 5000]
                                     [--dsn DSN] [--fast]

Starts PostgreSQL (embedded, in a temp dir, default durability; ``--fast`` turns fsync off;
or ``--dsn`` for an existing server), a fresh database, the receiver as its own process
(``python -m outpost.cloud.receiver serve``), and N client processes. Each client enrolls its own
gateway, pre-encodes its batches (zstd, 500 points x 10 polls = 5,000 readings, sim-like
values), waits at a barrier, then posts them back-to-back. Prints readings/s over the wall time
from the barrier to the last acknowledgment, the latency per batch, bytes per reading on the
wire, and checks that the database holds exactly the readings sent.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path

import asyncpg
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from outpost.buffer.models import ReadingColumns  # noqa: E402
from outpost.cloud.receiver.embedded import EmbeddedPostgres  # noqa: E402
from outpost.cloud.uplink.columnar_body import encode_columnar  # noqa: E402
from outpost.cloud.wire import (  # noqa: E402
    COLUMNAR_CONTENT_TYPE,
    COLUMNAR_ZSTD_LEVEL,
    IngestBatch,
    columnar_readings,
    compress_body,
    encode_body,
)

ADMIN = "bench-admin-token"
POINTS = 500


def _cpu(receiver_pid: int) -> tuple[float, float]:
    """CPU seconds (user+system) of the receiver and of all postgres server processes."""
    import psutil

    def cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    rcv = cpu(psutil.Process(receiver_pid))
    pg = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "postgres":
            try:
                pg += cpu(p)
            except psutil.Error:
                pass
    return rcv, pg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_batches(
    gateway: str, count: int, size: int, seed: int, wire: str = "columnar"
) -> list[tuple[bytes, dict]]:
    rng = random.Random(seed)
    regs = [rng.randint(100, 3000) for _ in range(POINTS)]
    ids = [f"dev-{i // 25:02d}.point_{i % 25:02d}" for i in range(POINTS)]
    t = 1_763_900_000.0
    out = []
    seq = 1
    for _ in range(count):
        pids: list[str] = []
        ts: list[float] = []
        vals: list[float] = []
        qual: list[int] = []
        while len(pids) < size:
            t += 5.0
            for i in range(POINTS):
                regs[i] += rng.randint(-2, 2)
                bad = rng.random() < 0.005
                pids.append(ids[i])
                ts.append(t + (i % 50) * 0.002)
                vals.append(math.nan if bad else regs[i] * 0.1)
                qual.append(129 if bad else 0)
                if len(pids) == size:
                    break
        if wire == "columnar":
            index: dict[str, int] = {}
            keys = [index.setdefault(p, len(index)) for p in pids]
            names = list(index)
            cols = ReadingColumns(
                array("q", range(seq, seq + size)),
                array("q", [round(x * 1000.0) for x in ts]),
                array("I", keys),
                array("d", vals),
                array("B", qual),
                lambda ks, names=names: [names[k] for k in ks],  # type: ignore[misc]
            )
            raw = encode_columnar(gateway, seq, seq + size - 1, cols)
            body, headers = compress_body(raw, zstd_level=COLUMNAR_ZSTD_LEVEL)
            headers["Content-Type"] = COLUMNAR_CONTENT_TYPE
            out.append((body, headers))
        else:
            batch = IngestBatch(
                gateway_id=gateway,
                first_seq=seq,
                last_seq=seq + size - 1,
                readings=columnar_readings(pids, ts, vals, qual),
            )
            out.append(encode_body(batch, "zstd"))
        seq += size
    return out


def client(
    url: str,
    gateway: str,
    token: str,
    count: int,
    size: int,
    seed: int,
    barrier: mp.Barrier,
    results: mp.Queue,
    wire: str = "columnar",
) -> None:
    batches = build_batches(gateway, count, size, seed, wire)
    wire_bytes = sum(len(b) for b, _ in batches)
    latencies = []
    inserted = 0
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as c:
        barrier.wait()
        start = time.perf_counter()
        for body, headers in batches:
            t0 = time.perf_counter()
            r = c.post("/api/v1/ingest", content=body, headers=headers)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            inserted += r.json()["readings_inserted"]
        end = time.perf_counter()
    results.put((start, end, inserted, wire_bytes, latencies))


async def create_db(admin_dsn: str) -> str:
    name = f"outpost_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name


async def drop_db(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def count_readings(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    n = await conn.fetchval("SELECT count(*) FROM readings")
    await conn.close()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batches", type=int, default=40, help="batches per client")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--dsn", default=None, help="admin DSN of an existing server")
    ap.add_argument("--fast", action="store_true", help="embedded server with fsync off")
    ap.add_argument(
        "--wire",
        choices=("columnar", "json"),
        default="columnar",
        help="body format: binary columnar (the uplink's default) or JSON",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    tmp.chmod(0o755)
    pg = None
    if args.dsn:
        admin_dsn = args.dsn
    else:
        pg = EmbeddedPostgres(tmp / "pg", fast=args.fast)
        admin_dsn = pg.start()
    db = asyncio.run(create_db(admin_dsn))
    from urllib.parse import urlsplit, urlunsplit

    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path="/" + db))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OUTPOST_RECEIVER_ADMIN_TOKEN": ADMIN,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outpost.cloud.receiver",
            "serve",
            "--dsn",
            dsn,
            "--bind",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp / "receiver"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "receiver.log", "wb"),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or receiver.poll() is not None:
                raise SystemExit(f"receiver did not start; see {tmp / 'receiver.log'}")
            time.sleep(0.1)
        tokens = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
            for i in range(args.clients):
                gw = f"bench-gw-{i}"
                et = c.post(f"/api/v1/gateways/{gw}/enrollment-tokens").json()["enrollment_token"]
                r = c.post("/api/v1/enroll", json={"gateway_id": gw, "enrollment_token": et})
                tokens.append((gw, r.json()["gateway_token"]))
        barrier = mp.Barrier(args.clients)
        results: mp.Queue = mp.Queue()
        procs = [
            mp.Process(
                target=client,
                args=(url, gw, tok, args.batches, args.batch_size, i, barrier, results, args.wire),
            )
            for i, (gw, tok) in enumerate(tokens)
        ]
        cpu0 = _cpu(receiver.pid)
        for p in procs:
            p.start()
        got = [results.get(timeout=1800) for _ in procs]
        cpu1 = _cpu(receiver.pid)
        for p in procs:
            p.join()
        start = min(g[0] for g in got)
        end = max(g[1] for g in got)
        inserted = sum(g[2] for g in got)
        wire = sum(g[3] for g in got)
        lat = sorted(x for g in got for x in g[4])
        sent = args.clients * args.batches * args.batch_size
        stored = asyncio.run(count_readings(dsn))
        wall = end - start
        print(
            f"clients={args.clients} batches/client={args.batches} "
            f"batch_size={args.batch_size} postgres="
            f"{'DSN' if args.dsn else 'embedded' + (' fsync=off' if args.fast else '')}"
        )
        print(
            f"readings sent={sent} inserted={inserted} stored={stored} "
            f"{'OK' if stored == sent == inserted else 'MISMATCH'}"
        )
        print(f"wall={wall:.2f}s  throughput={sent / wall:,.0f} readings/s")
        print(
            f"batch latency p50={lat[len(lat) // 2] * 1000:.1f} ms "
            f"p95={lat[int(len(lat) * 0.95)] * 1000:.1f} ms max={lat[-1] * 1000:.1f} ms"
        )
        print(f"wire: {wire / sent:.2f} bytes/reading (zstd, {args.wire} body)")
        print(
            f"CPU seconds during the run: receiver process {cpu1[0] - cpu0[0]:.2f}, "
            f"all postgres processes on the machine {cpu1[1] - cpu0[1]:.2f} (wall {wall:.2f}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
        )
    finally:
        receiver.send_signal(signal.SIGTERM)
        try:
            receiver.wait(30)
        except subprocess.TimeoutExpired:
            receiver.kill()
        asyncio.run(drop_db(admin_dsn, db))
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
