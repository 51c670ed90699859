"""The central receiver against a real PostgreSQL over real HTTP (uvicorn on a free port).

PostgreSQL is the embedded server of the test session (or $OUTPOST_TEST_DSN); each test has
its own database. Every refusal test also counts rows to prove nothing was written.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import httpx
import pytest
import zstandard

from outpost.cloud.receiver.migrate import MigrationError, load_migrations
from outpost.cloud.receiver.storage import Storage, auto_resolution
from outpost.cloud.wire import (
    Heartbeat,
    IngestAck,
    IngestBatch,
    PointMeta,
    WireEvent,
    columnar_readings,
    encode_body,
    iter_rows,
)

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverFactory, ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

T0 = 1_763_900_000.0  # 2025-11-23T12:13:20Z
TABLES = ("readings", "events", "ingest_log", "points")


def make_batch(
    gateway_id: str = "gw-1", n: int = 100, first_seq: int = 1, t0: float = T0, points: int = 5
) -> IngestBatch:
    ids = [f"dev-1.p{i % points}" for i in range(n)]
    ts = [t0 + (i // points) * 5.0 for i in range(n)]
    values: list[float | None] = [
        math.nan if i % 17 == 16 else round(20 + i * 0.1, 1) for i in range(n)
    ]
    quality = [129 if i % 17 == 16 else 0 for i in range(n)]
    return IngestBatch(
        gateway_id=gateway_id,
        first_seq=first_seq,
        last_seq=first_seq + n - 1,
        readings=columnar_readings(ids, ts, values, quality),
        events=[
            WireEvent(
                id=first_seq,
                ts=int(t0 * 1000),
                kind="mode",
                source="fsm",
                actor="system",
                detail={"to": "normal"},
            )
        ],
        points=[
            PointMeta(
                point_id="dev-1.p0",
                device="dev-1",
                units="degC",
                tags={"equip": "cdu", "temp": ""},
                max=80.0,
                alarm_h=60.0,
            )
        ],
    )


async def post_batch(
    rcv: ReceiverHandle, batch: IngestBatch, token: str | None, encoding: str = "zstd"
) -> httpx.Response:
    body, headers = encode_body(batch, encoding)  # type: ignore[arg-type]
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=rcv.url, timeout=30) as c:
        return await c.post("/api/v1/ingest", content=body, headers=headers)


async def counts(rcv: ReceiverHandle) -> dict[str, int]:
    return {t: await rcv.count(t) for t in TABLES}


# --- enrollment and auth ---------------------------------------------------------------------


async def test_enrollment_is_one_time(receiver: ReceiverHandle) -> None:
    token = await receiver.enrollment_token("gw-1")
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        first = await c.post(
            "/api/v1/enroll", json={"gateway_id": "gw-1", "enrollment_token": token}
        )
        assert first.status_code == 200
        gateway_token = first.json()["gateway_token"]
        assert len(gateway_token) >= 40
        # once the gateway has been heard with its token, the enrollment token is spent
        assert (await post_batch(receiver, make_batch(), gateway_token)).status_code == 200
        again = await c.post(
            "/api/v1/enroll", json={"gateway_id": "gw-1", "enrollment_token": token}
        )
        assert again.status_code == 401
        assert "already used" in again.json()["detail"]
    # only hashes at rest
    rows = await receiver.fetch("SELECT token_hash FROM gateways")
    assert [r["token_hash"] for r in rows] != [gateway_token]
    assert all(gateway_token not in r["token_hash"] for r in rows)
    stored = await receiver.fetch("SELECT token_hash FROM enrollment_tokens")
    assert all(token != r["token_hash"] for r in stored)
    assert (await post_batch(receiver, make_batch(), gateway_token)).status_code == 200


async def test_enrollment_expired_or_for_another_gateway(receiver: ReceiverHandle) -> None:
    expired = await receiver.enrollment_token("gw-1")
    await receiver.fetch("UPDATE enrollment_tokens SET expires_at = now() - interval '1 s'")
    other = await receiver.enrollment_token("gw-2")
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        r = await c.post("/api/v1/enroll", json={"gateway_id": "gw-1", "enrollment_token": expired})
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        r = await c.post("/api/v1/enroll", json={"gateway_id": "gw-1", "enrollment_token": other})
        assert r.status_code == 401
        r = await c.post("/api/v1/enroll", json={"gateway_id": "gw-1", "enrollment_token": "x"})
        assert r.status_code == 401
    assert await receiver.count("gateways") == 0


async def test_bad_tokens_write_nothing(receiver: ReceiverHandle) -> None:
    await receiver.enroll("gw-1")
    other = await receiver.enroll("gw-2")
    batch = make_batch("gw-1")
    before = await counts(receiver)
    assert (await post_batch(receiver, batch, None)).status_code == 401
    assert (await post_batch(receiver, batch, "not-a-token")).status_code == 401
    assert (await post_batch(receiver, batch, receiver.admin_token)).status_code == 401
    foreign = await post_batch(receiver, batch, other)
    assert foreign.status_code == 403
    assert "gw-2" in foreign.json()["detail"]
    async with httpx.AsyncClient(
        base_url=receiver.url, headers={"Authorization": f"Bearer {other}"}
    ) as c:
        hb = Heartbeat(gateway_id="gw-1", ts=int(T0 * 1000), mode="normal", agent_version="1")
        r = await c.post("/api/v1/gateways/gw-1/heartbeat", content=hb.model_dump_json())
        assert r.status_code == 403
        r = await c.get("/api/v1/gateways/gw-1/commands", params={"wait": 0})
        assert r.status_code == 403
        # the read API wants the admin token, not a gateway's
        assert (await c.get("/api/v1/gateways")).status_code == 401
    assert await counts(receiver) == before == {t: 0 for t in TABLES}
    rows = await receiver.fetch("SELECT last_heartbeat FROM gateways WHERE id = 'gw-1'")
    assert rows[0]["last_heartbeat"] is None


async def test_revoked_gateway_gets_401(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    assert (await post_batch(receiver, make_batch(first_seq=1), token)).status_code == 200
    before = await counts(receiver)
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        assert (await c.post("/api/v1/gateways/gw-1/revoke")).status_code == 200
        assert (await c.post("/api/v1/gateways/nope/revoke")).status_code == 404
        gw = (await c.get("/api/v1/gateways/gw-1")).json()
        assert gw["status"] == "revoked"
    r = await post_batch(receiver, make_batch(first_seq=101, t0=T0 + 3600), token)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert await counts(receiver) == before
    # re-enrolling issues a new token; the old one stays dead
    new = await receiver.enroll("gw-1")
    assert (
        await post_batch(receiver, make_batch(first_seq=101, t0=T0 + 3600), token)
    ).status_code == 401
    assert (
        await post_batch(receiver, make_batch(first_seq=101, t0=T0 + 3600), new)
    ).status_code == 200


# --- malformed and oversized -------------------------------------------------------------------


async def test_oversized_bodies_get_413(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=receiver.url, headers=auth, timeout=60) as c:
        big = b'{"gateway_id": "gw-1", "pad": "' + b"x" * (20 * 1024 * 1024) + b'"}'
        r = await c.post("/api/v1/ingest", content=big)
        assert r.status_code == 413
        assert "limit" in r.json()["detail"]

        async def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(20):
                yield b"x" * (1024 * 1024)

        r = await c.post("/api/v1/ingest", content=chunks())
        assert r.status_code == 413
        # a compression bomb: 20 MB of zeros in ~1 kB of zstd / ~20 kB of gzip
        bomb = zstandard.ZstdCompressor().compress(b"0" * (20 * 1024 * 1024))
        assert len(bomb) < 100_000
        r = await c.post("/api/v1/ingest", content=bomb, headers={"Content-Encoding": "zstd"})
        assert r.status_code == 413 and "decompressed" in r.json()["detail"]
        gz = gzip.compress(b"0" * (20 * 1024 * 1024))
        r = await c.post("/api/v1/ingest", content=gz, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413
        r = await c.post("/api/v1/ingest", content=b"{}", headers={"Content-Encoding": "br"})
        assert r.status_code == 415
        r = await c.post(
            "/api/v1/ingest",
            content=b"\x28\xb5\x2f\xfd garbage",
            headers={"Content-Encoding": "zstd"},
        )
        assert r.status_code == 400
    assert await counts(receiver) == {t: 0 for t in TABLES}


async def test_malformed_batches_get_422(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    good = json.loads(make_batch().model_dump_json())

    def variant(**changes: object) -> bytes:
        d = json.loads(json.dumps(good))
        for path, value in changes.items():
            target = d
            *parents, leaf = path.split("__")
            for p in parents:
                target = target[p]
            target[leaf] = value
        return json.dumps(d).encode()

    bad_values = list(good["readings"]["value"])
    bad_values[3] = float("nan")
    inf_values = list(good["readings"]["value"])
    inf_values[4] = float("inf")
    cases = {
        "not json": b'{"gateway_id": "gw-1", "first_seq": ',
        "unequal columns": variant(readings__ts=good["readings"]["ts"][:-1]),
        "NaN value": variant(readings__value=bad_values),  # json.dumps writes NaN
        "Infinity value": variant(readings__value=inf_values),
        "point index out of range": variant(readings__point=[99] * len(good["readings"]["point"])),
        "string for int": variant(first_seq="1"),
        "unknown key": variant(surprise=1),
        "range reversed": variant(first_seq=500, last_seq=1),
        "bad point id": variant(readings__point_ids=["Bad Id"] * 5),
    }
    async with httpx.AsyncClient(
        base_url=receiver.url, headers={"Authorization": f"Bearer {token}"}
    ) as c:
        for name, body in cases.items():
            r = await c.post(
                "/api/v1/ingest", content=body, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 422, name
            detail = r.json()["detail"]
            assert isinstance(detail, str) and detail.startswith("invalid IngestBatch"), name
        r = await c.post("/api/v1/ingest", content=variant(readings__ts=[0]))
        assert "equal length" in r.json()["detail"]
        r = await c.post("/api/v1/ingest", content=variant(readings__value=bad_values))
        assert "readings.value.3" in r.json()["detail"]
    assert await counts(receiver) == {t: 0 for t in TABLES}


# --- idempotence --------------------------------------------------------------------------------


async def test_replayed_batch_adds_nothing(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    batch = make_batch(n=1000)
    r = await post_batch(receiver, batch, token)
    assert r.status_code == 200
    ack = IngestAck.model_validate_json(r.content)
    assert (ack.first_seq, ack.last_seq) == (1, 1000)
    assert (ack.readings_inserted, ack.readings_duplicate, ack.events_inserted) == (1000, 0, 1)
    after_first = await counts(receiver)
    for encoding in ("zstd", "gzip", "identity"):
        r = await post_batch(receiver, batch, token, encoding)
        ack = IngestAck.model_validate_json(r.content)
        assert (ack.first_seq, ack.last_seq) == (1, 1000)
        assert (ack.readings_inserted, ack.readings_duplicate, ack.events_inserted) == (0, 1000, 0)
    final = await counts(receiver)
    assert final["readings"] == after_first["readings"] == 1000
    assert final["events"] == 1 and final["points"] == 5
    assert final["ingest_log"] == 4
    # what is stored is exactly what was sent (values bit-identical, NaN as NULL)
    sent = sorted((p, ts, None if v is None else v, q) for p, ts, v, q in iter_rows(batch.readings))
    assert await receiver.readings("gw-1") == sent


async def test_concurrent_overlapping_batches(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    a = make_batch(n=2000, first_seq=1)
    b = make_batch(n=3000, first_seq=1)  # a superset of a's readings
    results = await asyncio.gather(*(post_batch(receiver, x, token) for x in (a, b, a, b)))
    assert [r.status_code for r in results] == [200] * 4
    inserted = sum(IngestAck.model_validate_json(r.content).readings_inserted for r in results)
    assert inserted == 3000 == await receiver.count("readings")


async def test_point_metadata_upsert(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    assert (await post_batch(receiver, make_batch(), token)).status_code == 200
    changed = make_batch(first_seq=101, t0=T0 + 600)
    changed.points = [
        PointMeta(
            point_id="dev-1.p0",
            device="dev-1",
            units="K",
            description="supply",
            writable=True,
            schedule_version="v2",
        )
    ]
    assert (await post_batch(receiver, changed, token)).status_code == 200
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        pts = (await c.get("/api/v1/gateways/gw-1/points")).json()
    by_id = {p["point_id"]: p for p in pts}
    assert len(pts) == 5
    assert by_id["dev-1.p0"]["units"] == "K" and by_id["dev-1.p0"]["writable"] is True
    assert by_id["dev-1.p0"]["schedule_version"] == "v2"
    assert by_id["dev-1.p1"]["units"] == ""


# --- heartbeat and commands ----------------------------------------------------------------------


async def test_heartbeat_and_commands(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    auth = {"Authorization": f"Bearer {token}"}
    hb = Heartbeat(
        gateway_id="gw-1",
        ts=int(T0 * 1000),
        mode="maintenance",
        agent_version="0.1.0",
        schedule_version="abc",
        devices={"cdu-01": {"connected": False, "error": "timeout"}},
        buffer_rows=10,
        unsynced_rows=3,
        oldest_unsynced_age_s=12.5,
    )
    async with httpx.AsyncClient(base_url=receiver.url, headers=auth, timeout=30) as c:
        body, headers = encode_body(hb, "gzip")
        r = await c.post("/api/v1/gateways/gw-1/heartbeat", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["gateway_id"] == "gw-1"
        # the command channel (queue, long-poll, results) is tested in test_commands_receiver.py
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        gw = (await c.get("/api/v1/gateways/gw-1")).json()
    assert gw["status"] == "online"
    assert gw["heartbeat"]["mode"] == "maintenance"
    assert gw["heartbeat"]["devices"]["cdu-01"]["error"] == "timeout"


# --- read API --------------------------------------------------------------------------------------


async def test_readings_raw_and_aggregated(receiver_factory: ReceiverFactory) -> None:
    rcv: ReceiverHandle = await receiver_factory(max_rows=1000)
    token = await rcv.enroll("gw-1")
    # one point, a reading every 10 s for 3 h from 2025-11-23T00:00:00Z; every 7th is bad
    start = datetime(2025, 11, 23, tzinfo=UTC)
    n = 3 * 360
    ts = [start.timestamp() + 10 * i for i in range(n)]
    values: list[float | None] = [((i * 37) % 101) * 0.5 for i in range(n)]
    quality = [0] * n
    for i in range(0, n, 7):
        quality[i] = 129
        values[i] = None if i % 2 else 999.0  # bad with and without a (stale) value
    # deliver out of order across two batches: the receiver must not care
    half = n // 2
    for first, sl in ((half + 1, slice(half, n)), (1, slice(0, half))):
        batch = IngestBatch(
            gateway_id="gw-1",
            first_seq=first,
            last_seq=first + (sl.stop - sl.start) - 1,
            readings=columnar_readings(
                ["ahu-1.temp"] * len(ts[sl]), ts[sl], values[sl], quality[sl]
            ),
        )
        assert (await post_batch(rcv, batch, token)).status_code == 200

    def expected(width_s: int) -> list[dict[str, object]]:
        buckets: dict[int, list[tuple[float, float]]] = {}
        for t, v, q in zip(ts, values, quality, strict=True):
            if q >= 128 or v is None:
                continue
            buckets.setdefault(int(t // width_s * width_s), []).append((t, v))
        out = []
        for b, items in sorted(buckets.items()):
            vs = [v for _, v in items]
            out.append(
                {
                    "ts": datetime.fromtimestamp(b, UTC),
                    "min": min(vs),
                    "max": max(vs),
                    "avg": sum(vs) / len(vs),
                    "count": len(vs),
                    "last": max(items)[1],
                }
            )
        return out

    url = "/api/v1/gateways/gw-1/points/ahu-1.temp/readings"
    frm, to = start.isoformat(), (start + timedelta(hours=3)).isoformat()
    async with httpx.AsyncClient(base_url=rcv.url, headers=rcv.admin_headers) as c:
        raw = (await c.get(url, params={"from": frm, "to": to, "resolution": "raw"})).json()
        assert raw["resolution"] == "raw" and raw["truncated"] is True
        assert raw["point_id"] == "ahu-1.temp" and len(raw["readings"]) == 1000
        first = raw["readings"][:8]
        assert first[0] == {
            "ts": "2025-11-23T00:00:00Z",
            "value": 999.0,
            "quality": "bad:comm_failure",
        }
        assert first[1] == {"ts": "2025-11-23T00:00:10Z", "value": values[1], "quality": "good"}
        assert first[7]["value"] is None and first[7]["quality"] == "bad:comm_failure"
        for res, width in (("1m", 60), ("5m", 300), ("1h", 3600), ("1d", 86400)):
            got = (await c.get(url, params={"from": frm, "to": to, "resolution": res})).json()
            assert got["resolution"] == res and got["truncated"] is False
            want = expected(width)
            assert len(got["readings"]) == len(want), res
            for g, w in zip(got["readings"], want, strict=True):
                assert datetime.fromisoformat(g["ts"]) == w["ts"]
                assert (g["min"], g["max"], g["count"], g["last"]) == (
                    w["min"],
                    w["max"],
                    w["count"],
                    w["last"],
                ), (res, g, w)
                assert g["avg"] == pytest.approx(w["avg"], rel=1e-12)
        # an unaligned range still answers whole buckets (same as TimescaleDB's aggregates)
        odd = (
            await c.get(
                url,
                params={
                    "from": (start + timedelta(seconds=30)).isoformat(),
                    "to": (start + timedelta(hours=3, seconds=-10)).isoformat(),
                    "resolution": "5m",
                },
            )
        ).json()
        assert [(g["ts"], g["count"], g["min"]) for g in odd["readings"]] == [
            (w["ts"].isoformat().replace("+00:00", "Z"), w["count"], w["min"])
            for w in expected(300)
        ]
        # auto: 3 h -> 1m
        auto = (await c.get(url, params={"from": frm, "to": to})).json()
        assert auto["resolution"] == "1m"
        short = (
            await c.get(
                url, params={"from": frm, "to": (start + timedelta(minutes=30)).isoformat()}
            )
        ).json()
        assert short["resolution"] == "raw" and len(short["readings"]) == 180
        assert (await c.get(url, params={"from": to, "to": frm})).status_code == 422
        r = await c.get("/api/v1/gateways/gw-1/points/nope/readings")
        assert r.status_code == 404
        assert (await c.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401


def test_auto_resolution_thresholds() -> None:
    h = timedelta(hours=1)
    assert [
        auto_resolution(x)
        for x in (
            h,
            2 * h - timedelta(seconds=1),
            2 * h,
            11 * h,
            12 * h,
            6 * 24 * h,
            7 * 24 * h,
            89 * 24 * h,
            90 * 24 * h,
        )
    ] == ["raw", "raw", "1m", "1m", "5m", "5m", "1h", "1h", "1d"]


async def test_events_and_gateways_read_api(receiver: ReceiverHandle) -> None:
    t1 = await receiver.enroll("gw-1")
    t2 = await receiver.enroll("gw-2")
    b1 = make_batch("gw-1")
    b1.events.append(WireEvent(id=2, ts=int(T0 * 1000) + 1, kind="alarm", detail={"p": "x"}))
    assert (await post_batch(receiver, b1, t1)).status_code == 200
    assert (await post_batch(receiver, make_batch("gw-2"), t2)).status_code == 200
    frm = datetime.fromtimestamp(T0 - 60, UTC).isoformat()
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        gws = (await c.get("/api/v1/gateways")).json()
        assert [(g["gateway_id"], g["points"]) for g in gws] == [("gw-1", 5), ("gw-2", 5)]
        allev = (await c.get("/api/v1/events", params={"from": frm})).json()["events"]
        assert [(e["gateway_id"], e["event_id"]) for e in allev] == [
            ("gw-1", 1),
            ("gw-2", 1),
            ("gw-1", 2),
        ]
        only = (
            await c.get("/api/v1/events", params={"from": frm, "gateway": "gw-1", "kind": "alarm"})
        ).json()["events"]
        assert [(e["event_id"], e["detail"]) for e in only] == [(2, {"p": "x"})]
        assert (await c.get("/api/v1/gateways/nope")).status_code == 404
        docs = (await c.get("/openapi.json")).json()
        assert "IngestBatch" in json.dumps(docs["paths"]["/api/v1/ingest"])
        refs = set(re.findall(r"#/components/schemas/(\w+)", json.dumps(docs)))
        assert {"IngestBatch", "Readings", "Heartbeat", "DeviceHealth"} <= refs
        assert refs <= set(docs["components"]["schemas"])  # every $ref resolves
        assert "/api/v1/gateways/{gateway_id}/points/{point_id}/readings" in docs["paths"]


# --- migrations and health -----------------------------------------------------------------------


async def test_migrations_idempotent_and_concurrent(receiver_dsn: str) -> None:
    stores = await asyncio.gather(
        *(Storage.open(receiver_dsn, min_size=1, max_size=1) for _ in range(3))
    )
    for s in stores:
        await s.close()
    again = await Storage.open(receiver_dsn, min_size=1, max_size=1)  # a restart
    try:
        assert (await again.ready()) == (True, "ok")
        rows = await again.pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in load_migrations()]
        # an edited applied migration stops start-up instead of silently diverging
        await again.pool.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
    finally:
        await again.close()
    with pytest.raises(MigrationError, match="never edit an applied migration"):
        await Storage.open(receiver_dsn, min_size=1, max_size=1)


async def test_health_and_readiness(receiver: ReceiverHandle) -> None:
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ready = await c.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        # TimescaleDB or not is whatever the database offers (OUTPOST_TEST_DSN may have it)
        assert body == {"ready": True, "detail": "ok", "timescaledb": body["timescaledb"]}
        assert isinstance(body["timescaledb"], bool)
        await receiver.fetch("DELETE FROM schema_migrations WHERE version = 1")
        r = await c.get("/readyz")
        assert r.status_code == 503 and "migrations not applied" in r.json()["detail"]
        assert (await c.get("/docs")).status_code == 200


async def test_restart_keeps_port_and_data(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll("gw-1")
    assert (await post_batch(receiver, make_batch(), token)).status_code == 200
    url = receiver.url
    await receiver.stop()
    with pytest.raises(httpx.ConnectError):
        await post_batch(receiver, make_batch(first_seq=101, t0=T0 + 600), token)
    await receiver.start()
    assert receiver.url == url
    assert (
        await post_batch(receiver, make_batch(first_seq=101, t0=T0 + 600), token)
    ).status_code == 200
    assert await receiver.count("readings") == 200


async def test_database_errors_are_not_acked(receiver: ReceiverHandle) -> None:
    """A batch the database refuses mid-transaction is a 5xx and leaves nothing behind."""
    token = await receiver.enroll("gw-1")
    await receiver.fetch("ALTER TABLE events ADD CONSTRAINT no_boom CHECK (kind <> 'boom')")
    batch = make_batch()
    batch.events = [WireEvent(id=1, ts=int(T0 * 1000), kind="boom")]
    r = await post_batch(receiver, batch, token)
    assert r.status_code == 500
    assert await counts(receiver) == {"readings": 0, "events": 0, "ingest_log": 0, "points": 0}
    with pytest.raises(asyncpg.CheckViolationError):
        await receiver.fetch(
            "INSERT INTO events (gateway_id, event_id, ts, kind) VALUES ('gw-1', 1, now(), 'boom')"
        )


class PgLink:
    """A TCP forwarder between the receiver and PostgreSQL, so a test can cut the database
    away (our own stand-in for the network path; the database behind it is real)."""

    def __init__(self, target_dsn: str) -> None:
        parts = urlsplit(target_dsn)
        query = dict(parse_qsl(parts.query))
        self._unix = (
            f"{query['host']}/.s.PGSQL.{query.get('port', '5432')}"
            if query.get("host", "").startswith("/")
            else None
        )
        self._tcp = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._target = parts
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def dsn(self) -> str:
        user = self._target.username or "postgres"
        auth = user + (f":{self._target.password}" if self._target.password else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}{self._target.path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self._unix:
            ur, uw = await asyncio.open_unix_connection(self._unix)
        else:
            ur, uw = await asyncio.open_connection(*self._tcp)
        self._writers.update((w, uw))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self._writers.difference_update((w, uw))


async def test_database_outage_is_503_then_recovers(
    receiver_dsn: str, receiver_factory: ReceiverFactory
) -> None:
    link = PgLink(receiver_dsn)
    await link.start()
    rcv = await receiver_factory(dsn=link.dsn)
    token = await rcv.enroll("gw-1")
    assert (await post_batch(rcv, make_batch(), token)).status_code == 200
    await link.stop()
    later = make_batch(first_seq=101, t0=T0 + 600)
    r = await post_batch(rcv, later, token)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert "database unavailable" in r.json()["detail"]
    async with httpx.AsyncClient(base_url=rcv.url) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["detail"]
    await link.start()  # same port: the pool reconnects by itself
    assert (await post_batch(rcv, later, token)).status_code == 200
    assert (await post_batch(rcv, later, token)).status_code == 200  # the client's retry
    assert await rcv.count("readings") == 200
    await link.stop()
