"""Enrollment is retry-safe (issue 13 item 2): an answer cut on the wire does not spend the
enrollment token; the retry gets a fresh gateway token and the lost one stops working. Once the
gateway has been heard with its token, or after a revoke, the enrollment token is spent."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx

from tests.chaos_proxy import ChaosProxy
from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import (
    Writer,
    all_synced,
    assert_identical,
    buffer_rows,
    cloud_config,
    make_uplink,
    open_buffer,
    wait_for,
)

pytest_plugins = ("tests.receiver_fixtures",)

GW = "gw-enroll-1"


async def _enroll(c: httpx.AsyncClient, token: str, gw: str = GW) -> httpx.Response:
    return await c.post("/api/v1/enroll", json={"gateway_id": gw, "enrollment_token": token})


async def _heartbeat(c: httpx.AsyncClient, gateway_token: str) -> int:
    r = await c.post(
        f"/api/v1/gateways/{GW}/heartbeat",
        json={"gateway_id": GW, "ts": 1_700_000_000_000, "mode": "normal", "agent_version": "t"},
        headers={"Authorization": f"Bearer {gateway_token}"},
    )
    return r.status_code


async def test_retry_reissues_until_the_token_is_used(receiver: ReceiverHandle) -> None:
    enrollment = await receiver.enrollment_token(GW)
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        first = await _enroll(c, enrollment)
        assert first.status_code == 200
        lost = first.json()["gateway_token"]
        # the answer "was lost": the gateway asks again with the same enrollment token
        second = await _enroll(c, enrollment)
        assert second.status_code == 200, second.text
        fresh = second.json()["gateway_token"]
        assert fresh != lost
        assert await _heartbeat(c, lost) == 401  # the token lost on the wire is dead
        assert await _heartbeat(c, fresh) == 200
        # heard with its token: the enrollment token is spent now
        third = await _enroll(c, enrollment)
        assert third.status_code == 401 and "already used" in third.json()["detail"]
        assert await _heartbeat(c, fresh) == 200
        # another gateway's name with this token stays refused
        other = await _enroll(c, enrollment, "gw-other")
        assert other.status_code == 401
    assert await receiver.count("gateways") == 1


async def test_no_retry_after_revoke_or_newer_enrollment(receiver: ReceiverHandle) -> None:
    enrollment = await receiver.enrollment_token(GW)
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        assert (await _enroll(c, enrollment)).status_code == 200
        r = await c.post(f"/api/v1/gateways/{GW}/revoke", headers=receiver.admin_headers)
        assert r.status_code in (200, 204), r.text
        again = await _enroll(c, enrollment)
        assert again.status_code == 401
        # a newer enrollment token re-enrolls; the older, used one cannot take over again
        older = await receiver.enrollment_token(GW)
        assert (await _enroll(c, older)).status_code == 200
        newer = await receiver.enrollment_token(GW)
        assert (await _enroll(c, newer)).status_code == 200
        assert (await _enroll(c, older)).status_code == 401


async def test_uplink_enrolls_through_a_cut_answer(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    """The receiver commits the enrollment, the chaos proxy cuts its answer: the uplink's
    retry still enrolls and the buffered data arrives exactly once."""
    enrollment = await receiver.enrollment_token(GW)
    proxy = ChaosProxy("127.0.0.1", receiver.port, seed=13)
    await proxy.start()
    proxy.arm(responses=1)  # the first answer is the enrollment's
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        Writer(buf, points=5).round()
        await buf.flush()
        uplink = make_uplink(
            cloud_config(proxy.url, enrollment_token=enrollment), GW, tmp_path, buf
        )
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: proxy.cuts["response"] == 1, 20, "the cut answer")
            await wait_for(lambda: all_synced(buf), 30, "everything synced")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert (tmp_path / "gateway.token").exists()
        assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
        used = await receiver.fetch("SELECT used_at FROM enrollment_tokens")
        assert [r["used_at"] is not None for r in used] == [True]
    finally:
        buf.close()
        await proxy.stop()
