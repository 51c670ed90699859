"""Dashboard server times and live-update latency at fleet scale.

    .venv/bin/python bench/dashboard.py [--gateways 100] [--points 1000] [--alarms 5000]
                                        [--history-points 200] [--days 30] [--sse 100]
                                        [--requests 40] [--dsn DSN] [--fast]

Seeds a fresh database through COPY: G gateways x P points (heartbeats, one newest value per
point), A active alarms (alarm events; the receiver's alarm_latest trigger fills its table)
plus a day of returned alarms, and D days of 1-minute history for H points (200 x 30 d =
8.64 M rows; the unique index is rebuilt after the load, as a bulk load would). Starts the
receiver as its own process (``python -m outpost.cloud.receiver serve``), then measures, with
the admin token (sequential requests after warm-up; loopback round trip = server time):

- fleet page ``/``, p50/p95
- 30-day point trend ``/api/v1/dashboard/gateways/G/points/P/trend?range=30d`` (hourly tier
  over 43,200 raw rows per point; the 200 history points in turn), and the point page itself
- alarm console ``/alarms`` with A active alarms
- N SSE clients on ``/live`` while ingest runs (10 gateways, one batch each per second): p50/
  p99 from the ingest POST to the event at every client, and the receiver's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from outpost.cloud.receiver.embedded import EmbeddedPostgres  # noqa: E402
from outpost.cloud.receiver.storage import Storage  # noqa: E402
from outpost.cloud.wire import IngestBatch, columnar_readings, encode_body  # noqa: E402

ADMIN = "bench-admin-token"
PRIORITIES = ("critical", "high", "medium", "low")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gw_id(i: int) -> str:
    return f"gw-{i:03d}"


def pt_id(j: int) -> str:
    return f"rack-{j // 10:03d}.p{j % 10}"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def seed(dsn: str, args: argparse.Namespace) -> list[int]:
    """Returns the point keys with history."""
    st = await Storage.open(dsn, min_size=1, max_size=2)  # migrations
    await st.close()
    conn = await asyncpg.connect(dsn)
    now = datetime.now(UTC)
    t = time.perf_counter()
    try:
        gws = []
        for i in range(args.gateways):
            alarms_here = args.alarms // args.gateways
            hb = {
                "gateway_id": gw_id(i),
                "ts": int(now.timestamp() * 1000),
                "mode": "normal" if i % 17 else "maintenance",
                "agent_version": "0.1.0",
                "schedule_version": f"{i:012x}",
                "devices": {
                    f"dev-{d}": {"connected": d != 3 or i % 5 != 0, "last_ok_ts": None}
                    for d in range(10)
                },
                "unsynced_rows": (i * 37) % 500,
                "oldest_unsynced_age_s": float(i % 60),
                "active_alarms": {p: alarms_here // 4 for p in PRIORITIES},
                "site": f"site-{i % 10}",
            }
            age = timedelta(seconds=(i % 3) * 200 if i % 10 else 5)
            gws.append(
                (
                    gw_id(i),
                    None,
                    now - timedelta(days=40),
                    now - age,
                    json.dumps(hb),
                    f"site-{i % 10}",
                )
            )
        await conn.copy_records_to_table(
            "gateways",
            columns=("id", "token_hash", "enrolled_at", "last_seen", "last_heartbeat", "site"),
            records=gws,
        )
        pts = []
        for i in range(args.gateways):
            for j in range(args.points):
                tags = {"rack": f"R{j // 10:03d}", "row": f"R{j // 100}", "room": "hall"}
                if j % 10 == 0:
                    tags["kind"] = "temperature"
                elif j % 10 == 1:
                    tags["kpi"] = "it_power"
                limits = {"alarm_h": 32.0, "alarm_hh": 35.0} if j % 10 == 0 else {}
                pts.append(
                    (
                        gw_id(i),
                        pt_id(j),
                        f"dev-{j % 10}",
                        "degC" if j % 10 == 0 else "kW",
                        json.dumps(tags),
                        json.dumps(limits),
                    )
                )
        await conn.copy_records_to_table(
            "points",
            columns=("gateway_id", "point_id", "device", "units", "tags", "limits"),
            records=pts,
        )
        keys = await conn.fetch("SELECT key, gateway_id, point_id FROM points ORDER BY key")
        print(f"seed: {len(gws)} gateways, {len(keys)} points ({time.perf_counter() - t:.1f} s)")

        # history first (the big one), with the unique index dropped and rebuilt after
        t = time.perf_counter()
        hist_keys = [r["key"] for r in keys[: args.history_points * 5 : 5]][: args.history_points]
        await conn.execute("ALTER TABLE readings DROP CONSTRAINT readings_point_time")
        minutes = args.days * 24 * 60
        start = int((now - timedelta(days=args.days)).timestamp()) // 60 * 60
        rows = 0
        rng = random.Random(1)
        for k in hist_keys:
            base = 20 + rng.random() * 8
            recs = [
                (
                    datetime.fromtimestamp(start + m * 60, UTC),
                    k,
                    base + ((m % 1440) / 1440.0) * 3 + rng.random() * 0.2,
                    0,
                )
                for m in range(minutes)
            ]
            await conn.copy_records_to_table(
                "readings", columns=("time", "point_key", "value", "quality"), records=recs
            )
            rows += len(recs)
        hist = set(hist_keys)
        latest = [
            (now - timedelta(seconds=30), r["key"], 21.0 + (r["key"] % 100) / 10, 0)
            for r in keys
            if r["key"] not in hist
        ]
        await conn.copy_records_to_table(
            "readings", columns=("time", "point_key", "value", "quality"), records=latest
        )
        rows += len(latest)
        print(f"seed: {rows:,} readings by COPY ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        await conn.execute(
            "ALTER TABLE readings ADD CONSTRAINT readings_point_time UNIQUE (point_key, time)"
        )
        print(f"seed: unique index rebuilt ({time.perf_counter() - t:.1f} s)")

        # alarms: A active (unack/ack), and a day of returned ones for the health figures
        t = time.perf_counter()
        evs = []
        eid = 0
        per_gw = max(args.alarms // args.gateways, 1)
        for i in range(args.gateways):
            for a in range(per_gw):
                j = (a * 10) % args.points
                prio = PRIORITIES[a % 4]
                detail = {
                    "point_id": pt_id(j),
                    "device": f"dev-{j % 10}",
                    "kind": "hi",
                    "from": "normal",
                    "to": "unack_active",
                    "base_from": "normal",
                    "base_to": "unack_active",
                    "value": 33.0,
                    "limit": 32.0,
                    "priority": prio,
                }
                ts = now - timedelta(minutes=rng.randrange(1, 3000))
                eid += 1
                evs.append((gw_id(i), eid, ts, "alarm", f"{pt_id(j)}:hi", "", json.dumps(detail)))
                if a % 3 == 0:
                    eid += 1
                    ack = detail | {"from": "unack_active", "to": "ack_active"}
                    ack |= {"base_from": "unack_active", "base_to": "ack_active"}
                    evs.append(
                        (
                            gw_id(i),
                            eid,
                            ts + timedelta(minutes=3),
                            "operator.ack",
                            f"{pt_id(j)}:hi",
                            "olga@fleet",
                            json.dumps(ack),
                        )
                    )
            for a in range(20):  # returned-to-normal episodes over the last day
                j = (a * 10 + 5) % args.points
                ts = now - timedelta(minutes=rng.randrange(1, 1440))
                for frm, to, dt in (("normal", "unack_active", 0), ("unack_active", "normal", 4)):
                    eid += 1
                    d = {"point_id": pt_id(j), "priority": "low", "from": frm, "to": to}
                    d |= {"base_from": frm, "base_to": to, "value": 1.0, "limit": 0.0}
                    evs.append(
                        (
                            gw_id(i),
                            eid,
                            ts + timedelta(minutes=dt),
                            "alarm",
                            f"{pt_id(j)}:flap",
                            "",
                            json.dumps(d),
                        )
                    )
        evs.sort(key=lambda e: (e[0], e[1]))
        await conn.copy_records_to_table(
            "events",
            columns=("gateway_id", "event_id", "ts", "kind", "source", "actor", "detail"),
            records=evs,
        )
        # steady state: autovacuum has set the visibility map (index-only scans) and stats
        await conn.execute("VACUUM ANALYZE")
        active = await conn.fetchval(
            "SELECT count(*) FROM alarm_latest WHERE base_state <> 'normal'"
        )
        print(
            f"seed: {len(evs):,} alarm events, {active:,} active alarms "
            f"({time.perf_counter() - t:.1f} s)"
        )
        return hist_keys
    finally:
        await conn.close()


async def timed(c: httpx.AsyncClient, urls: list[str], warmup: int = 3) -> list[float]:
    for u in urls[:warmup]:
        (await c.get(u)).raise_for_status()
    out = []
    for u in urls:
        t = time.perf_counter()
        r = await c.get(u)
        out.append(time.perf_counter() - t)
        r.raise_for_status()
    return out


def report(name: str, xs: list[float], target_ms: float | None = None) -> None:
    goal = f" (target p95 <= {target_ms:.0f} ms)" if target_ms else ""
    print(
        f"{name:<44} n={len(xs):<4} p50={pct(xs, 0.5) * 1000:7.1f} ms  "
        f"p95={pct(xs, 0.95) * 1000:7.1f} ms  max={max(xs) * 1000:7.1f} ms{goal}"
    )


async def sse_client(url: str, ready: asyncio.Event, lat: list[float], stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}", "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(timeout=None) as c,
        c.stream("GET", url + "/live", headers=headers) as r,
    ):
        event = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event == "ready":
                    ready.set()
            elif line.startswith("data: ") and event == "reading":
                now = time.time()
                msg = json.loads(line[6:])
                sample = msg["pts"].get("bench.marker")
                if sample is not None:
                    lat.append(now - sample[1])  # the value is the sender's time.time()
            if stop.is_set():
                return


async def live_phase(url: str, args: argparse.Namespace, receiver_pid: int) -> None:
    lat: list[float] = []
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(args.sse)]
    clients = [asyncio.create_task(sse_client(url, e, lat, stop)) for e in readies]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 60)
    senders = min(10, args.gateways)
    seqs = dict.fromkeys(range(senders), 1)
    cpu0, wall0 = proc_cpu_s(receiver_pid), time.monotonic()
    sent = 0
    tokens: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for i in range(senders):  # the real exchange: enrollment token -> gateway token
            r = await c.post(
                f"/api/v1/gateways/{gw_id(i)}/enrollment-tokens",
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            r.raise_for_status()
            e = await c.post(
                "/api/v1/enroll",
                json={"gateway_id": gw_id(i), "enrollment_token": r.json()["enrollment_token"]},
            )
            e.raise_for_status()
            tokens[i] = e.json()["gateway_token"]
        deadline = time.monotonic() + args.live_s
        while time.monotonic() < deadline:
            tick = time.monotonic()
            for i in range(senders):
                ids = [pt_id(j) for j in range(100)] + ["bench.marker"]
                now = time.time()
                vals: list[float | None] = [20.0 + random.random() for _ in range(100)]
                batch = IngestBatch(
                    gateway_id=gw_id(i),
                    first_seq=seqs[i],
                    last_seq=seqs[i] + len(ids) - 1,
                    readings=columnar_readings(ids, [now] * len(ids), [*vals, now], [0] * len(ids)),
                )
                seqs[i] += len(ids)
                body, headers = encode_body(batch)
                headers["Authorization"] = f"Bearer {tokens[i]}"
                r = await c.post("/api/v1/ingest", content=body, headers=headers)
                if r.status_code != 200:
                    raise SystemExit(f"ingest refused: {r.status_code} {r.text}")
                sent += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    await asyncio.sleep(1.0)  # the last events are in flight
    cpu1, wall1 = proc_cpu_s(receiver_pid), time.monotonic()
    stop.set()
    for t in clients:
        t.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    expected = sent * args.sse
    print(
        f"live: {args.sse} SSE clients, {sent} ingest batches (101 readings, 10 gateways, "
        f"1 batch/gateway/s) over {args.live_s:.0f} s; events received {len(lat)}/{expected}"
    )
    print(
        f"live: ingest POST -> SSE event at the client p50={pct(lat, 0.5) * 1000:.1f} ms "
        f"p99={pct(lat, 0.99) * 1000:.1f} ms max={max(lat) * 1000:.1f} ms (target p99 <= 1 s)"
    )
    cpu = (cpu1 - cpu0) / (wall1 - wall0)
    print(f"live: receiver process CPU {cpu * 100:.0f} % of one core during the phase")


async def measure(url: str, args: argparse.Namespace, hist_keys: list[int], dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT gateway_id, point_id FROM points WHERE key = ANY($1::int[])", hist_keys
        )
    finally:
        await conn.close()
    hist = [(r["gateway_id"], r["point_id"]) for r in rows]
    n = args.requests
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as c:
        report("fleet page /", await timed(c, ["/"] * n), 150)
        report(
            "fleet JSON /api/v1/dashboard/fleet", await timed(c, ["/api/v1/dashboard/fleet"] * n)
        )
        trend = [
            f"/api/v1/dashboard/gateways/{g}/points/{p}/trend?range=30d"
            for g, p in (hist * (n // len(hist) + 1))[:n]
        ]
        report("30-day trend (hourly tier, JSON)", await timed(c, trend), 250)
        pages = [f"/gateways/{g}/points/{p}?range=30d" for g, p in hist[:n]]
        report("point page (HTML; chart data above)", await timed(c, pages))
        gw_pages = [f"/gateways/{gw_id(i % args.gateways)}" for i in range(n)]
        report(f"gateway page ({args.points} points)", await timed(c, gw_pages))
        report(
            f"alarm console /alarms ({args.alarms} active)", await timed(c, ["/alarms"] * n), 300
        )
        r = await c.get("/alarms")
        print(f"  (console page {len(r.content) / 1024:.0f} KiB, lists the 200 worst)")
        report("floor /sites/site-0/floor", await timed(c, ["/sites/site-0/floor"] * n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gateways", type=int, default=100)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--alarms", type=int, default=5000)
    ap.add_argument("--history-points", type=int, default=200)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--sse", type=int, default=100)
    ap.add_argument("--live-s", type=float, default=20.0)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--dsn", default=None, help="admin DSN of an existing server")
    ap.add_argument("--fast", action="store_true", help="embedded server with fsync off")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="outpost-bench-dash-"))
    tmp.chmod(0o755)
    pg = None
    admin_dsn = args.dsn
    if admin_dsn is None:
        pg = EmbeddedPostgres(tmp / "pg", fast=args.fast)
        admin_dsn = pg.start()
    db = f"bench_dash_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        c = await asyncpg.connect(admin_dsn)
        await c.execute(f'CREATE DATABASE "{db}"')
        await c.close()

    async def drop() -> None:
        c = await asyncpg.connect(admin_dsn)
        await c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await c.close()

    asyncio.run(create())
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path="/" + db))
    receiver: subprocess.Popen[bytes] | None = None
    try:
        hist_keys = asyncio.run(seed(dsn, args))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OUTPOST_RECEIVER_ADMIN_TOKEN": ADMIN}
        receiver = subprocess.Popen(
            [
                *(sys.executable, "-m", "outpost.cloud.receiver", "serve", "--dsn", dsn),
                *("--bind", f"127.0.0.1:{port}", "--data-dir", str(tmp / "receiver")),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "receiver.log", "wb"),
        )
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
        print(
            f"receiver up; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
            f"postgres {'DSN' if args.dsn else 'embedded' + (' fsync=off' if args.fast else '')}"
        )
        asyncio.run(measure(url, args, hist_keys, dsn))
        asyncio.run(live_phase(url, args, receiver.pid))
    finally:
        if receiver is not None:
            receiver.send_signal(signal.SIGTERM)
            try:
                receiver.wait(30)
            except subprocess.TimeoutExpired:
                receiver.kill()
        asyncio.run(drop())
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
