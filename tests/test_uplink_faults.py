"""Uplink fault tests: connections cut mid-request and mid-response, the agent SIGKILLed during
sync. Real receiver, real PostgreSQL, real HTTP; afterwards buffer and receiver must hold
identical sets of readings (and events).

This module doubles as the child process of the SIGKILL test
(``python tests/test_uplink_faults.py child ...``): a writer plus the uplink on a shared
buffer file, exactly what the agent runs, killed at random moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

if __name__ == "__main__":  # the child process: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outpost.cloud.receiver.ingest_columns import decode_columnar
from tests.chaos_proxy import ChaosProxy
from tests.fork_server import ForkClient
from tests.uplink_harness import (
    Writer,
    all_synced,
    assert_identical,
    buffer_event_ids,
    buffer_rows,
    cloud_config,
    make_uplink,
    open_buffer,
    wait_for,
)

pytest_plugins = ("tests.receiver_fixtures",)

GW = "gw-faults"
REPO = Path(__file__).resolve().parent.parent
SELF = str(Path(__file__).resolve())


@pytest.mark.parametrize("layout", ["rows", "columnar"])
async def test_chaos_proxy_cuts_requests_and_responses(
    receiver, tmp_path: Path, layout: str
) -> None:
    """100 connection cuts, half while the request is on its way (the receiver never sees a
    whole batch), half while the response is (the receiver committed, the agent never saw the
    ack and must replay). Nothing lost, nothing doubled. Both buffer layouts."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    proxy = ChaosProxy("127.0.0.1", receiver.port, seed=11)
    await proxy.start()
    buf = open_buffer(tmp_path / "buffer.db", layout)
    try:
        writer = Writer(buf, points=30)
        base = int(time.time() * 1000) - 1_000_000
        for i in range(100):  # some backlog so both live and backlog batches get cut
            writer.round(base + i * 1000)
        uplink = make_uplink(
            cloud_config(proxy.url, batch_size=300, heartbeat_interval=0.3), GW, tmp_path, buf
        )
        proxy.arm(requests=50, responses=50, probability=0.35)
        stop = asyncio.Event()
        task = asyncio.create_task(uplink.run())
        wtask = asyncio.create_task(writer.run(stop, period=0.02))
        try:
            await wait_for(lambda: proxy.armed == 0, 90, "all 100 cuts to happen")
            stop.set()
            await wtask
            await buf.flush()
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 30, "full sync")
            assert not task.done()
            status = uplink.status()
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        buf.close()
        await proxy.stop()
    assert proxy.cuts == {"request": 50, "response": 50}
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(tmp_path / "buffer.db")
    # Cut responses of committed batches forced replays, which the receiver deduplicated.
    assert status["duplicates_acked"] > 0
    assert status["batches_failed"] >= 30
    assert status["rejected_batches"] == 0


#: SIGKILLs per buffer layout: the default (columnar) at the audit's scale, rows as well
AGENT_KILLS = {"columnar": 50, "rows": 20}


@pytest.mark.parametrize("layout", ["columnar", "rows"])
async def test_agent_sigkilled_during_sync(receiver, tmp_path: Path, layout: str) -> None:
    """Writer + uplink in a child process on one buffer file, SIGKILLed at random moments
    while syncing (a commit in flight, a request in flight, an ack being recorded...), 50 times
    on the default layout and 20 on the other, restarted each time; finally a clean run drains
    the buffer. Identical sets afterwards. Each child is forked by a server that imported
    everything once (tests/fork_server.py): a real process and a real SIGKILL each round,
    without paying the interpreter's start-up every time."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    rng = random.Random(5)
    kills = 0
    log = tmp_path / "children.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with ForkClient([sys.executable, SELF, "serve"], log, env) as fork:
        for i in range(AGENT_KILLS[layout]):
            args = (str(tmp_path), receiver.url, "write", str(i), layout)
            pid = await asyncio.to_thread(fork.run, *args)
            await asyncio.to_thread(fork.expect, lambda line: line == "running", 30)
            # every other kill early (first requests, cursor reads), the rest mid-stream
            await asyncio.sleep(rng.uniform(0.02, 0.3) if i % 2 else rng.uniform(0.3, 0.8))
            assert fork.worker == pid, log.read_text()
            assert await asyncio.to_thread(fork.kill, pid) == -signal.SIGKILL, log.read_text()
            kills += 1
        await asyncio.to_thread(fork.run, str(tmp_path), receiver.url, "drain", "99", layout)
        await asyncio.to_thread(fork.expect, lambda line: line == "drained", 90)
        assert await asyncio.to_thread(fork.wait_exit) == 0, log.read_text()
    assert kills == AGENT_KILLS[layout]
    rows = buffer_rows(tmp_path / "buffer.db")
    assert len(rows) > 2000
    assert_identical(rows, await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(tmp_path / "buffer.db")
    log = await receiver.fetch("SELECT count(*) AS n FROM ingest_log WHERE gateway_id = $1", GW)
    assert log[0]["n"] >= 12
    assert "Traceback" not in (tmp_path / "children.log").read_text()


# --- the child process ---------------------------------------------------------------------------


async def _child(data_dir: Path, url: str, mode: str, seed: int, layout: str) -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    buf = open_buffer(data_dir / "buffer.db", layout)
    uplink = make_uplink(cloud_config(url, batch_size=200), GW, data_dir, buf)
    task = asyncio.create_task(uplink.run())
    try:
        if mode == "write":
            writer = Writer(buf, points=40, seed=seed)
            print("running", flush=True)
            await writer.run(asyncio.Event(), period=0.01)  # until SIGKILL
        await wait_for(lambda: asyncio.to_thread(all_synced, buf), 60, "drain")
        if task.done():
            task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(buf.close)
    print("drained", flush=True)


def _worker(args: list[str]) -> None:
    data_dir_arg, url_arg, mode_arg, seed_arg, layout_arg = args
    asyncio.run(_child(Path(data_dir_arg), url_arg, mode_arg, int(seed_arg), layout_arg))


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _worker(sys.argv[2:])
elif __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    from tests import fork_server

    fork_server.serve(_worker)


async def test_retry_after_is_honoured(receiver, tmp_path: Path) -> None:
    """An overloaded front end (the proxy) answers 429 with Retry-After: 1 twice. The uplink
    waits at least what it was told although its own backoff is capped at 0.3 s, and the
    data still arrives exactly once."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    proxy = ChaosProxy("127.0.0.1", receiver.port)
    await proxy.start()
    proxy.answer(429, count=2, path_prefix="/api/v1/ingest", headers={"Retry-After": "1"})
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        Writer(buf, points=10).round()
        await buf.flush()
        uplink = make_uplink(cloud_config(proxy.url, heartbeat_interval=30.0), GW, tmp_path, buf)
        t0 = time.monotonic()
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 30, "full sync")
            elapsed = time.monotonic() - t0
            status = uplink.status()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        buf.close()
        await proxy.stop()
    assert proxy.answered == 2
    assert status["batches_failed"] >= 1 and "HTTP 429" in status["last_error"]
    assert elapsed >= 2.0 - 0.05  # can only be longer on a slow machine
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))


async def test_front_end_refusing_everything_dead_letters_nothing(receiver, tmp_path: Path) -> None:
    """A misbehaving front end answers 400 to every ingest for a while. A 400 normally means
    "bad batch" (bisect, dead-letter), but the uplink checks with an empty batch first: as that
    is refused too, the problem is not the data, and nothing is dead-lettered."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    proxy = ChaosProxy("127.0.0.1", receiver.port)
    await proxy.start()
    proxy.answer(400, count=8, path_prefix="/api/v1/ingest")
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=10)
        for i in range(20):
            writer.round(int(time.time() * 1000) - 100_000 + i * 1000)
        await buf.flush()
        uplink = make_uplink(cloud_config(proxy.url, batch_size=50), GW, tmp_path, buf)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 30, "full sync")
            status = uplink.status()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        rejected = buf.read_rejected()
    finally:
        buf.close()
        await proxy.stop()
    assert proxy.answered == 8
    assert rejected == [] and status["rejected_batches"] == 0
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))


RECEIVER_KILLS = 10


async def test_receiver_sigkilled_mid_sync(receiver_process, receiver_dsn, tmp_path: Path) -> None:
    """The receiver process itself is SIGKILLed ten times while batches are in flight and
    restarted on the same port: a batch is either committed (and maybe replayed) or not at
    all; identical sets afterwards."""
    import asyncpg
    import httpx

    from tests.receiver_fixtures import ADMIN_TOKEN

    rx = await asyncio.to_thread(receiver_process)
    async with httpx.AsyncClient(base_url=rx.url) as c:
        r = await c.post(
            f"/api/v1/gateways/{GW}/enrollment-tokens",
            json={"ttl_s": 600},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        r.raise_for_status()
        r = await c.post(
            "/api/v1/enroll",
            json={"gateway_id": GW, "enrollment_token": r.json()["enrollment_token"]},
        )
        r.raise_for_status()
        (tmp_path / "gateway.token").write_text(r.json()["gateway_token"])
    buf = open_buffer(tmp_path / "buffer.db")
    rng = random.Random(3)
    try:
        writer = Writer(buf, points=50)
        base = int(time.time() * 1000) - 5_000_000
        for i in range(400):  # 20,000 readings of backlog: the receiver is busy when killed
            writer.round(base + i * 1000)
        uplink = make_uplink(cloud_config(rx.url, batch_size=400), GW, tmp_path, buf)
        stop = asyncio.Event()
        task = asyncio.create_task(uplink.run())
        wtask = asyncio.create_task(writer.run(stop, period=0.02))
        try:
            for _ in range(RECEIVER_KILLS):
                sent = uplink.status()["batches_sent"]
                await wait_for(
                    lambda sent=sent: uplink.status()["batches_sent"] > sent, 30, "progress"
                )
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                await asyncio.to_thread(rx.kill)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(rx.start)
            stop.set()
            await wtask
            await buf.flush()
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 60, "full sync")
            assert not task.done()
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        buf.close()
    conn = await asyncpg.connect(receiver_dsn)
    try:
        rows = await conn.fetch(
            """SELECT p.point_id, (extract(epoch FROM r.time) * 1000)::bigint AS ts_ms,
                      r.value, r.quality
               FROM readings r JOIN points p ON p.key = r.point_key WHERE p.gateway_id = $1""",
            GW,
        )
        event_rows = await conn.fetch(
            "SELECT event_id FROM events WHERE gateway_id = $1 ORDER BY event_id", GW
        )
    finally:
        await conn.close()
    received = [(r["point_id"], r["ts_ms"], r["value"], r["quality"]) for r in rows]
    assert_identical(buffer_rows(tmp_path / "buffer.db"), received)
    event_ids = [r["event_id"] for r in event_rows]
    assert event_ids and event_ids == buffer_event_ids(tmp_path / "buffer.db")


@pytest.mark.parametrize("layout", ["rows", "columnar"])
async def test_cancelled_at_random_moments(receiver, tmp_path: Path, layout: str) -> None:
    """The supervisor cancels and restarts run() 25 times at random moments (requests and
    cursor updates in flight, worker threads mid-read): a cancelled request never advances the
    cursor, a restarted run never skips rows. Identical sets afterwards."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    buf = open_buffer(tmp_path / "buffer.db", layout)
    rng = random.Random(8)
    try:
        writer = Writer(buf, points=40)
        base = int(time.time() * 1000) - 5_000_000
        for i in range(200):
            writer.round(base + i * 1000)
        uplink = make_uplink(cloud_config(receiver.url, batch_size=150), GW, tmp_path, buf)
        stop = asyncio.Event()
        wtask = asyncio.create_task(writer.run(stop, period=0.01))
        for i in range(25):
            task = asyncio.create_task(uplink.run())
            if i % 2 == 0:
                # Every other time, only once this run has delivered something, so the
                # cancellations hit a syncing uplink however slow the machine is; the others
                # land anywhere (enrollment, the first read, ...).
                sent = uplink.status()["batches_sent"]
                await wait_for(
                    lambda sent=sent: uplink.status()["batches_sent"] > sent, 30, "a batch"
                )
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stop.set()
        await wtask
        await buf.flush()
        sent_while_cancelled = uplink.status()["batches_sent"]
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 30, "full sync")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        buf.close()
    assert sent_while_cancelled >= 10  # the cancellations really hit a syncing uplink
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(tmp_path / "buffer.db")


def _ingest_body(body: bytes) -> tuple[list[str], int, int]:
    """(point ids, readings, events) of an ingest body in either format, as the receiver
    reads it (the uplink compresses with zstd)."""
    raw = zstandard.ZstdDecompressor().decompress(body) if body else body
    if raw.startswith(b"OPC1"):
        batch = decode_columnar(raw)
        return batch.readings.point_ids, len(batch.readings), len(batch.events)
    doc = json.loads(raw)
    readings = doc.get("readings", {})
    return readings.get("point_ids", []), len(readings.get("point", [])), len(doc["events"])


def _carries_point(point_id: str) -> Callable[[bytes], bool]:
    return lambda body: point_id in _ingest_body(body)[0]


def _carries_data(body: bytes) -> bool:
    _, readings, events = _ingest_body(body)
    return readings > 0 or events > 0


async def test_receiver_failing_on_a_poisoned_row_dead_letters_only_that_row(
    receiver, tmp_path: Path
) -> None:
    """A receiver that answers 500 to every batch holding one particular reading (a row it
    cannot store) while it accepts the empty probe: the uplink bisects, dead-letters exactly
    that reading with status 500, delivers everything else and does not stall."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    proxy = ChaosProxy("127.0.0.1", receiver.port)
    await proxy.start()
    proxy.answer(
        500,
        count=10**6,
        path_prefix="/api/v1/ingest",
        body_matches=_carries_point("poison.p00"),
    )
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=20)
        base = int(time.time() * 1000) - 600_000
        for i in range(30):
            writer.round(base + i * 1000)
        bad_key = buf.point_keys(["poison.p00"])
        buf.append([(base + 30_500) / 1000.0], bad_key, [42.0], [0])
        for i in range(30, 60):
            writer.round(base + i * 1000)
        await buf.flush()
        bad_seq = buf.last_seq - 30 * 20
        uplink = make_uplink(cloud_config(proxy.url, batch_size=200), GW, tmp_path, buf)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 60, "full sync")
            status = uplink.status()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        rejected = buf.read_rejected()
    finally:
        buf.close()
        await proxy.stop()
    assert proxy.answered >= 3
    assert [(r["first_seq"], r["last_seq"], r["status"]) for r in rejected] == [
        (bad_seq, bad_seq, 500)
    ]
    assert status["rejected_batches"] == 1
    expected = [r for r in buffer_rows(tmp_path / "buffer.db") if r[0] != "poison.p00"]
    assert len(expected) == 60 * 20
    assert_identical(expected, await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(tmp_path / "buffer.db")


async def test_receiver_failing_every_write_dead_letters_nothing(receiver, tmp_path: Path) -> None:
    """A receiver that answers 500 to every batch carrying data for a while, but accepts the
    empty probe (its database refuses writes, say): batches get bisected, but with no data
    acknowledged meanwhile no single row is blamed; once writes work, everything arrives."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    proxy = ChaosProxy("127.0.0.1", receiver.port)
    await proxy.start()
    proxy.answer(
        500,
        count=40,
        path_prefix="/api/v1/ingest",
        body_matches=_carries_data,
    )
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=10)
        for i in range(20):
            writer.round(int(time.time() * 1000) - 100_000 + i * 1000)
        await buf.flush()
        uplink = make_uplink(cloud_config(proxy.url, batch_size=50), GW, tmp_path, buf)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 60, "full sync")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        rejected = buf.read_rejected()
    finally:
        buf.close()
        await proxy.stop()
    assert proxy.answered == 40
    assert rejected == []
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(tmp_path / "buffer.db")
