"""Command channel: latency queued → executed, and the cost of idle long-polls.

    .venv/bin/python bench/commands.py [--count 1000] [--rate 25] [--idle 1000] [--dsn DSN]

Starts PostgreSQL (embedded in a temp dir, or ``--dsn``), a fresh database, the receiver as
its own process, a pymodbus server and the real agent (``outpost run``, [cloud] configured,
remote writes allowed). Then:

1. Latency: queues ``--count`` setpoint writes at ``--rate`` per second through the
   operator API and reads, per command, queued → delivered (receiver clock) and queued →
   executed (the agent's result time; same host, same clock): p50/p95/p99/max. The write
   itself (Modbus write + read-back) is part of "executed".
2. Idle long-polls: enrolls ``--idle`` simulated gateways, holds one long-poll (wait=55 s)
   per gateway from this process, and reports the receiver's resident memory before/after
   and its CPU use (and PostgreSQL's) over 20 s at rest.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import structlog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from outpost.cloud.receiver.embedded import EmbeddedPostgres  # noqa: E402
from tests.agent_process import start_agent, write_config  # noqa: E402
from tests.modbus_server import start_server  # noqa: E402

ADMIN = "bench-admin-token"
SCHEDULE = """point_id,device,address,data_type,writable,min,max
plc.temp,plc,hr:0,uint16,,,
plc.setpoint,plc,hr:10,uint16,true,0,60000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> dict[int, float]:
    """CPU seconds per postgres process (compare the same pids: backends come and go)."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                out[int(entry.name)] = cpu_s(int(entry.name))
        except OSError:
            continue
    return out


async def latency(url: str, tmp: Path, count: int, rate: float) -> None:
    admin = httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    )
    server = await start_server()
    gw = "bench-gw"
    enrollment = (await admin.post(f"/api/v1/gateways/{gw}/enrollment-tokens")).json()[
        "enrollment_token"
    ]
    cloud = (
        f'[cloud]\nurl = "{url}"\nenrollment_token = "{enrollment}"\n'
        "allow_remote_writes = true\nheartbeat_interval = 5\nbackoff_min = 0.05\n"
        "backoff_max = 0.5\ncommand_wait_s = 25\n"
    )
    cfg = write_config(
        tmp,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": server.port}},
        SCHEDULE,
        extra=cloud,
        gateway_id=gw,
    )
    agent = start_agent(cfg)
    try:
        await asyncio.to_thread(agent.wait_ready)
        status = cfg.parent / "var" / "gateway.token"
        for _ in range(300):  # enrolled, and the channel's first long-poll is waiting
            if status.exists():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        ids: list[int] = []
        t0 = time.perf_counter()
        for i in range(count):
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            r = await admin.post(
                f"/api/v1/gateways/{gw}/commands",
                json={"kind": "write", "args": {"point_id": "plc.setpoint", "value": i + 1}},
            )
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 120
        rows: list[dict] = []
        while time.monotonic() < deadline:
            r = await admin.get("/api/v1/commands", params={"gateway": gw, "limit": 1000})
            rows = r.json()
            if len(rows) >= count and all(x["result"] for x in rows):
                break
            await asyncio.sleep(0.5)
        states: dict[str, int] = {}
        delivered: list[float] = []
        executed: list[float] = []
        for x in rows:
            states[x["state"]] = states.get(x["state"], 0) + 1
            created_ms = _ms(x["created_at"])
            if x["delivered_at"] is not None:
                delivered.append(_ms(x["delivered_at"]) - created_ms)
            if x["result"]:
                executed.append(x["result"]["executed_at"] - created_ms)
        print(f"latency over {len(rows)} commands at {rate:g}/s (states {states}):")
        for name, values in (("queued->delivered", delivered), ("queued->executed", executed)):
            print(
                f"  {name:<18} p50 {pct(values, 50):6.1f} ms  p95 {pct(values, 95):6.1f} ms  "
                f"p99 {pct(values, 99):6.1f} ms  max {max(values):6.1f} ms"
            )
    finally:
        agent.stop()
        await server.stop()
        await admin.aclose()


async def idle_polls(url: str, dsn: str, receiver_pid: int, n: int) -> None:
    from outpost.cloud.receiver.storage import Storage

    storage = await Storage.open(dsn, min_size=1, max_size=4)
    tokens: list[tuple[str, str]] = []
    from datetime import timedelta

    for i in range(n):
        gw = f"idle-{i:04d}"
        tok = await storage.create_enrollment_token(gw, timedelta(hours=1))
        tokens.append((gw, await storage.enroll(gw, tok.token)))
    await storage.close()
    before = rss_mb(receiver_pid)
    client = httpx.AsyncClient(
        base_url=url,
        timeout=httpx.Timeout(90, connect=30, pool=60),
        limits=httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10),
    )

    async def poll(gw: str, token: str) -> int:
        r = await client.get(
            f"/api/v1/gateways/{gw}/commands",
            params={"after": 0, "wait": 55},
            headers={"Authorization": f"Bearer {token}"},
        )
        return r.status_code

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(poll(gw, tok)) for gw, tok in tokens]
    await asyncio.sleep(8)  # all connected and parked (each did one SELECT on arrival)
    settle = time.perf_counter() - t0
    rcv0, pg0 = cpu_s(receiver_pid), postgres_cpu_s()
    await asyncio.sleep(20)
    rcv1, pg1 = cpu_s(receiver_pid), postgres_cpu_s()
    after = rss_mb(receiver_pid)
    pending = sum(1 for t in tasks if not t.done())
    print(f"{n} idle long-polls ({pending} still parked after {settle + 20:.0f} s):")
    print(
        f"  receiver RSS {before:.0f} MB -> {after:.0f} MB ({(after - before) * 1024 / n:.1f} kB/poll)"
    )
    pg = sum(pg1[pid] - pg0[pid] for pid in pg0.keys() & pg1.keys())
    print(
        f"  CPU at rest over 20 s: receiver {100 * (rcv1 - rcv0) / 20:.2f} %, "
        f"postgres {100 * pg / 20:.2f} % of one core"
    )
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=25.0)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--dsn")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="outpost-bench-commands-"))
    tmp.chmod(0o755)
    pg = None
    try:
        if args.dsn:
            admin_dsn = args.dsn
        else:
            pg = EmbeddedPostgres(tmp / "pg")
            admin_dsn = pg.start()
        name = f"bench_{uuid.uuid4().hex[:8]}"

        async def create() -> None:
            conn = await asyncpg.connect(admin_dsn)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()

        asyncio.run(create())
        dsn = urlunsplit(urlsplit(admin_dsn)._replace(path="/" + name))
        port = free_port()
        env = {**os.environ, "OUTPOST_RECEIVER_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(REPO)}
        log = open(tmp / "receiver.log", "wb")
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
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if receiver.poll() is not None:
                raise SystemExit(f"receiver exited: {(tmp / 'receiver.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        try:
            agent_dir = tmp / "agent"
            agent_dir.mkdir()
            if args.count:
                asyncio.run(latency(url, agent_dir, args.count, args.rate))
            if args.idle:
                asyncio.run(idle_polls(url, dsn, receiver.pid, args.idle))
        finally:
            receiver.send_signal(signal.SIGTERM)
            try:
                receiver.wait(30)
            except subprocess.TimeoutExpired:
                receiver.kill()
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()


def _ms(iso: str) -> float:
    """The API's ISO 8601 times as epoch milliseconds (results carry epoch ms)."""
    return datetime.fromisoformat(iso).timestamp() * 1000
