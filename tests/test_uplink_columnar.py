"""The binary columnar ingest body (application/vnd.outpost.columnar.v1): what the agent encodes
is what the receiver decodes and stores; a malformed or rule-breaking body is a 422 naming the
problem and stores nothing; a receiver that refuses the binary body gets JSON instead, with
nothing dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from outpost.buffer.models import ReadingColumns
from outpost.cloud.receiver.ingest_columns import decode_columnar
from outpost.cloud.uplink.columnar_body import encode_columnar
from outpost.cloud.wire import COLUMNAR_CONTENT_TYPE, COLUMNAR_HEADER, TS_MIN_MS
from tests.chaos_proxy import ChaosProxy
from tests.receiver_fixtures import ReceiverHandle
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

GW = "gw-col"
T0 = 1_790_000_000_000


def _cols(
    keys: list[int], ts: list[int], values: list[float], quality: list[int], ids: list[str]
) -> ReadingColumns:
    return ReadingColumns(
        array("q", range(1, len(keys) + 1)),
        array("q", ts),
        array("I", keys),
        array("d", values),
        array("B", quality),
        lambda ks: [ids[k] for k in ks],
    )


def _bits(v: float) -> bytes:
    """Bit-exact (-0.0 is not 0.0); NaN and the infinities are "no value" (empty)."""
    return b"" if v != v or math.isinf(v) else struct.pack("<d", v)


readings = st.lists(
    st.tuples(
        st.integers(0, 40),
        st.integers(TS_MIN_MS, TS_MIN_MS + 10**11),  # deltas beyond int32: the int64 flag
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([0.0, -0.0, 21.5, 1e300, 5e-324]),
        ),
        st.integers(0, 255),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(readings)
def test_what_the_agent_encodes_the_receiver_decodes(
    rows: list[tuple[int, int, float, int]],
) -> None:
    ids = [f"dev-{k}.p" for k in range(41)]
    cols = _cols([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                 [r[3] for r in rows], ids)  # fmt: skip
    body = encode_columnar(GW, 7, 7 + max(len(rows) - 1, 0), cols, {"schedule_version": "v1"})
    batch = decode_columnar(body)
    assert (batch.gateway_id, batch.first_seq, batch.schedule_version) == (GW, 7, "v1")
    r = batch.readings
    got = sorted(
        (r.point_ids[p], t, _bits(v), q)
        for p, t, v, q in zip(
            r.point.tolist(), r.ts_ms.tolist(), r.value.tolist(), r.quality.tolist(), strict=True
        )
    )
    # bit-exact values; infinities travel as "no value", as with JSON
    assert got == sorted((ids[k], t, _bits(v), q) for k, t, v, q in rows)
    assert len(r.point_ids) == len({k for k, *_ in rows})


# --- malformed bodies at the receiver -------------------------------------------------------


def _good(gateway: str = GW, **extras: Any) -> bytes:
    ids = ["dev-1.p0", "dev-1.p1"]
    cols = _cols(
        [0, 1, 0, 1], [T0, T0 + 1, T0 + 1000, T0 + 1001], [21.5, math.nan, 22.0, _SENTINEL],
        [0, 129, 0, 0], ids
    )  # fmt: skip
    return encode_columnar(gateway, 1, 4, cols, extras)


def _header(body: bytes, **changes: int) -> bytes:
    names = ("magic", "version", "flags", "reserved", "first_seq", "last_seq", "n", "n_ids",
             "ts0", "gw_len", "ids_len", "js_len")  # fmt: skip
    fields = dict(zip(names, COLUMNAR_HEADER.unpack_from(body), strict=True))
    fields.update(changes)
    return COLUMNAR_HEADER.pack(*fields.values()) + body[COLUMNAR_HEADER.size :]


def _replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def change(body: bytes) -> bytes:
        assert old in body and len(old) == len(new)
        return body.replace(old, new, 1)

    return change


def _counts(a: int, b: int) -> Callable[[bytes], bytes]:
    def change(body: bytes) -> bytes:
        h = COLUMNAR_HEADER.unpack_from(body)
        at = COLUMNAR_HEADER.size + h[9] + h[10]
        # counts are u32, byte-shuffled over 2 ids: [a0 b0 a1 b1 a2 b2 a3 b3]
        raw = array("I", [a, b]).tobytes()
        shuffled = bytes(raw[i::4][j] for i in range(4) for j in range(2))
        return body[:at] + shuffled + body[at + 8 :]

    return change


_SENTINEL = 1.2345678901234567e300  # travels as raw float64 bits (no decimal, no float32)


def _inf(_body: bytes) -> bytes:
    # a body whose only value is raw float64: its column is its 8 bits as they are (XOR 0)
    body = encode_columnar(GW, 1, 1, _cols([0], [T0], [_SENTINEL], [0], ["dev-1.p0"]))
    old, new = struct.pack("<d", _SENTINEL), struct.pack("<d", math.inf)
    assert body.count(old) == 1
    return body.replace(old, new)


def _kinds(body: bytes, kind: int) -> bytes:
    h = COLUMNAR_HEADER.unpack_from(body)
    at = COLUMNAR_HEADER.size + h[9] + h[10] + 4 * h[7] + 4 * h[6]
    return body[:at] + bytes([kind]) + body[at + 1 :]


MALFORMED: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty body": (lambda b: b"", "shorter than the"),
    "truncated": (lambda b: b[:-3], "announce"),
    "trailing bytes": (lambda b: b + b"\0", "announce"),
    "bad magic": (lambda b: b"JSON" + b[4:], "magic"),
    "version 2": (lambda b: _header(b, version=2), "format version 2"),
    "unknown flag": (lambda b: _header(b, flags=0x80), "unknown flags"),
    "last below first": (lambda b: _header(b, first_seq=5, last_seq=4), "last_seq 4 < first_seq 5"),
    "seq past int64": (lambda b: _header(b, last_seq=2**64 - 1), "64-bit range"),
    "reading count lies": (lambda b: _header(b, n=5), "announce"),
    "id count lies": (lambda b: _header(b, n_ids=3), "announce"),
    "invalid point id": (_replace(b"dev-1.p1", b"dev-1.P$"), "invalid point id"),
    "duplicate point id": (_replace(b"dev-1.p1", b"dev-1.p0"), "duplicates"),
    "invalid gateway id": (_replace(GW.encode(), b"GW/col"), "invalid gateway id"),
    "not UTF-8": (_replace(b"dev-1.p1", b"dev-1.p\xff"), "UTF-8"),
    "counts do not add up": (_counts(1, 1), "readings.counts: sum 2"),
    "unknown value kind": (lambda b: _kinds(b, 9), "unknown value kind 9"),
    "timestamp before 2000": (lambda b: _header(b, ts0=TS_MIN_MS - 10_000), "readings.ts"),
    "infinite value": (_inf, "infinite value"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_binary_body_is_a_422_naming_the_problem(
    receiver: ReceiverHandle, case: str
) -> None:
    token = await receiver.enroll(GW)
    mutate, expected = MALFORMED[case]
    body = mutate(_good())
    async with httpx.AsyncClient(base_url=receiver.url, timeout=10) as client:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": COLUMNAR_CONTENT_TYPE}
        resp = await client.post("/api/v1/ingest", content=body, headers=headers)
        assert resp.status_code == 422, resp.text
        assert expected in resp.json()["detail"], resp.json()
        # compressed the same way the agent sends it: the same answer
        z = zstandard.ZstdCompressor().compress(body)
        resp = await client.post(
            "/api/v1/ingest", content=z, headers=headers | {"Content-Encoding": "zstd"}
        )
        assert resp.status_code == 422, resp.text
        # and the well-formed body is stored
        resp = await client.post("/api/v1/ingest", content=_good(), headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["readings_inserted"] == 4
    assert await receiver.count("readings") == 4


async def test_binary_json_section_is_validated_like_json(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll(GW)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": COLUMNAR_CONTENT_TYPE}
    event: dict[str, Any] = {
        "id": 1,
        "ts": T0,
        "kind": "operator.mode",
        "source": "fsm",
        "actor": "alice",
    }
    async with httpx.AsyncClient(base_url=receiver.url, timeout=10) as client:
        bad: list[tuple[dict[str, Any], str]] = [
            ({"events": [event | {"detail": {"reason": "a\u0000b"}}]}, "events.0.detail"),
            ({"events": [event | {"ts": 5}]}, "events.0.ts"),
            ({"points": [{"point_id": "BAD ID"}]}, "points.0.point_id"),
            ({"surprise": 1}, "surprise"),
        ]
        for extras, where in bad:
            resp = await client.post("/api/v1/ingest", content=_good(**extras), headers=headers)
            assert resp.status_code == 422, resp.text
            assert where in resp.json()["detail"], resp.json()
        resp = await client.post("/api/v1/ingest", content=_good(events=[event]), headers=headers)
        assert resp.status_code == 200 and resp.json()["events_inserted"] == 1, resp.text
        # another gateway's body with this token: 403, as with JSON
        resp = await client.post("/api/v1/ingest", content=_good("gw-other"), headers=headers)
        assert resp.status_code == 403, resp.text
    assert await receiver.count("readings") == 4


async def test_replayed_binary_batch_inserts_nothing(receiver: ReceiverHandle) -> None:
    token = await receiver.enroll(GW)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": COLUMNAR_CONTENT_TYPE}
    async with httpx.AsyncClient(base_url=receiver.url, timeout=10) as client:
        first = await client.post("/api/v1/ingest", content=_good(), headers=headers)
        again = await client.post("/api/v1/ingest", content=_good(), headers=headers)
    assert first.json()["readings_inserted"] == 4
    assert (again.json()["readings_inserted"], again.json()["readings_duplicate"]) == (0, 4)
    stored = await receiver.readings(GW)
    assert sorted(stored, key=repr) == sorted(
        [
            ("dev-1.p0", T0, 21.5, 0),
            ("dev-1.p1", T0 + 1, None, 129),
            ("dev-1.p0", T0 + 1000, 22.0, 0),
            ("dev-1.p1", T0 + 1001, _SENTINEL, 0),
        ],
        key=repr,
    )


def _is_binary(raw: bytes) -> bool:
    with contextlib.suppress(zstandard.ZstdError):
        return zstandard.ZstdDecompressor().stream_reader(raw).read(4) == b"OPC1"
    return False


async def test_receiver_refusing_the_binary_body_gets_json(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    """A receiver from before the binary body reads it as JSON and answers 422 to every one.
    The uplink must not take that for a bad batch (bisect, dead-letter): an empty binary batch
    is refused too while an empty JSON batch is accepted, so it switches to JSON."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    proxy = ChaosProxy("127.0.0.1", receiver.port)
    await proxy.start()
    proxy.answer(422, count=10_000, path_prefix="/api/v1/ingest", body_matches=_is_binary)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=20)
        for i in range(20):
            writer.round(int(time.time() * 1000) - 100_000 + i * 1000)
        await buf.flush()
        uplink = make_uplink(cloud_config(proxy.url, batch_size=100), GW, tmp_path, buf)
        with capture_logs() as logs:
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
    assert proxy.answered >= 2  # a batch and the empty binary batch, then JSON only
    assert [e for e in logs if e["event"] == "uplink.columnar_refused"]
    assert rejected == [] and status["rejected_batches"] == 0
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(tmp_path / "buffer.db")


async def test_agent_sends_binary_bodies_by_default(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    """Through a proxy that sees every body: the uplink's ingest bodies are binary columnar,
    and what they carried is exactly what the buffer holds."""
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    proxy = ChaosProxy("127.0.0.1", receiver.port)
    await proxy.start()
    seen: list[bool] = []

    def record(raw: bytes) -> bool:
        seen.append(_is_binary(raw))
        return False  # answer nothing ourselves: forward everything

    proxy.answer(500, count=1, path_prefix="/api/v1/ingest", body_matches=record)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=30)
        for i in range(30):
            writer.round(int(time.time() * 1000) - 100_000 + i * 1000)
        await buf.flush()
        uplink = make_uplink(cloud_config(proxy.url, batch_size=200), GW, tmp_path, buf)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: asyncio.to_thread(all_synced, buf), 30, "full sync")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        buf.close()
        await proxy.stop()
    assert seen and all(seen), seen
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
