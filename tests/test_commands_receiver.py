"""The command channel at the receiver: validation, lifecycle, long-poll, results, expiry.

Real receiver (uvicorn, in process) on a real PostgreSQL (tests/receiver_fixtures.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx

from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)


async def _setup(receiver: ReceiverHandle, gw: str = "gw-1") -> tuple[httpx.AsyncClient, str]:
    token = await receiver.enroll(gw)
    admin = httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers, timeout=30)
    return admin, token


def _gw(receiver: ReceiverHandle, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=receiver.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


async def _wait_state(admin: httpx.AsyncClient, gw: str, cid: int, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        body = (await admin.get(f"/api/v1/gateways/{gw}/commands/{cid}")).json()
        if body["state"] == state or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


async def test_unknown_kind_and_bad_args_are_422_and_never_stored(
    receiver: ReceiverHandle,
) -> None:
    admin, _ = await _setup(receiver)
    async with admin:
        bad = [
            {"kind": "fly-to-moon", "args": {}},
            {"kind": "ack", "args": {}},
            {"kind": "ack", "args": {"alarm_id": 7}},
            {"kind": "ack", "args": {"alarm_id": "a:hh", "color": "red"}},
            {"kind": "write", "args": {"point_id": "p1", "value": "12"}},
            {"kind": "write", "args": {"point_id": "P 1", "value": 1.0}},
            {"kind": "write", "args": {"point_id": "p1", "value": 1.0, "priority": 17}},
            {"kind": "shelve", "args": {"alarm_id": "a", "reason": "x"}},
            {"kind": "shelve", "args": {"alarm_id": "a", "reason": "x", "duration_s": -1}},
            {"kind": "mode_set", "args": {"mode": "maintenance", "reason": "x"}},
            {"kind": "ack", "args": {"alarm_id": "a"}, "expires_in_s": 0},
            {"args": {"alarm_id": "a"}},
            {"kind": "ack", "args": {"alarm_id": "a", "note": "nul \u0000 inside"}},
        ]
        for body in bad:
            r = await admin.post("/api/v1/gateways/gw-1/commands", json=body)
            assert r.status_code == 422, (body, r.text)
        r = await admin.post(
            "/api/v1/gateways/gw-1/commands",
            json={"kind": "schedule_apply", "args": {"files": {"a.csv": "x"}}},
        )
        assert r.status_code == 422 and "rollout" in r.json()["detail"]
        r = await admin.post("/api/v1/gateways/nope/commands", json={"kind": "reload", "args": {}})
        assert r.status_code == 404
        no_auth = await admin.post(
            "/api/v1/gateways/gw-1/commands",
            json={"kind": "reload", "args": {}},
            headers={"Authorization": "Bearer wrong"},
        )
        assert no_auth.status_code == 401
        huge = await admin.get(f"/api/v1/gateways/gw-1/commands/{2**64}")
        assert huge.status_code == 422
    assert await receiver.count("commands") == 0


async def test_lifecycle_long_poll_result_and_repeat(receiver: ReceiverHandle) -> None:
    admin, token = await _setup(receiver)
    other = await receiver.enroll("gw-2")
    async with admin, _gw(receiver, token) as gw, _gw(receiver, other) as gw2:
        empty = await gw.get("/api/v1/gateways/gw-1/commands", params={"wait": 0})
        assert empty.status_code == 200 and empty.json()["commands"] == []

        async def queue() -> dict[str, Any]:
            await asyncio.sleep(0.3)
            r = await admin.post(
                "/api/v1/gateways/gw-1/commands",
                json={"kind": "ack", "args": {"alarm_id": "cdu-01.t:hh", "note": "seen"}},
            )
            assert r.status_code == 201, r.text
            return r.json()

        t0 = time.monotonic()
        poll, created = await asyncio.gather(
            gw.get("/api/v1/gateways/gw-1/commands", params={"after": 0, "wait": 20}), queue()
        )
        assert time.monotonic() - t0 < 15  # woke by NOTIFY, not by the 20 s timeout
        assert created["state"] == "queued" and created["actor"] == "admin-token@fleet"
        assert created["created_at"].endswith("Z")  # ISO 8601 UTC, as the whole read API
        expiry = _t(created["expires_at"]) - _t(created["created_at"])
        assert expiry.total_seconds() == 300
        cmds = poll.json()["commands"]
        assert [(c["id"], c["kind"], c["args"], c["actor"]) for c in cmds] == [
            (created["id"], "ack", {"alarm_id": "cdu-01.t:hh", "note": "seen"}, "admin-token@fleet")
        ]
        cid = created["id"]
        got = (await admin.get(f"/api/v1/gateways/gw-1/commands/{cid}")).json()
        assert got["state"] == "delivered" and got["delivered_at"] is not None

        # not final yet: sent again to an agent that lost it; nothing newer than its id
        again = await gw.get("/api/v1/gateways/gw-1/commands", params={"after": 0, "wait": 0})
        assert [c["id"] for c in again.json()["commands"]] == [cid]
        newer = await gw.get("/api/v1/gateways/gw-1/commands", params={"after": cid, "wait": 0})
        assert newer.json()["commands"] == []

        # another gateway may neither poll nor answer for gw-1
        assert (await gw2.get("/api/v1/gateways/gw-1/commands")).status_code == 403
        result = {"status": "succeeded", "message": "acknowledged", "executed_at": 1}
        r = await gw2.post(f"/api/v1/gateways/gw-1/commands/{cid}/result", json=result)
        assert r.status_code == 403
        r = await gw2.post(f"/api/v1/gateways/gw-2/commands/{cid}/result", json=result)
        assert r.status_code == 404

        r = await gw.post(f"/api/v1/gateways/gw-1/commands/{cid}/result", json=result)
        assert r.status_code == 200 and r.json()["state"] == "succeeded"
        # a re-sent result, even a different one, changes nothing
        r = await gw.post(
            f"/api/v1/gateways/gw-1/commands/{cid}/result",
            json={"status": "failed", "message": "x", "executed_at": 2},
        )
        assert r.json()["state"] == "succeeded" and r.json()["result"]["message"] == "acknowledged"
        final = (await admin.get(f"/api/v1/gateways/gw-1/commands/{cid}")).json()
        assert _t(final["finished_at"]) >= _t(final["delivered_at"]) >= _t(final["created_at"])
        # final commands are never delivered again
        after_final = await gw.get("/api/v1/gateways/gw-1/commands", params={"wait": 0})
        assert after_final.json()["commands"] == []


async def test_expired_before_delivery_is_never_delivered(receiver: ReceiverHandle) -> None:
    admin, token = await _setup(receiver)
    async with admin, _gw(receiver, token) as gw:
        r = await admin.post(
            "/api/v1/gateways/gw-1/commands",
            json={"kind": "reload", "args": {}, "expires_in_s": 0.2},
        )
        cid = r.json()["id"]
        body = await _wait_state(admin, gw="gw-1", cid=cid, state="expired")
        assert body["state"] == "expired" and body["delivered_at"] is None
        assert "expired" in body["result"]["message"]
        poll = await gw.get("/api/v1/gateways/gw-1/commands", params={"after": 0, "wait": 0})
        assert poll.json()["commands"] == []


async def test_list_filters_and_order(receiver: ReceiverHandle) -> None:
    admin, token = await _setup(receiver)
    await receiver.enroll("gw-2")
    async with admin, _gw(receiver, token) as gw:
        ids = []
        for gw_id, body in [
            ("gw-1", {"kind": "reload", "args": {}}),
            ("gw-1", {"kind": "write", "args": {"point_id": "p1", "value": 3}}),
            ("gw-2", {"kind": "mode_clear", "args": {"reason": "done"}}),
        ]:
            r = await admin.post(f"/api/v1/gateways/{gw_id}/commands", json=body)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        polled = await gw.get("/api/v1/gateways/gw-1/commands", params={"wait": 0})
        assert [c["id"] for c in polled.json()["commands"]] == ids[:2]
        everything = (await admin.get("/api/v1/commands")).json()
        assert [c["id"] for c in everything] == ids[::-1]
        one = (await admin.get("/api/v1/commands", params={"gateway": "gw-1"})).json()
        assert [c["id"] for c in one] == ids[1::-1]
        writes = (await admin.get("/api/v1/commands", params={"kind": "write"})).json()
        assert [c["args"]["value"] for c in writes] == [3.0]
        queued = (await admin.get("/api/v1/commands", params={"state": "queued"})).json()
        assert [c["gateway_id"] for c in queued] == ["gw-2"]
        page = (await admin.get("/api/v1/commands", params={"before": ids[2], "limit": 1})).json()
        assert [c["id"] for c in page] == [ids[1]]
        bad = await admin.get("/api/v1/commands", params={"state": "bogus"})
        assert bad.status_code == 422


async def test_rollout_waves_halt_and_expiry(receiver: ReceiverHandle) -> None:
    """The rollout engine alone, answered through the gateway endpoints: canary first, then
    waves of ``wave_size``, the first failure halts; a canary that never comes expires."""
    tokens = {gw: await receiver.enroll(gw) for gw in ("gw-a", "gw-b", "gw-c", "gw-d")}
    admin = httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers, timeout=30)

    async def take(gw: str) -> list[dict[str, Any]]:
        async with _gw(receiver, tokens[gw]) as c:
            r = await c.get(f"/api/v1/gateways/{gw}/commands", params={"wait": 0})
            cmds: list[dict[str, Any]] = r.json()["commands"]
            return cmds

    async def answer(gw: str, cid: int, status: str, outcome: str) -> None:
        async with _gw(receiver, tokens[gw]) as c:
            r = await c.post(
                f"/api/v1/gateways/{gw}/commands/{cid}/result",
                json={
                    "status": status,
                    "message": outcome,
                    "detail": {"outcome": outcome, "version": "sha256:new"},
                    "executed_at": 1,
                },
            )
            assert r.status_code == 200, r.text

    async with admin:
        r = await admin.post(
            "/api/v1/rollouts",
            json={
                "files": {"site.csv": "point_id,device,address\n"},
                "gateways": "all",
                "canary": ["gw-a"],
                "wave_size": 2,
            },
        )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert [await take(gw) == [] for gw in ("gw-b", "gw-c", "gw-d")] == [True] * 3
        (cmd,) = await take("gw-a")
        assert cmd["kind"] == "schedule_apply" and cmd["args"]["rollout_id"] == rid
        assert cmd["args"]["files"] == {"site.csv": "point_id,device,address\n"}
        assert cmd["args"]["verification"]["min_good_ratio"] == 0.95
        await answer("gw-a", cmd["id"], "succeeded", "applied")
        wave = {gw: await take(gw) for gw in ("gw-b", "gw-c", "gw-d")}
        assert [len(v) for v in wave.values()] == [1, 1, 0]  # a wave of two
        await answer("gw-b", wave["gw-b"][0]["id"], "succeeded", "applied")
        assert await take("gw-d") == []  # the wave is not complete yet
        await answer("gw-c", wave["gw-c"][0]["id"], "succeeded", "applied")
        (last,) = await take("gw-d")
        await answer("gw-d", last["id"], "failed", "rolled_back")
        view = (await admin.get(f"/api/v1/rollouts/{rid}")).json()
        assert view["state"] == "failed" and "gw-d" in view["reason"]
        assert [t["state"] for t in view["targets"]] == ["succeeded"] * 3 + ["failed"]
        assert view["targets"][0]["new_version"] == "sha256:new"
        assert view["steps"][-1]["step"] == "halted"

        # a canary that never fetches its command: it expires and the rollout halts
        r = await admin.post(
            "/api/v1/rollouts",
            json={
                "files": {"site.csv": "x\n"},
                "gateways": ["gw-b"],
                "canary": ["gw-c"],
                "expires_in_s": 0.3,
            },
        )
        rid = r.json()["id"]
        deadline = time.monotonic() + 20
        while (view := (await admin.get(f"/api/v1/rollouts/{rid}")).json())["state"] == "running":
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.1)
        assert view["state"] == "failed" and "expired" in view["reason"]
        assert [t["state"] for t in view["targets"]] == ["failed", "skipped"]
        bad = await admin.post(
            "/api/v1/rollouts",
            json={"files": {"../x.csv": "x"}, "gateways": ["gw-b"], "canary": ["gw-c"]},
        )
        assert bad.status_code == 422
        unknown = await admin.post(
            "/api/v1/rollouts",
            json={"files": {"x.csv": "x"}, "gateways": ["gw-z"], "canary": ["gw-c"]},
        )
        assert unknown.status_code == 404 and "gw-z" in unknown.json()["detail"]


def _t(iso: str) -> datetime:
    return datetime.fromisoformat(iso)
