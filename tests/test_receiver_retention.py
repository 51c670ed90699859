"""Retention is a property of the database (issue 13 items 10 and 12) and aggregated answers
are complete right after a backfill (item 11).

Runs against any PostgreSQL (``OUTPOST_TEST_DSN``, else the embedded one). What is expected
of TimescaleDB-only parts (policies, the background refresh of aggregates) depends on what
the receiver's ``/readyz`` reports, never on an assumption that it is absent.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from outpost.cloud.receiver.storage import Storage
from outpost.cloud.wire import IngestBatch, columnar_readings
from tests.receiver_fixtures import REPO, ReceiverFactory, ReceiverHandle
from tests.test_receiver import post_batch

pytest_plugins = ("tests.receiver_fixtures",)

GW = "gw-ret-1"


async def timescaledb(rcv: ReceiverHandle) -> bool:
    async with httpx.AsyncClient(base_url=rcv.url) as c:
        body = (await c.get("/readyz")).json()
    assert body["ready"] is True and isinstance(body["timescaledb"], bool)
    return bool(body["timescaledb"])


def cloud_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outpost.cloud.receiver", *args, "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def policies(dsn: str) -> dict[str, str]:
    """TimescaleDB retention jobs: relation -> drop_after."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT coalesce(ca.view_name, j.hypertable_name) AS rel,
                      j.config->>'drop_after' AS drop_after
               FROM timescaledb_information.jobs j
               LEFT JOIN timescaledb_information.continuous_aggregates ca
                 ON ca.materialization_hypertable_name = j.hypertable_name
               WHERE j.proc_name = 'policy_retention'"""
        )
    finally:
        await conn.close()
    return {r["rel"]: r["drop_after"] for r in rows}


def batch(first_seq: int, times: list[float], point: str = "ahu-1.temp") -> IngestBatch:
    n = len(times)
    return IngestBatch(
        gateway_id=GW,
        first_seq=first_seq,
        last_seq=first_seq + n - 1,
        readings=columnar_readings([point] * n, times, [float(i % 50) for i in range(n)], [0] * n),
    )


async def test_retention_is_set_once_and_no_side_door_changes_it(
    receiver_factory: ReceiverFactory,
) -> None:
    rcv = await receiver_factory(retention_days=30)
    ts = await timescaledb(rcv)
    st = await Storage.open(rcv.dsn, min_size=1, max_size=1)
    try:
        assert await st.retention() == (True, 30)
    finally:
        await st.close()
    # the side doors: enroll and revoke through the CLI, a second receiver without the flag
    r = cloud_cli(rcv.dsn, "enroll", "gw-x")
    assert r.returncode == 0, r.stderr
    await rcv.enroll("gw-x")
    r = cloud_cli(rcv.dsn, "revoke", "gw-x")
    assert r.returncode == 0, r.stderr
    second = await receiver_factory(dsn=rcv.dsn)
    assert await timescaledb(second) == ts
    r = cloud_cli(rcv.dsn, "retention")
    assert r.returncode == 0 and r.stdout.strip() == "retention: 30 days", (r.stdout, r.stderr)
    if ts:
        assert set((await policies(rcv.dsn)).values()) == {"30 days"}
        assert set(await policies(rcv.dsn)) == {"readings", "readings_1m", "readings_1h"}
    # the explicit command changes it (and is audited)
    r = cloud_cli(rcv.dsn, "retention", "7")
    assert r.returncode == 0 and r.stdout.strip() == "retention: 7 days", r.stderr
    if ts:
        assert set((await policies(rcv.dsn)).values()) == {"7 days"}
    r = cloud_cli(rcv.dsn, "retention", "--off")
    assert r.stdout.strip() == "retention: off (kept forever)"
    if ts:
        assert await policies(rcv.dsn) == {}
    audit = await rcv.fetch("SELECT detail FROM audit WHERE action = 'receiver.retention'")
    assert len(audit) == 2
    r = cloud_cli(rcv.dsn, "retention", "0")
    assert r.returncode == 2 and "--off" in r.stderr


async def test_plain_postgresql_enforces_retention(receiver_factory: ReceiverFactory) -> None:
    rcv = await receiver_factory()
    token = await rcv.enroll(GW)
    now = time.time()
    old = [now - 10 * 86400 + i for i in range(300)]
    recent = [now - 3600 + i for i in range(200)]
    assert (await post_batch(rcv, batch(1, old + recent), token)).status_code == 200
    r = cloud_cli(rcv.dsn, "retention")
    assert r.stdout.strip() == "retention: never set (readings are kept forever)"
    assert await rcv.count("readings") == 500
    r = cloud_cli(rcv.dsn, "retention", "5")
    assert r.returncode == 0, r.stderr
    if not await timescaledb(rcv):
        # the command prunes at once (the receiver also does every retention_check_s)
        assert await rcv.count("readings") == 200
        rows = await rcv.fetch("SELECT min(time) AS t FROM readings")
        assert rows[0]["t"] >= datetime.fromtimestamp(now - 3601, UTC)
        # and the receiver's own round: a second old batch goes on its next check
        st = await Storage.open(rcv.dsn, min_size=1, max_size=2)
        try:
            assert (await post_batch(rcv, batch(1000, old[:50]), token)).status_code == 200
            assert await st.prune() == 50
        finally:
            await st.close()
        assert await rcv.count("readings") == 200


async def test_backfilled_history_is_in_aggregated_answers_at_once(
    receiver: ReceiverHandle,
) -> None:
    """Live data first, then the backlog of the previous hours arrives (store-and-forward
    after an outage): every aggregated resolution counts every reading right after the ack
    (TimescaleDB: within seconds, through the background refresh of the affected windows)."""
    token = await receiver.enroll(GW)
    ts = await timescaledb(receiver)
    now = time.time()
    start = datetime.fromtimestamp(now - 3 * 3600, UTC).replace(minute=0, second=0, microsecond=0)
    live = [now - 60 + i for i in range(0, 60, 5)]
    assert (await post_batch(receiver, batch(10_000, live), token)).status_code == 200
    backlog = [
        start.timestamp() + 10 * i for i in range(int((now - 120 - start.timestamp()) // 10))
    ]
    for k in range(0, len(backlog), 400):
        part = backlog[k : k + 400]
        assert (await post_batch(receiver, batch(1 + k, part), token)).status_code == 200
    total = len(backlog) + len(live)
    url = f"/api/v1/gateways/{GW}/points/ahu-1.temp/readings"
    frm = start.isoformat()
    to = datetime.fromtimestamp(now + 60, UTC).isoformat()

    async def counted(resolution: str) -> int:
        async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
            r = await c.get(url, params={"from": frm, "to": to, "resolution": resolution})
            assert r.status_code == 200, r.text
            return sum(int(b["count"]) for b in r.json()["readings"])

    for resolution in ("1m", "5m", "1h", "1d"):
        if not ts:
            assert await counted(resolution) == total, resolution
            continue
        for _ in range(75):  # bounded: 15 s
            if (got := await counted(resolution)) == total:
                break
            await asyncio.sleep(0.2)
        assert got == total, resolution
    assert total > 1000


async def test_aggregate_refresher_coalesces_late_windows(receiver_dsn: str) -> None:
    """The TimescaleDB refresh of backfilled windows, run against a stand-in procedure with
    refresh_continuous_aggregate's name and call shape (plain PostgreSQL has no TimescaleDB):
    late spans become bucket-aligned windows, a drain's many batches coalesce into one call
    per aggregate, and data newer than one bucket width refreshes nothing."""
    from outpost.cloud.receiver.migrate import AggregateRefresher

    pool = await asyncpg.create_pool(receiver_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        await pool.execute(
            """CREATE TABLE refreshed (name text, lo timestamptz, hi timestamptz);
               CREATE PROCEDURE refresh_continuous_aggregate(name text, lo timestamptz,
                                                             hi timestamptz)
               LANGUAGE sql AS $$ INSERT INTO refreshed VALUES (name, lo, hi) $$"""
        )
        refresher = AggregateRefresher(pool, delay_s=0.3)
        now_ms = int(time.time() * 1000)
        refresher.note(now_ms - 5_000, now_ms)  # live: above both watermarks
        day = 86_400_000
        start = (now_ms - 2 * day) // 3_600_000 * 3_600_000 + 90_000  # hh:01:30
        for k in range(10):  # a backlog drained in 10 batches of 10 minutes each
            refresher.note(start + k * 600_000, start + (k + 1) * 600_000 - 1)
        for _ in range(50):  # bounded: 5 s
            if refresher.refreshes >= 2:
                break
            await asyncio.sleep(0.1)
        rows = await pool.fetch("SELECT name, lo, hi FROM refreshed ORDER BY name")
        await refresher.close()
    finally:
        await pool.close()
    got = {r["name"]: (r["lo"], r["hi"]) for r in rows}
    assert len(rows) == 2 and set(got) == {"readings_1m", "readings_1h"}
    lo = datetime.fromtimestamp(start / 1000, UTC)
    hi = datetime.fromtimestamp((start + 10 * 600_000 - 1) / 1000, UTC)
    assert got["readings_1m"] == (
        lo.replace(second=0, microsecond=0),
        hi.replace(second=0, microsecond=0) + timedelta(minutes=1),
    )
    assert got["readings_1h"] == (
        lo.replace(minute=0, second=0, microsecond=0),
        hi.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1),
    )
