"""Input that JSON and a lax model accept but PostgreSQL refuses is a 422 at the receiver's
boundary, naming the field -- never a 500, and never a batch that fails forever and stalls the
gateway's sync (issue: a NUL in an operator's reason made every later batch fail)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from outpost.cloud.wire import TS_MIN_MS, Heartbeat, WireEvent, check_json_value

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

T0_MS = 1_763_900_000_000


def _batch(**overrides: Any) -> dict[str, Any]:
    event = {"id": 1, "ts": T0_MS, "kind": "operator.mode", "source": "fsm", "actor": "alice"}
    event |= overrides.pop("event", {})
    point = {"point_id": "dev-1.p0", "device": "dev-1", "units": "degC"}
    point |= overrides.pop("point", {})
    body = {
        "gateway_id": "gw-1",
        "first_seq": 1,
        "last_seq": 1,
        "readings": {
            "point_ids": ["dev-1.p0"],
            "point": [0],
            "ts0": T0_MS,
            "ts": [0],
            "value": [21.5],
            "quality": [0],
        },
        "events": [event | {"detail": overrides.pop("detail", {"reason": "filter change"})}],
        "points": [point],
    }
    return body | overrides


def _heartbeat(**overrides: Any) -> dict[str, Any]:
    return {"gateway_id": "gw-1", "ts": T0_MS, "mode": "normal", "agent_version": "0.1.0"} | (
        overrides
    )


def _raw(doc: dict[str, Any]) -> bytes:
    # ensure_ascii keeps a lone surrogate as its \ud800 escape, as a hostile client would send
    return json.dumps(doc, ensure_ascii=True, allow_nan=True).encode()


BAD_BATCHES = {
    "NUL in event detail": _batch(detail={"reason": "filter\u0000change"}),
    "NUL in a nested detail key": _batch(detail={"writes": [{"po\u0000int": 1}]}),
    "NaN inside event detail": _batch(detail={"value": float("nan")}),
    "infinity inside event detail": _batch(detail={"value": float("inf")}),
    "NUL in event kind": _batch(event={"kind": "mo\u0000de"}),
    "NUL in event source": _batch(event={"source": "fs\u0000m"}),
    "NUL in event actor": _batch(event={"actor": "ali\u0000ce"}),
    "lone surrogate in event detail": _batch(detail={"reason": "\ud800"}),
    "event id past bigint": _batch(event={"id": 2**63}),
    "first_seq past bigint": _batch(first_seq=2**63, last_seq=2**63),
    "NUL in point units": _batch(point={"units": "deg\u0000C"}),
    "integer past bigint in detail": _batch(detail={"n": 2**64}),
    "detail nested too deep": _batch(detail=json.loads('{"a":' * 40 + "1" + "}" * 40)),
}

BAD_HEARTBEATS = {
    "NUL in mode": _heartbeat(mode="nor\u0000mal"),
    "ts = 2**70": _heartbeat(ts=2**70),
    "10 MB uplink field": _heartbeat(uplink={"x": "a" * 10_000_000}),
    "lone surrogate in mode": _heartbeat(mode="\udfff"),
    "NaN in uplink": _heartbeat(uplink={"rate": float("nan")}),
}


async def test_hostile_batches_are_422_and_do_not_stall_sync(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=receiver.url, headers=headers, timeout=30) as c:
        for name, doc in BAD_BATCHES.items():
            r = await c.post("/api/v1/ingest", content=_raw(doc))
            assert r.status_code == 422, (name, r.status_code, r.text[:300])
            assert r.json()["detail"].startswith("invalid IngestBatch"), name
        # the gateway's next good batch goes through: nothing poisoned the ingest path
        r = await c.post("/api/v1/ingest", content=_raw(_batch()))
        assert r.status_code == 200, r.text
        assert r.json()["events_inserted"] == 1
        for name, doc in BAD_HEARTBEATS.items():
            r = await c.post("/api/v1/gateways/gw-1/heartbeat", content=_raw(doc))
            assert r.status_code in (413, 422), (name, r.status_code, r.text[:300])
        r = await c.post("/api/v1/gateways/gw-1/heartbeat", content=_raw(_heartbeat()))
        assert r.status_code == 200, r.text
    assert await receiver.count("events") == 1
    assert await receiver.count("readings") == 1


async def test_far_future_aggregate_range_is_not_a_500(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    async with httpx.AsyncClient(base_url=receiver.url, timeout=30) as c:
        r = await c.post(
            "/api/v1/ingest",
            content=_raw(_batch()),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
    async with httpx.AsyncClient(
        base_url=receiver.url, headers=receiver.admin_headers, timeout=30
    ) as c:
        for resolution in ("1m", "1h", "1d", "auto"):
            r = await c.get(
                "/api/v1/gateways/gw-1/points/dev-1.p0/readings",
                params={
                    "from": "2025-01-01T00:00:00Z",
                    "to": "9999-12-31T23:59:59Z",
                    "resolution": resolution,
                },
            )
            assert r.status_code in (200, 422), (resolution, r.status_code, r.text[:300])
            if r.status_code == 200:  # the one stored reading is in the answer
                rows = r.json()["readings"]
                assert [row.get("last", row.get("value")) for row in rows] == [21.5], resolution


@pytest.mark.parametrize(
    "value",
    [float("nan"), {"a": float("-inf")}, "x\u0000", ["\ud83d"], 2**63, {1: "non-string key"}],
)
def test_check_json_value_refuses(value: Any) -> None:
    with pytest.raises(ValueError):
        check_json_value(value)


def test_models_accept_ordinary_unicode_and_big_floats() -> None:
    event = WireEvent.model_validate(
        {
            "id": 2**63 - 1,
            "ts": TS_MIN_MS,
            "kind": "operator.ack",
            "detail": {"note": "Kühlung prüfen ✓ 🌡", "big": 1e300, "neg": -(2**63)},
        }
    )
    assert event.detail["note"].endswith("🌡")
    hb = Heartbeat.model_validate(_heartbeat(uplink={"bytes_per_s": 12.5, "errors": []}))
    assert hb.mode == "normal"
