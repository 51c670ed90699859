"""``Point`` stored compactly (shared parts) still behaves as the frozen dataclass it declares,
and the loader shares equal values between points without changing any of them."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import sqlite3
from pathlib import Path

import pytest

from outpost.buffer import schema
from outpost.point_schedules.loader import COLUMNS, load_schedule, validate_schedule
from outpost.point_schedules.model import (
    DEFAULT_ACQUISITION,
    NO_LIMITS,
    NO_TAGS,
    AlarmPriority,
    ByteOrder,
    DataType,
    ModbusAddress,
    Point,
    SourceRef,
)

# A value for every column, none of them the column's default.
FULL: dict[str, object] = {
    "point_id": "cdu-01.supply_temp",
    "device": "cdu-01",
    "address": ModbusAddress("hr", 40),
    "data_type": DataType.FLOAT32,
    "byte_order": ByteOrder.CDAB,
    "scale": 0.1,
    "offset": -3.0,
    "units": "degC",
    "description": "supply temperature",
    "poll_interval": 5.0,
    "deadband": 0.2,
    "heartbeat": 60.0,
    "writable": True,
    "min": -10.0,
    "max": 90.0,
    "alarm_hh": 80.0,
    "alarm_h": 70.0,
    "alarm_l": 10.0,
    "alarm_ll": 5.0,
    "alarm_state": 1.0,
    "alarm_priority": AlarmPriority.HIGH,
    "alarm_deadband": 1.5,
    "alarm_delay": 10.0,
    "alarm_clear_delay": 20.0,
    "tags": {"equip": "cdu", "temp": ""},
}
# Another valid value per column, to change one field at a time.
OTHER: dict[str, object] = {
    "point_id": "x",
    "device": "cdu-02",
    "address": ModbusAddress("hr", 41),
    "data_type": DataType.INT32,
    "byte_order": ByteOrder.DCBA,
    "scale": 2.0,
    "offset": 1.0,
    "units": "K",
    "description": "other",
    "poll_interval": 1.0,
    "deadband": 0.0,
    "heartbeat": 30.0,
    "writable": False,
    "min": 0.0,
    "max": 100.0,
    "alarm_hh": 85.0,
    "alarm_h": 75.0,
    "alarm_l": 15.0,
    "alarm_ll": 6.0,
    "alarm_state": 0.0,
    "alarm_priority": AlarmPriority.LOW,
    "alarm_deadband": 0.5,
    "alarm_delay": 1.0,
    "alarm_clear_delay": 2.0,
    "tags": {"equip": "ahu"},
}


def test_every_column_is_a_field_and_reads_back() -> None:
    names = [f.name for f in dataclasses.fields(Point)]
    assert names == [*COLUMNS, "source"]
    assert set(FULL) == set(COLUMNS) == set(OTHER)
    source = SourceRef("s.csv", 7)
    p = Point(**FULL, source=source)  # type: ignore[arg-type]
    for name, value in FULL.items():
        assert getattr(p, name) == value, name
    assert p.source is source
    # positional construction in column order, as a dataclass takes it
    assert Point(*[FULL[c] for c in COLUMNS]) == p  # type: ignore[arg-type]
    assert "alarm_clear_delay=20.0" in repr(p) and repr(p).startswith("Point(point_id=")


def test_equality_is_over_every_field_but_source() -> None:
    p = Point(**FULL, source=SourceRef("a.csv", 1))  # type: ignore[arg-type]
    assert p == Point(**FULL, source=SourceRef("b.csv", 9))  # type: ignore[arg-type]
    for name in COLUMNS:
        changed = dataclasses.replace(p, **{name: OTHER[name]})
        assert changed != p, name
        assert getattr(changed, name) == OTHER[name], name
        assert dataclasses.replace(changed, **{name: FULL[name]}) == p, name


def test_frozen_copyable_and_unhashable() -> None:
    p = Point(**FULL)  # type: ignore[arg-type]
    for name in ("point_id", "scale", "alarm_hh", "acquisition"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(p, name, None)
    with pytest.raises(TypeError):
        hash(p)
    for clone in (pickle.loads(pickle.dumps(p)), copy.copy(p), copy.deepcopy(p)):
        assert clone == p
        assert clone.tags == FULL["tags"]


def test_defaults_share_one_part_each() -> None:
    a = Point("a", "d", ModbusAddress("hr", 1), DataType.UINT16)
    b = Point("b", "d", ModbusAddress("hr", 2), DataType.UINT16, alarm_hh=5.0)
    assert a.acquisition is DEFAULT_ACQUISITION and a.limits is NO_LIMITS
    assert b.acquisition is DEFAULT_ACQUISITION and b.limits is not NO_LIMITS
    assert a.tags is NO_TAGS and a.tags == {}
    assert not a.has_alarms and b.has_alarms
    with pytest.raises(TypeError):
        a.tags["x"] = "y"  # type: ignore[index]


CSV = """point_id,device,address,data_type,scale,units,description,deadband,heartbeat,alarm_hh,tags
{d}.a,{d},hr:0,uint16,0.1,degC,supply,0.5,300,80,equip=cdu;temp
{d}.b,{d},hr:1,int16,0.1,degC,return,0.5,300,,
{d}.c,{d},hr:2.3,,,,,0,60,,equip=cdu;temp
"""


def test_loader_shares_equal_values_between_points(tmp_path: Path) -> None:
    paths = []
    for d in ("cdu-01", "cdu-02"):
        path = tmp_path / f"{d}.csv"
        path.write_text(CSV.format(d=d))
        paths.append(path)
    devices = {"cdu-01": "modbus", "cdu-02": "modbus"}
    schedule = load_schedule(paths, devices)
    one, two = schedule.points[:3], schedule.points[3:]
    for p, q in zip(one, two, strict=True):
        assert p.address is q.address  # same address text on both devices: one object
        assert p.acquisition is q.acquisition and p.limits is q.limits
        assert p.tags is q.tags
    assert one[0].device is one[1].device is one[2].device
    assert one[0].units is one[1].units
    assert one[0].tags is one[2].tags and one[0].tags == {"equip": "cdu", "temp": ""}
    assert one[1].tags is NO_TAGS and one[1].limits is NO_LIMITS
    assert one[0].scale == 0.1 and one[0].deadband == 0.5 and one[0].alarm_hh == 80.0
    assert one[2].address == ModbusAddress("hr", 2, 3) and one[2].data_type is DataType.BOOL
    assert one[2].heartbeat == 60.0 and one[2].deadband == 0.0
    # what is shared is what a point would hold on its own
    for p in schedule.points:
        assert p == Point(**{c: getattr(p, c) for c in COLUMNS})  # type: ignore[arg-type]
        assert p.source is not None and p.source.file in {str(x) for x in paths}


def test_a_constrained_number_is_checked_when_cached(tmp_path: Path) -> None:
    """The number cache is shared by all columns: "0" is a fine offset and a bad scale."""
    path = tmp_path / "s.csv"
    path.write_text("point_id,device,address,data_type,offset,scale\na,d,hr:0,uint16,0,0\n")
    schedule, issues = validate_schedule([path], {"d": "modbus"})
    assert schedule is None
    assert [(i.line, i.column, i.message) for i in issues] == [(2, "scale", "must not be 0, got 0")]


def test_without_sources_the_issues_still_name_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("point_id,device,address,data_type\na,d,hr:0,uint16\nb,d,hr:0,uint16\n")
    devices = {"d": "modbus"}
    kept = load_schedule([path], devices)
    dropped = load_schedule([path], devices, keep_source=False)
    assert [p.source for p in kept.points] == [SourceRef(str(path), 2), SourceRef(str(path), 3)]
    assert [p.source for p in dropped.points] == [None, None]
    assert kept.points == dropped.points
    for keep in (True, False):
        _, issues = validate_schedule([path], devices, keep_source=keep)
        assert [str(i) for i in issues] == [
            f'{path}:3: warning: column "address": "b" reads the same value as "a" at '
            f"{path}:2 (d hr:0 as uint16); a second point for one value is usually a "
            "copy-paste slip"
        ]


def test_point_names_reuse_the_given_strings() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE points (key INTEGER PRIMARY KEY, point_id TEXT NOT NULL UNIQUE)")
    ids = [f"dev.p{i}" for i in range(5)]
    conn.executemany("INSERT INTO points(point_id) VALUES (?)", [(p,) for p in ids])
    conn.execute("INSERT INTO points(point_id) VALUES ('gone')")
    plain = schema.point_names(conn)
    shared = schema.point_names(conn, share=ids)
    assert plain == shared == [None, *ids, "gone"]
    assert all(a is b for a, b in zip(shared[1:6], ids, strict=True))
    assert not any(a is b for a, b in zip(plain[1:6], ids, strict=True))
    again = schema.point_names(conn, share=shared)
    assert all(a is b for a, b in zip(again, shared, strict=True))
