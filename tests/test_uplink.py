"""Uplink against a real receiver on real PostgreSQL over real HTTP.

Every test ends with the same question: is the set of readings the agent buffered identical
to the set the receiver stored (nothing lost, nothing duplicated)?
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from outpost.cloud.config import CloudConfig
from outpost.cloud.uplink import Uplink, UplinkConfigError
from tests.receiver_fixtures import ReceiverFactory, ReceiverHandle
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

GW = "gw-up-1"


@contextlib.asynccontextmanager
async def running(uplink: Uplink):
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def finish(buf, uplink_task: asyncio.Task[None] | None = None, within: float = 30) -> None:
    await buf.flush()

    def done() -> bool:
        if uplink_task is not None and uplink_task.done():
            uplink_task.result()  # surface a crash instead of a timeout
        return all_synced(buf)

    await wait_for(lambda: asyncio.to_thread(done), within, "the buffer to be fully synced")


# --- configuration ------------------------------------------------------------------------------


def test_config_validation_and_token_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = CloudConfig(url="https://fleet.example.com/")
    assert cfg.url == "https://fleet.example.com"
    assert (cfg.batch_size, cfg.heartbeat_interval, cfg.compression, cfg.live_first) == (
        5000,
        30.0,
        "zstd",
        True,
    )
    assert cfg.token_path(tmp_path) == tmp_path / "gateway.token"
    assert cfg.resolve_enrollment_token() is None
    with pytest.raises(ValidationError, match="extra"):
        CloudConfig(url="http://x", batch_sise=10)
    with pytest.raises(ValidationError, match="http:// or https://"):
        CloudConfig(url="fleet.example.com")
    with pytest.raises(
        ValidationError, match="at most one of enrollment_token, enrollment_token_env"
    ):
        CloudConfig(url="http://x", enrollment_token="a", enrollment_token_env="B")
    with pytest.raises(ValidationError, match="backoff_max"):
        CloudConfig(url="http://x", backoff_min=5, backoff_max=1)
    monkeypatch.setenv("OUTPOST_TEST_ENROLL", " tok-env \n")
    assert (
        CloudConfig(
            url="http://x", enrollment_token_env="OUTPOST_TEST_ENROLL"
        ).resolve_enrollment_token()
        == "tok-env"
    )
    (tmp_path / "enroll.txt").write_text("tok-file\n")
    assert (
        CloudConfig(
            url="http://x", enrollment_token_file=tmp_path / "enroll.txt"
        ).resolve_enrollment_token()
        == "tok-file"
    )
    absolute = CloudConfig(url="http://x", token_file=tmp_path / "elsewhere" / "t")
    assert absolute.token_path(Path("/nowhere")) == tmp_path / "elsewhere" / "t"


# --- exactly once -------------------------------------------------------------------------------


async def test_exactly_once_while_writing(receiver: ReceiverHandle, tmp_path: Path) -> None:
    """A writer appends while the uplink runs (live-first, 2 batches in flight); afterwards
    buffer and receiver hold identical sets, events included; enrollment happened once and
    the gateway token is stored 0600; heartbeats arrived."""
    enrollment = await receiver.enrollment_token(GW)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=40)
        for _ in range(150):  # a backlog before the uplink starts: live-first kicks in
            writer.round(int(time.time() * 1000) - 600_000 + writer.rounds * 1000)
        uplink = make_uplink(
            cloud_config(receiver.url, enrollment_token=enrollment), GW, tmp_path, buf
        )
        stop = asyncio.Event()
        async with running(uplink) as task:
            wtask = asyncio.create_task(writer.run(stop, period=0.01))
            await asyncio.sleep(2.5)
            stop.set()
            await wtask
            await finish(buf, task)
            status = uplink.status()
            await wait_for(lambda: uplink.status()["heartbeats_sent"] >= 1, 10, "a heartbeat")
        token_file = tmp_path / "gateway.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert len(token_file.read_text().strip()) >= 40
    finally:
        buf.close()
    assert writer.rows > 6000
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(tmp_path / "buffer.db") != []
    assert status["connected"] is True and status["readings_sent"] >= writer.rows
    assert status["rejected_batches"] == 0 and status["bytes_sent"] > 0
    gw = (await receiver.fetch("SELECT last_heartbeat FROM gateways WHERE id = $1", GW))[0]
    assert gw["last_heartbeat"] is not None
    points = await receiver.fetch(
        "SELECT point_id, units FROM points WHERE gateway_id = $1 AND units = 'degC'", GW
    )
    assert sorted(p["point_id"] for p in points) == ["dev-00.p00", "dev-00.p01", "dev-00.p02"]


async def test_enrollment_token_is_used_once(receiver: ReceiverHandle, tmp_path: Path) -> None:
    enrollment = await receiver.enrollment_token(GW)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        cfg = cloud_config(receiver.url, enrollment_token=enrollment)
        Writer(buf, points=5).round()
        first = make_uplink(cfg, GW, tmp_path, buf)
        async with running(first) as task:
            await finish(buf, task)
        token = (tmp_path / "gateway.token").read_text()
        # A restart with the same config uses the stored token, not the (spent) enrollment one.
        Writer(buf, points=5, seed=2, prefix="second").round()
        second = make_uplink(cfg, GW, tmp_path, buf)
        async with running(second) as task:
            await finish(buf, task)
        assert (tmp_path / "gateway.token").read_text() == token
        # Without the token file the spent enrollment token is refused: clear error, no crash,
        # nothing sent, and the data stays buffered.
        (tmp_path / "gateway.token").unlink()
        Writer(buf, points=5, seed=3, prefix="third").round()
        await buf.flush()
        third = make_uplink(cfg, GW, tmp_path, buf)
        async with running(third) as task:
            await wait_for(lambda: third.status()["last_error"] is not None, 10, "an error")
            assert not task.done()
        assert "enrollment failed" in third.status()["last_error"]
        assert "already used" in third.status()["last_error"]
        assert third.status()["readings_sent"] == 0
        assert buf.stats().unsynced_rows == 5
        assert not (tmp_path / "gateway.token").exists()
    finally:
        buf.close()


# --- faults -------------------------------------------------------------------------------------


async def test_receiver_down_backlog_drains_oldest_first_live_not_starved(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    """The receiver stops while the agent keeps writing; on restart the backlog drains
    oldest-first, and a reading written after the restart arrives while the backlog is still
    draining (live-first: fresh batches alternate with backlog batches)."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=50)
        uplink = make_uplink(
            cloud_config(receiver.url, batch_size=250, max_in_flight=1), GW, tmp_path, buf
        )
        async with running(uplink) as task:
            writer.round()
            await finish(buf, task)
            await receiver.stop()
            # ~30,000 readings of backlog while the receiver is away (~120 batches to drain)
            base = int(time.time() * 1000) - 3_600_000
            for i in range(600):
                writer.round(base + i * 1000)
            await buf.flush()
            await wait_for(lambda: uplink.status()["connected"] is False, 10, "disconnected")
            backlog_top = buf.last_seq
            cursor = buf.synced_through()
            assert buf.stats().unsynced_rows == 30_000
            await receiver.start()
            writer.round()  # fresh data after the restart
            await buf.flush()
            marker = (writer.ids[0], writer.last_ms)

            async def marker_arrived() -> bool:
                rows = await receiver.fetch(
                    "SELECT 1 FROM readings r JOIN points p ON p.key = r.point_key "
                    "WHERE p.gateway_id = $1 AND p.point_id = $2 AND r.time = "
                    "TIMESTAMPTZ 'epoch' + $3 * INTERVAL '1 millisecond'",
                    GW,
                    marker[0],
                    marker[1],
                )
                return bool(rows)

            await wait_for(marker_arrived, 30, "the fresh reading")
            still_unsynced = await asyncio.to_thread(lambda: buf.stats().unsynced_rows)
            await finish(buf, task, within=60)
        log = await receiver.fetch(
            "SELECT first_seq, last_seq FROM ingest_log WHERE gateway_id = $1 "
            "AND first_seq > $2 AND last_seq <= $3 ORDER BY id",
            GW,
            cursor,
            backlog_top,
        )
    finally:
        buf.close()
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
    # live-first: the fresh reading did not wait for 30,000 rows of backlog
    assert still_unsynced > 5_000
    # oldest-first: the first batch after the restart starts at the cursor and the backlog
    # goes up in seq order; the only steps down are the (few) fresh batches from the top
    firsts = [r["first_seq"] for r in log]
    assert firsts[0] == cursor + 1
    assert len(firsts) >= 100
    assert sum(1 for a, b in itertools.pairwise(firsts) if b < a) <= 2


async def test_same_batches_replayed_three_times(receiver: ReceiverHandle, tmp_path: Path) -> None:
    """The agent forgets its acks (a buffer restored to its pre-sync state, as after a crash
    between the receiver's commit and the cursor update) and sends the very same batches three
    more times: the receiver adds nothing and every replayed batch is acknowledged as
    duplicates."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    snapshot = tmp_path / "snapshot.db"
    buf = open_buffer(tmp_path / "buffer.db")
    writer = Writer(buf, points=30)
    for i in range(100):
        writer.round(int(time.time() * 1000) - 100_000 + i * 1000)
    buf.close()
    shutil.copy(tmp_path / "buffer.db", snapshot)
    expected = buffer_rows(snapshot)
    for attempt in range(4):
        if attempt:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{tmp_path / 'buffer.db'}{suffix}")
            shutil.copy(snapshot, tmp_path / "buffer.db")
        buf = open_buffer(tmp_path / "buffer.db")
        try:
            assert buf.synced_through() == 0
            cfg = cloud_config(receiver.url, batch_size=700, max_in_flight=1)
            uplink = make_uplink(cfg, GW, tmp_path, buf)
            async with running(uplink) as task:
                await finish(buf, task)
            status = uplink.status()
        finally:
            buf.close()
        assert_identical(expected, await receiver.readings(GW))
        if attempt:
            assert status["duplicates_acked"] == len(expected)
    log = await receiver.fetch(
        "SELECT first_seq, last_seq, inserted, duplicate FROM ingest_log WHERE gateway_id = $1 "
        "AND last_seq > 0 ORDER BY id",
        GW,
    )
    ranges = [(r["first_seq"], r["last_seq"]) for r in log]
    per_pass = len(ranges) // 4
    assert per_pass >= 4 and len(ranges) == 4 * per_pass
    assert sum(r["inserted"] for r in log) == len(expected)
    assert sum(r["duplicate"] for r in log) == 3 * len(expected)
    # the same ranges each time (the buffer state decides the batches, not luck)
    assert (
        sorted(ranges[:per_pass])
        == sorted(ranges[per_pass : 2 * per_pass])
        == sorted(ranges[3 * per_pass :])
    )


async def test_bad_batch_is_dead_lettered_and_sync_continues(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    """A reading and an event with an impossible timestamp (1970: a device clock reset) make
    the receiver answer 422. The uplink bisects the batch, dead-letters exactly the offending
    reading and event (visible in buffer stats), delivers everything else and carries on."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=20)
        now = int(time.time() * 1000)
        for i in range(30):
            writer.round(now - 60_000 + i * 1000)
        bad_key = buf.point_keys(["clock-reset.p00"])
        buf.append([1.0], bad_key, [42.0], [0])  # 1970-01-01T00:00:01Z
        buf.append_event(2.0, "alarm", "clock-reset.p00", "system", {"state": "active"})
        for i in range(30):
            writer.round(now - 20_000 + i * 100)
        await buf.flush()
        bad_seq = next(
            seq for seq, pid in _seq_points(tmp_path / "buffer.db") if pid == "clock-reset.p00"
        )
        uplink = make_uplink(cloud_config(receiver.url, batch_size=1000), GW, tmp_path, buf)
        async with running(uplink) as task:
            await finish(buf, task)
            # and it goes on with what comes next
            writer.round()
            await finish(buf, task)
            status = uplink.status()
        rejected = buf.read_rejected()
        stats = buf.stats()
    finally:
        buf.close()
    assert stats.rejected_batches == 2 == len(rejected)
    reading_dl = [r for r in rejected if r["first_seq"] == bad_seq]
    assert len(reading_dl) == 1 and reading_dl[0]["last_seq"] == bad_seq
    assert reading_dl[0]["status"] == 422 and reading_dl[0]["payload_bytes"] > 0
    event_dl = [r for r in rejected if r["first_seq"] == 0]
    assert len(event_dl) == 1 and "events" in event_dl[0]["reason"]
    assert status["rejected_batches"] >= 1
    expected = [r for r in buffer_rows(tmp_path / "buffer.db") if r[0] != "clock-reset.p00"]
    assert len(expected) == 61 * 20
    assert_identical(expected, await receiver.readings(GW))
    all_events = buffer_event_ids(tmp_path / "buffer.db")
    assert len(await receiver.event_ids(GW)) == len(all_events) - 1


def _seq_points(path: Path) -> list[tuple[int, str]]:
    """(seq, point_id) of every stored reading, through the file tools' export (any layout)."""
    import io
    import json

    from outpost.buffer.inspect import export_readings

    out = io.StringIO()
    export_readings(path, out, "jsonl", None, None, None)
    return [(d["seq"], d["point_id"]) for d in map(json.loads, out.getvalue().splitlines())]


async def test_revoked_token_backs_off_without_dead_lettering(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=10)
        writer.round()
        uplink = make_uplink(cloud_config(receiver.url), GW, tmp_path, buf)
        async with running(uplink) as task:
            await finish(buf, task)
            async with httpx.AsyncClient(
                base_url=receiver.url, headers=receiver.admin_headers
            ) as c:
                assert (await c.post(f"/api/v1/gateways/{GW}/revoke")).status_code == 200
            writer.round()
            await buf.flush()
            await wait_for(
                lambda: "HTTP 401" in (uplink.status()["last_error"] or ""),
                10,
                "the 401 to be reported",
            )
            await asyncio.sleep(0.5)
            status = uplink.status()
            assert not task.done()
        stats = buf.stats()
    finally:
        buf.close()
    assert status["connected"] is False
    assert stats.rejected_batches == 0 and stats.unsynced_rows == 10
    assert len(await receiver.readings(GW)) == 10


async def test_bandwidth_cap(receiver_factory: ReceiverFactory, tmp_path: Path) -> None:
    """With max_bytes_per_s the compressed upload stays under the cap (loosely: the cap plus
    one second of burst plus two batches in flight)."""
    receiver = await receiver_factory()
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    rate = 20_000
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=100)
        base = int(time.time() * 1000) - 10_000_000
        for i in range(200):  # 20,000 readings, ~5 B each (binary body): ~5 s at the cap
            writer.round(base + i * 1000)
        await buf.flush()
        cfg = cloud_config(
            receiver.url, batch_size=5000, max_bytes_per_s=rate, heartbeat_interval=30.0
        )
        uplink = make_uplink(cfg, GW, tmp_path, buf)
        samples: list[tuple[float, int]] = []
        t0 = time.monotonic()
        async with running(uplink) as task:
            while not await asyncio.to_thread(all_synced, buf):
                assert not task.done()
                samples.append((time.monotonic() - t0, uplink.status()["bytes_sent"]))
                await asyncio.sleep(0.1)
                assert time.monotonic() - t0 < 60
            status = uplink.status()
        elapsed = time.monotonic() - t0
    finally:
        buf.close()
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
    total = status["bytes_sent"]
    assert total > 3 * rate
    batch_bytes = total / status["batches_sent"]
    for t, sent in samples:
        assert sent <= rate * t + rate + 2 * batch_bytes, (t, sent)
    # the cap is a floor on the duration too (only a slower machine can make it longer)
    assert elapsed >= (total - rate - 2 * batch_bytes) / rate


# --- building blocks ----------------------------------------------------------------------------


def test_backoff_is_capped_jittered_and_honours_retry_after() -> None:
    import random

    from outpost.cloud.uplink.support import parse_retry_after, retry_backoff

    b = retry_backoff(0.5, 8.0, rng=random.Random(3))
    delays = [b.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 4.0  # it grows towards the cap...
    assert len({round(d, 6) for d in delays}) == len(delays)  # ...with jitter
    assert b.next_delay(retry_after=20.0) == 20.0  # the server's word beats our cap
    assert b.next_delay(retry_after=1e6) == 300.0  # but a bogus header cannot park us for days
    b.reset()
    assert b.next_delay() <= 0.5 + 1e-9
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = 1_800_000_000.0
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:30 GMT", now=now) == pytest.approx(
        1_800_000_030.0 - now
    )


def test_token_file_is_written_atomically_0600(tmp_path: Path) -> None:
    from outpost.cloud.uplink.support import read_token, write_token

    path = tmp_path / "sub" / "gateway.token"
    old_umask = os.umask(0)
    try:
        write_token(path, "secret-1")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token(path) == "secret-1"
    write_token(path, "secret-2")
    assert read_token(path) == "secret-2"
    assert [p.name for p in path.parent.iterdir()] == ["gateway.token"]  # no temp files left
    assert read_token(tmp_path / "missing") is None


def _make_ca_and_server_cert(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, with the openssl CLI."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Outpost test CA",
    )
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


async def test_https_with_ca_file(receiver: ReceiverHandle, tmp_path: Path) -> None:
    """Behind a TLS front end with a private CA: without ca_file the uplink refuses the
    certificate and sends nothing; with ca_file it syncs."""
    import ssl

    from tests.chaos_proxy import ChaosProxy

    ca, cert, key = await asyncio.to_thread(_make_ca_and_server_cert, tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    proxy = ChaosProxy("127.0.0.1", receiver.port, tls=server_ctx)
    await proxy.start()
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        Writer(buf, points=10).round()
        await buf.flush()
        untrusted = make_uplink(cloud_config(proxy.url), GW, tmp_path, buf)
        async with running(untrusted):
            await wait_for(
                lambda: "CERTIFICATE_VERIFY_FAILED" in (untrusted.status()["last_error"] or ""),
                10,
                "a certificate error",
            )
        assert untrusted.status()["readings_sent"] == 0
        trusted = make_uplink(cloud_config(proxy.url, ca_file=ca), GW, tmp_path, buf)
        async with running(trusted) as task:
            await finish(buf, task)
        broken = make_uplink(
            cloud_config(proxy.url, ca_file=tmp_path / "nope.pem"), GW, tmp_path, buf
        )
        with pytest.raises(UplinkConfigError, match="ca_file"):
            await broken.run()
    finally:
        buf.close()
        await proxy.stop()
    assert proxy.url.startswith("https://")
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
