"""Point metadata has one source: the schedule's ``Point``.

Every metadata field set in a schedule reaches the receiver's ``/points`` with its value; the
wire model, the loader's columns and the receiver's limits all derive from ``Point``; unknown
metadata keys are refused at the receiver, not dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import ValidationError

from outpost.cloud.wire import IngestBatch, PointMeta, columnar_readings, encode_body
from outpost.point_schedules.loader import COLUMNS, load_schedule
from outpost.point_schedules.model import (
    LIMIT_FIELDS,
    METADATA_FIELDS,
    POINT_ID_MAX_LENGTH,
    Point,
    Schedule,
)
from tests.agent_process import start_agent, write_config
from tests.modbus_server import start_server
from tests.uplink_harness import wait_for

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

DEVICES = {"cdu-01": "modbus"}

# Every column set, every metadata value different from its default.
FULL_CSV = """\
point_id,device,address,data_type,byte_order,scale,offset,units,description,poll_interval,\
deadband,heartbeat,writable,min,max,alarm_hh,alarm_h,alarm_l,alarm_ll,alarm_state,\
alarm_priority,alarm_deadband,alarm_delay,alarm_clear_delay,tags
cdu-01.supply_temp,cdu-01,hr:10,float32,CDAB,0.5,1.5,degC,"Supply, loop 1",2,0.1,60,true,\
-10,90,80,70,5,2,,critical,0.5,3,4,equip=cdu;loop=1;temp
cdu-01.leak,cdu-01,coil:3,,,,,,Leak sensor,,,,,,,,,,,1,high,,7,8,leak
"""


def load_full(tmp_path: Path) -> Schedule:
    path = tmp_path / "full.csv"
    path.write_text(FULL_CSV, encoding="utf-8")
    return load_schedule([path], DEVICES)


def plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def test_one_source_for_metadata_fields() -> None:
    point_fields = [f.name for f in dataclasses.fields(Point) if f.name != "source"]
    assert list(COLUMNS) == point_fields
    assert set(LIMIT_FIELDS) < set(METADATA_FIELDS) < set(COLUMNS)
    assert {"alarm_state", "alarm_priority"} <= set(LIMIT_FIELDS)
    assert set(PointMeta.model_fields) == {"point_id", "schedule_version", *METADATA_FIELDS}


def test_from_point_carries_every_metadata_field(tmp_path: Path) -> None:
    schedule = load_full(tmp_path)
    defaults = Point(point_id="x", device="", address=schedule.points[0].address)
    for point in schedule.points:
        meta = PointMeta.from_point(point, schedule.version)
        assert meta.point_id == point.point_id
        assert meta.schedule_version == schedule.version
        for name in METADATA_FIELDS:
            assert getattr(meta, name) == plain(getattr(point, name)), name
    temp = schedule.by_id()["cdu-01.supply_temp"]
    leak = schedule.by_id()["cdu-01.leak"]
    # The fixture is only a test of every field if every field differs from its default.
    for name in METADATA_FIELDS:
        if name != "alarm_state":
            assert getattr(temp, name) != getattr(defaults, name), name
    assert leak.alarm_state == 1.0
    assert PointMeta.from_point(leak).limits()["alarm_state"] == 1.0
    assert PointMeta.from_point(temp).limits()["alarm_priority"] == "critical"
    # the wire form survives JSON in strict mode, as the receiver parses it
    again = PointMeta.model_validate_json(PointMeta.from_point(temp).model_dump_json())
    assert again == PointMeta.from_point(temp)


def test_point_id_rule_is_shared() -> None:
    longest = "p" * POINT_ID_MAX_LENGTH
    assert PointMeta(point_id=longest).point_id == longest
    with pytest.raises(ValidationError):
        PointMeta(point_id=longest + "p")
    with pytest.raises(ValidationError):
        PointMeta(point_id="Upper")


async def post(
    rcv: ReceiverHandle, body: bytes, headers: dict[str, str], token: str
) -> httpx.Response:
    headers = {**headers, "Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=rcv.url, timeout=30) as c:
        return await c.post("/api/v1/ingest", content=body, headers=headers)


async def get_points(rcv: ReceiverHandle, gateway_id: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=rcv.url, headers=rcv.admin_headers, timeout=30) as c:
        resp = await c.get(f"/api/v1/gateways/{gateway_id}/points")
    assert resp.status_code == 200, resp.text
    return {p["point_id"]: p for p in resp.json()}


def assert_points_match(stored: dict[str, dict[str, Any]], schedule: Schedule) -> None:
    assert set(stored) == {p.point_id for p in schedule.points}
    for point in schedule.points:
        row = stored[point.point_id]
        assert row["schedule_version"] == schedule.version
        for name in METADATA_FIELDS:
            got = row["limits"].get(name) if name in LIMIT_FIELDS else row[name]
            assert got == plain(getattr(point, name)), (point.point_id, name, got)


async def test_receiver_stores_every_field_from_point(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    schedule = load_full(tmp_path)
    token = await receiver.enroll("gw-1")
    batch = IngestBatch(
        gateway_id="gw-1",
        first_seq=0,
        last_seq=0,
        points=[PointMeta.from_point(p, schedule.version) for p in schedule.points],
    )
    assert (await post(receiver, *encode_body(batch), token)).status_code == 200
    assert_points_match(await get_points(receiver, "gw-1"), schedule)


async def test_receiver_refuses_unknown_metadata_keys(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    schedule = load_full(tmp_path)
    token = await receiver.enroll("gw-1")
    meta = PointMeta.from_point(schedule.points[0]).model_dump(mode="json")
    meta["alarm_colour"] = "red"
    doc = {"gateway_id": "gw-1", "first_seq": 0, "last_seq": 0, "points": [meta]}
    body = json.dumps(doc).encode()
    resp = await post(receiver, body, {"Content-Type": "application/json"}, token)
    assert resp.status_code == 422
    assert "alarm_colour" in resp.text
    assert await receiver.count("points") == 0


async def test_receiver_takes_the_longest_point_id_the_loader_takes(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    point_id = "cdu-01." + "x" * (POINT_ID_MAX_LENGTH - 7)
    path = tmp_path / "long.csv"
    path.write_text(f"point_id,device,address,data_type\n{point_id},cdu-01,hr:1,int16\n")
    schedule = load_schedule([path], DEVICES)
    token = await receiver.enroll("gw-1")
    t0 = 1_763_900_000.0
    batch = IngestBatch(
        gateway_id="gw-1",
        first_seq=1,
        last_seq=2,
        readings=columnar_readings([point_id] * 2, [t0, t0 + 5], [1.0, 2.0], [0, 0]),
        points=[PointMeta.from_point(schedule.points[0], schedule.version)],
    )
    assert (await post(receiver, *encode_body(batch), token)).status_code == 200
    assert set(await get_points(receiver, "gw-1")) == {point_id}
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        resp = await c.get(
            f"/api/v1/gateways/gw-1/points/{point_id}/readings",
            params={
                "from": "2025-11-23T00:00:00Z",
                "to": "2025-11-24T00:00:00Z",
                "resolution": "raw",
            },
        )
    assert resp.status_code == 200, resp.text
    assert [r["value"] for r in resp.json()["readings"]] == [1.0, 2.0]
    # one character more is refused by the loader and by the receiver alike
    longer = IngestBatch.model_validate(
        {"gateway_id": "gw-1", "first_seq": 3, "last_seq": 3, "points": []}
    ).model_dump(mode="json")
    longer["points"] = [{"point_id": point_id + "x"}]
    body = json.dumps(longer).encode()
    resp = await post(receiver, body, {"Content-Type": "application/json"}, token)
    assert resp.status_code == 422


async def test_schedule_to_agent_to_receiver_points(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    """The whole path: schedule CSV -> the real agent (`outpost run`) -> uplink -> receiver."""
    gateway = "gw-meta"
    server = await start_server()
    enrollment = await receiver.enrollment_token(gateway)
    cloud = (
        "[cloud]\n"
        f'url = "{receiver.url}"\n'
        f'enrollment_token = "{enrollment}"\n'
        "heartbeat_interval = 0.5\nflush_interval = 0.1\n"
        "backoff_min = 0.05\nbackoff_max = 0.5\n"
    )
    device = {"protocol": "modbus", "host": "127.0.0.1", "port": server.port, "poll_interval": 1}
    cfg = write_config(tmp_path, {"cdu-01": device}, FULL_CSV, extra=cloud, gateway_id=gateway)
    schedule = load_schedule([tmp_path / "site.csv"], DEVICES)
    agent = start_agent(cfg)

    async def arrived() -> bool:
        async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
            resp = await c.get(f"/api/v1/gateways/{gateway}/points")
        return resp.status_code == 200 and len(resp.json()) == len(schedule.points)

    try:
        await asyncio.to_thread(agent.wait_ready)
        await wait_for(arrived, 30, "point metadata at the receiver")
    finally:
        code = agent.stop()
        await server.stop()
    assert code == 0, agent.log()
    assert_points_match(await get_points(receiver, gateway), schedule)
