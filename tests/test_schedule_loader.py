"""The schedule CSV loader: every error kind with its file, line and column; the points it builds;
versions; the differ. Files are real files in tmp_path, read through the public API."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from outpost.point_schedules.diff import diff_schedules, format_diff
from outpost.point_schedules.loader import (
    COLUMNS,
    ScheduleError,
    ScheduleIssue,
    load_schedule,
    parse_schedule,
    schedule_version,
    validate_schedule,
)
from outpost.point_schedules.model import (
    AlarmPriority,
    BacnetAddress,
    ByteOrder,
    DataType,
    ModbusAddress,
    MqttAddress,
    SnmpAddress,
    SourceRef,
)
from outpost.point_schedules.template import DEFAULT_DEVICES, template

DEVICES = {"cdu-01": "modbus", "ahu-1": "bacnet", "pdu-a": "snmp", "rack": "mqtt"}
HEADER = "point_id,device,address,data_type"


def write(tmp_path: Path, text: str | bytes, name: str = "s.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def problems(tmp_path: Path, text: str | bytes, name: str = "s.csv") -> list[tuple]:
    """(line, column, message) of every issue; asserts nothing was loaded."""
    path = write(tmp_path, text, name)
    schedule, issues = validate_schedule([path], DEVICES)
    assert schedule is None
    assert issues, "an invalid schedule must report at least one issue"
    assert all(i.file == str(path) for i in issues)
    return [(i.line, i.column, i.message) for i in issues]


def one_problem(tmp_path: Path, text: str | bytes) -> tuple:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


def load(tmp_path: Path, text: str, name: str = "s.csv"):
    return load_schedule([write(tmp_path, text, name)], DEVICES)


# ----------------------------------------------------------------------------------- good files


def test_loads_points_with_all_columns(tmp_path: Path) -> None:
    header = ",".join(COLUMNS)
    row = {
        "point_id": "cdu-01.supply_temp",
        "device": "cdu-01",
        "address": "hr:40",
        "data_type": "float32",
        "byte_order": "CDAB",
        "scale": "0.1",
        "offset": "-5",
        "units": "degC",
        "description": '"Supply temp, secondary"',
        "poll_interval": "2.5",
        "deadband": "0.2",
        "heartbeat": "60",
        "writable": "Yes",
        "min": "0",
        "max": "100",
        "alarm_hh": "45",
        "alarm_h": "40",
        "alarm_l": "12",
        "alarm_ll": "10",
        "alarm_state": "",
        "alarm_priority": "high",
        "alarm_deadband": "0.5",
        "alarm_delay": "30",
        "alarm_clear_delay": "10",
        "tags": "equip=cdu; loop=1;supply;temp;",
    }
    text = header + "\n" + ",".join(row[c] for c in COLUMNS) + "\n"
    schedule = load(tmp_path, text)
    (p,) = schedule.points
    assert p.point_id == "cdu-01.supply_temp"
    assert p.device == "cdu-01"
    assert p.address == ModbusAddress("hr", 40)
    assert p.data_type is DataType.FLOAT32
    assert p.byte_order is ByteOrder.CDAB
    assert (p.scale, p.offset) == (0.1, -5.0)
    assert p.units == "degC"
    assert p.description == "Supply temp, secondary"
    assert p.poll_interval == 2.5
    assert (p.deadband, p.heartbeat) == (0.2, 60.0)
    assert p.writable is True
    assert (p.min, p.max) == (0.0, 100.0)
    assert (p.alarm_hh, p.alarm_h, p.alarm_l, p.alarm_ll) == (45.0, 40.0, 12.0, 10.0)
    assert p.alarm_state is None
    assert p.alarm_priority is AlarmPriority.HIGH
    assert (p.alarm_deadband, p.alarm_delay, p.alarm_clear_delay) == (0.5, 30.0, 10.0)
    assert p.tags == {"equip": "cdu", "loop": "1", "supply": "", "temp": ""}
    assert p.source == SourceRef(str(tmp_path / "s.csv"), 2)
    assert schedule.files == (str(tmp_path / "s.csv"),)


def test_defaults_for_empty_cells_and_column_order_is_free(tmp_path: Path) -> None:
    text = (
        "address,writable,point_id,device,data_type,heartbeat,alarm_priority,scale\n"
        "hr:1,,cdu-01.a,cdu-01,uint16,,,\n"
    )
    (p,) = load(tmp_path, text).points
    assert p.address == ModbusAddress("hr", 1)
    assert p.data_type is DataType.UINT16
    assert p.writable is False
    assert p.heartbeat == 300.0
    assert p.alarm_priority is AlarmPriority.MEDIUM
    assert p.scale == 1.0
    assert p.poll_interval is None
    assert p.byte_order is ByteOrder.ABCD
    assert p.tags == {}


def test_all_protocols_and_bool_defaults(tmp_path: Path) -> None:
    text = (
        "point_id,device,address,data_type,alarm_state\n"
        "a.coil,cdu-01,coil:5,,\n"
        "a.di,cdu-01,di:3,bool,true\n"
        "a.bit,cdu-01,hr:40.3,,1\n"
        "a.bit2,cdu-01,ir:2,bit7,\n"
        "b.ai,ahu-1,analog-input:1,,\n"
        "b.av,ahu-1,av:3/present-value,float32,\n"
        "c.oid,pdu-a,.1.3.6.1.2.1.1.3.0,,\n"
        "d.temp,rack,site/rack-3/env#$.temp,,\n"
    )
    points = load(tmp_path, text).by_id()
    assert points["a.coil"].data_type is DataType.BOOL
    assert points["a.di"].alarm_state == 1.0
    assert points["a.bit"].address == ModbusAddress("hr", 40, 3)
    assert points["a.bit"].data_type is DataType.BOOL
    assert points["a.bit2"].address == ModbusAddress("ir", 2, 7)
    assert points["a.bit2"].data_type is DataType.BOOL
    assert points["b.ai"].address == BacnetAddress("analog-input", 1)
    assert points["b.ai"].data_type is None
    assert points["b.av"].address == BacnetAddress("analog-value", 3)
    assert points["c.oid"].address == SnmpAddress("1.3.6.1.2.1.1.3.0")
    assert points["d.temp"].address == MqttAddress("site/rack-3/env", "$.temp")


def test_comments_blank_lines_bom_crlf_and_line_numbers(tmp_path: Path) -> None:
    text = (
        "\ufeff# site schedule\r\n"
        "\r\n"
        "point_id,device,address,data_type\r\n"
        "# a commented-out row,cdu-01,hr:1,int16\r\n"
        "cdu-01.a,cdu-01,hr:1,int16\r\n"
        ",,,\r\n"
        '"cdu-01.b",cdu-01,hr:2,"int16"\r\n'
        '"# quoted comment, spreadsheet style",,,\r\n'
        "   \r\n"
        "cdu-01.c,cdu-01,hr:3,int16\r\n"
    )
    schedule = load(tmp_path, text)
    assert [(p.point_id, p.source.line) for p in schedule.points] == [
        ("cdu-01.a", 5),
        ("cdu-01.b", 7),
        ("cdu-01.c", 10),
    ]


def test_multi_line_quoted_cell_is_reported_at_its_first_line(tmp_path: Path) -> None:
    text = (
        "point_id,device,address,data_type,description\n"
        'cdu-01.a,cdu-01,hr:1,int16,"two\n'
        "# not a comment inside quotes\n"
        'lines"\n'
        "cdu-01.b,cdu-01,hr:99999,int16,\n"
    )
    found = problems(tmp_path, text)
    assert found == [
        (5, "address", 'modbus address "hr:99999": address 99999 out of range 0..65535')
    ]
    ok = load(tmp_path, text.replace("99999", "2"), "ok.csv")
    assert ok.points[0].description == "two\n# not a comment inside quotes\nlines"
    assert ok.points[1].source.line == 5


def test_alarm_priority_kept_as_given(tmp_path: Path) -> None:
    text = "point_id,device,address,alarm_hh,alarm_priority\nb.x,ahu-1,ai:1,50,LOW\n"
    (p,) = load(tmp_path, text).points
    assert p.alarm_priority is AlarmPriority.LOW
    assert p.has_alarms


@pytest.mark.parametrize(
    "word,value",
    [("true", True), ("FALSE", False), ("yes", True), ("No", False), ("1", True), ("0", False)],
)
def test_writable_words(tmp_path: Path, word: str, value: bool) -> None:
    text = f"point_id,device,address,data_type,writable\ncdu-01.a,cdu-01,hr:1,int16,{word}\n"
    assert load(tmp_path, text).points[0].writable is value


def test_equal_limits_on_one_side_are_allowed(tmp_path: Path) -> None:
    text = "point_id,device,address,alarm_hh,alarm_h,alarm_l,alarm_ll,min,max\n"
    text += "b.x,ahu-1,ai:1,40,40,10,10,5,5\n"
    (p,) = load(tmp_path, text).points
    assert (p.alarm_hh, p.alarm_h, p.alarm_l, p.alarm_ll) == (40.0, 40.0, 10.0, 10.0)


@pytest.mark.parametrize("protocol", sorted(DEFAULT_DEVICES))
def test_templates_validate(protocol: str) -> None:
    text = template(protocol)
    assert text.startswith("#")
    schedule, issues = parse_schedule(
        [("t.csv", text.encode())], {DEFAULT_DEVICES[protocol]: protocol}
    )
    assert issues == []
    assert schedule is not None and len(schedule.points) >= 3
    renamed = template(protocol, "dev-9")
    schedule, issues = parse_schedule([("t.csv", renamed.encode())], {"dev-9": protocol})
    assert issues == [] and schedule is not None
    assert all(p.point_id.startswith("dev-9.") for p in schedule.points)


def test_template_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        template("knx")


# ------------------------------------------------------------------------------ file-level errors


def test_empty_file(tmp_path: Path) -> None:
    line, column, message = one_problem(tmp_path, b"")
    assert (line, column) == (0, None)
    assert message.startswith("empty file")


def test_comments_only_is_an_empty_file(tmp_path: Path) -> None:
    line, column, message = one_problem(tmp_path, "# nothing\n\n#more\n")
    assert (line, column) == (0, None) and message.startswith("empty file")


def test_header_only_is_no_points(tmp_path: Path) -> None:
    assert one_problem(tmp_path, HEADER + "\n# a comment\n") == (
        0,
        None,
        "no points: the file has a header but no rows",
    )


def test_unknown_duplicate_and_missing_columns(tmp_path: Path) -> None:
    text = "pointid,device,adress,data_type,colour,device\n" + "x,cdu-01,hr:1,int16,red,cdu-01\n"
    found = problems(tmp_path, text)
    assert (1, "pointid", 'unknown column (did you mean "point_id"?)') in found
    assert (1, "adress", 'unknown column (did you mean "address"?)') in found
    assert any(f[:2] == (1, "colour") and "known columns: point_id" in f[2] for f in found)
    assert (1, "device", "column given twice (cells 2 and 6)") in found
    assert (1, "point_id", "required column is missing") in found
    assert (1, "address", "required column is missing") in found


def test_header_names_are_exact(tmp_path: Path) -> None:
    found = problems(tmp_path, "Point_ID,device,address\nb.x,ahu-1,ai:1\n")
    assert (1, "Point_ID", 'unknown column (did you mean "point_id"?)') in found


def test_empty_header_cell(tmp_path: Path) -> None:
    found = problems(tmp_path, "point_id,device,address,\nb.x,ahu-1,ai:1,\n")
    assert found == [
        (1, None, "header cell 4 is empty: every column needs a name (remove trailing separators)")
    ]


def test_semicolon_separated_file_gets_a_hint(tmp_path: Path) -> None:
    found = problems(tmp_path, "point_id;device;address\nb.x;ahu-1;ai:1\n")
    assert any(f[0] == 1 and 'seems to use ";" as separator' in f[2] for f in found)
    found = problems(tmp_path, "point_id\tdevice\taddress\nb.x\tahu-1\tai:1\n", "tabs.csv")
    assert any(f[0] == 1 and "seems to use tabs as separator" in f[2] for f in found)


def test_wrong_number_of_cells(tmp_path: Path) -> None:
    text = (
        HEADER
        + "\ncdu-01.a,cdu-01,hr:1\ncdu-01.b,cdu-01,hr:2,int16,extra\ncdu-01.c,cdu-01,hr:3,int16\n"
    )
    found = problems(tmp_path, text)
    assert found == [
        (2, None, "expected 4 cells (one per header column), found 3"),
        (
            3,
            None,
            "expected 4 cells (one per header column), found 5 "
            "(a cell containing a comma must be quoted)",
        ),
    ]


def test_non_utf8_names_line_and_offset(tmp_path: Path) -> None:
    data = (HEADER + "\ncdu-01.a,cdu-01,hr:1,int16\ncdu-01.b,cdu-01,hr:2,int16,\xb0C\n").encode(
        "latin-1"
    )
    offset = data.index(b"\xb0")
    line, column, message = one_problem(tmp_path, data)
    assert (line, column) == (3, None)
    assert f"not valid UTF-8: byte 0xB0 at offset {offset}" in message


def test_utf16_and_xlsx_are_named(tmp_path: Path) -> None:
    line, _, message = one_problem(tmp_path, (HEADER + "\n").encode("utf-16"))
    assert line == 0 and "UTF-16" in message
    line, _, message = one_problem(tmp_path, b"PK\x03\x04rest-of-zip")
    assert line == 0 and "zip archive" in message and "CSV UTF-8" in message


def test_nul_character(tmp_path: Path) -> None:
    assert one_problem(tmp_path, HEADER + "\ncdu-01.a,cdu-01,hr:1,in\x00t16\n") == (
        2,
        None,
        "contains a NUL character; is this really a CSV text file?",
    )


def test_unclosed_quote(tmp_path: Path) -> None:
    text = (
        HEADER
        + '\ncdu-01.a,cdu-01,hr:1,int16\ncdu-01.b,"cdu-01,hr:2,int16\ncdu-01.c,cdu-01,hr:3,int16\n'
    )
    assert one_problem(tmp_path, text) == (
        3,
        None,
        'a quoted cell that starts on this line is never closed (missing ")',
    )


def test_stray_quote_after_quoted_cell(tmp_path: Path) -> None:
    text = HEADER + '\n"cdu-01.a"x,cdu-01,hr:1,int16\ncdu-01.b,cdu-01,hr:99999,int16\n'
    found = problems(tmp_path, text)
    assert found[0][0] == 2 and found[0][2].startswith("malformed CSV")
    # parsing goes on after a malformed record, so later problems are still reported
    assert found[1][:2] == (3, "address")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    good = write(tmp_path, HEADER + "\ncdu-01.a,cdu-01,hr:1,int16\n", "good.csv")
    bad = write(tmp_path, HEADER + "\ncdu-01.b,cdu-01,hr:1,int99\n", "bad.csv")
    files = [good, tmp_path / "nope.csv", bad, tmp_path]
    schedule, issues = validate_schedule(files, DEVICES)
    assert schedule is None
    assert [str(i) for i in issues] == [
        f"{tmp_path / 'nope.csv'}: cannot read file: No such file or directory",
        f'{bad}:2: column "data_type": unknown data_type "int99" (did you mean "int64"?): '
        "expected one of bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, bitN",
        f"{tmp_path}: is a directory, not a CSV file",
    ]
    schedule, issues = validate_schedule([], DEVICES)
    assert schedule is None and [str(i) for i in issues] == ["no schedule files given"]


# ------------------------------------------------------------------------------------ row errors


def test_required_cells_empty(tmp_path: Path) -> None:
    found = problems(tmp_path, HEADER + "\n,,,\ncdu-01.x,,,\n,cdu-01,hr:1,int16\n")
    assert found == [
        (3, "device", "required, the cell is empty"),
        (3, "address", "required, the cell is empty"),
        (4, "point_id", "required, the cell is empty"),
    ]


@pytest.mark.parametrize("bad", ["Cdu.a", "-a", "_a", "a b", "a/b", "ä", ".a"])
def test_point_id_syntax(tmp_path: Path, bad: str) -> None:
    line, column, message = one_problem(tmp_path, f"{HEADER}\n{bad},cdu-01,hr:1,int16\n")
    assert (line, column) == (2, "point_id")
    assert "is not a valid point id" in message


def test_duplicate_point_id_within_a_file(tmp_path: Path) -> None:
    text = (
        HEADER
        + "\ncdu-01.a,cdu-01,hr:1,int16\ncdu-01.b,cdu-01,hr:2,int16\ncdu-01.a,cdu-01,hr:3,int16\n"
    )
    path = tmp_path / "s.csv"
    assert one_problem(tmp_path, text) == (
        4,
        "point_id",
        f'duplicate point_id "cdu-01.a": first defined at {path}:2',
    )


def test_duplicate_point_id_across_files_reports_both_locations(tmp_path: Path) -> None:
    a = write(tmp_path, HEADER + "\ncdu-01.a,cdu-01,hr:1,int16\n", "a.csv")
    b = write(tmp_path, HEADER + "\n# moved\ncdu-01.a,cdu-01,hr:9,int16\n", "b.csv")
    with pytest.raises(ScheduleError) as exc:
        load_schedule([a, b], DEVICES)
    assert [str(i) for i in exc.value.issues] == [
        f'{b}:3: column "point_id": duplicate point_id "cdu-01.a": first defined at {a}:2'
    ]
    assert str(exc.value) == str(exc.value.issues[0])


def test_unknown_device(tmp_path: Path) -> None:
    line, column, message = one_problem(tmp_path, f"{HEADER}\nx.a,cdu-1,hr:1,int16\n")
    assert (line, column) == (2, "device")
    assert message == (
        'unknown device "cdu-1": did you mean "cdu-01"? devices in the agent config: '
        "ahu-1, cdu-01, pdu-a, rack"
    )


def test_unknown_device_does_not_also_complain_about_its_address(tmp_path: Path) -> None:
    found = problems(tmp_path, f"{HEADER}\nx.a,nowhere,anything at all,\n")
    assert [f[1] for f in found] == ["device"]


@pytest.mark.parametrize(
    ("device", "address", "message"),
    [
        ("cdu-01", "hr:70000", 'modbus address "hr:70000": address 70000 out of range 0..65535'),
        (
            "cdu-01",
            "x:1",
            'modbus address "x:1": unknown table "x": expected one of hr, ir, coil, di',
        ),
        (
            "ahu-1",
            "analog-input:9999999",
            'bacnet address "analog-input:9999999": instance 9999999 out of range 0..4194302',
        ),
        ("pdu-a", "1", 'snmp address "1": expected a numeric OID'),
        ("rack", "a/#/b", 'mqtt address "a/#/b": "#" must be the last topic level'),
    ],
)
def test_bad_address_per_protocol(tmp_path: Path, device: str, address: str, message: str) -> None:
    dtype = "int16" if device == "cdu-01" else ""
    line, column, found = one_problem(tmp_path, f"{HEADER}\nx.a,{device},{address},{dtype}\n")
    assert (line, column) == (2, "address")
    assert found.startswith(message)


def test_multi_register_value_past_the_last_address(tmp_path: Path) -> None:
    found = one_problem(tmp_path, f"{HEADER}\nx.a,cdu-01,hr:65534,float64\n")
    assert found == (
        2,
        "address",
        "float64 at hr:65534 needs 4 registers and runs past the last address 65535",
    )
    load(tmp_path, f"{HEADER}\nx.a,cdu-01,hr:65534,float32\n", "ok.csv")


def test_unknown_data_type(tmp_path: Path) -> None:
    line, column, message = one_problem(tmp_path, f"{HEADER}\nx.a,cdu-01,hr:1,float\n")
    assert (line, column) == (2, "data_type")
    assert message.startswith(
        'unknown data_type "float" (did you mean "float32"?): expected one of bool'
    )


def test_data_type_required_for_modbus_registers(tmp_path: Path) -> None:
    line, column, message = one_problem(tmp_path, f"{HEADER}\nx.a,cdu-01,hr:1,\n")
    assert (line, column) == (2, "data_type")
    assert message.startswith("required for modbus register points")


def test_missing_data_type_column_is_one_header_problem(tmp_path: Path) -> None:
    text = "point_id,device,address\nx.a,cdu-01,hr:1\nx.b,cdu-01,coil:1\nx.c,cdu-01,ir:4\nb.x,ahu-1,ai:1\n"
    assert one_problem(tmp_path, text) == (
        1,
        "data_type",
        "required column is missing: modbus register points need a data_type (lines 2, 4)",
    )


def test_data_type_optional_for_coils_and_other_protocols(tmp_path: Path) -> None:
    text = "point_id,device,address\nx.b,cdu-01,coil:1\nb.x,ahu-1,ai:1\n"
    assert len(load(tmp_path, text).points) == 2


@pytest.mark.parametrize(
    ("address", "dtype", "message"),
    [
        (
            "coil:1",
            "int16",
            "coil addresses are single bits: data_type must be bool (or empty), got int16",
        ),
        (
            "di:1",
            "float32",
            "di addresses are single bits: data_type must be bool (or empty), got float32",
        ),
        (
            "hr:40.3",
            "uint16",
            "hr:40.3 is a bit of a register: data_type must be bool (or empty), got uint16",
        ),
        ("hr:40.3", "bit4", "bit4 contradicts the address hr:40.3 (bit 3)"),
        ("coil:4", "bit4", "bit4 needs a register address (hr or ir), not coil"),
        ("hr:40", "bit16", "bit 16 out of range 0..15"),
    ],
)
def test_bit_addresses_need_bool(tmp_path: Path, address: str, dtype: str, message: str) -> None:
    assert one_problem(tmp_path, f"{HEADER}\nx.a,cdu-01,{address},{dtype}\n") == (
        2,
        "data_type",
        message,
    )


@pytest.mark.parametrize("address", ["coil:1", "di:2", "hr:3.4", "hr:5"])
def test_unknown_data_type_on_any_modbus_address_is_one_problem(
    tmp_path: Path, address: str
) -> None:
    text = f"{HEADER},byte_order\nx.a,cdu-01,{address},float,CDAB\n"
    line, column, message = one_problem(tmp_path, text)
    assert (line, column) == (2, "data_type")
    assert message.startswith('unknown data_type "float" (did you mean "float32"?)')


def test_bit_types_only_for_modbus(tmp_path: Path) -> None:
    assert one_problem(tmp_path, f"{HEADER}\nb.a,ahu-1,ai:1,bit3\n") == (
        2,
        "data_type",
        "bitN data types exist only for modbus registers, not for bacnet",
    )


@pytest.mark.parametrize(
    ("address", "dtype", "order", "message"),
    [
        (
            "hr:1",
            "int16",
            "CDAB",
            "byte_order applies only to multi-register types (int32, "
            "uint32, int64, uint64, float32, float64), not to int16",
        ),
        (
            "hr:1.2",
            "bool",
            "ABCD",
            "byte_order applies only to multi-register types (int32, "
            "uint32, int64, uint64, float32, float64), not to bool bits",
        ),
        ("coil:1", "", "DCBA", "not to bool bits"),
        (
            "hr:1",
            "float32",
            "XYZW",
            'unknown byte_order "XYZW": expected one of ABCD, CDAB, BADC, DCBA',
        ),
    ],
)
def test_byte_order_problems(
    tmp_path: Path, address: str, dtype: str, order: str, message: str
) -> None:
    line, column, found = one_problem(
        tmp_path, f"{HEADER},byte_order\nx.a,cdu-01,{address},{dtype},{order}\n"
    )
    assert (line, column) == (2, "byte_order")
    assert found.endswith(message) if message.startswith("not") else found == message


def test_byte_order_on_other_protocols(tmp_path: Path) -> None:
    assert one_problem(tmp_path, "point_id,device,address,byte_order\nb.a,ahu-1,ai:1,CDAB\n") == (
        2,
        "byte_order",
        "byte_order applies only to modbus multi-register values, not to bacnet",
    )


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("scale", "abc", 'expected a number, got "abc"'),
        ("scale", "0", "must not be 0, got 0"),
        ("scale", "0.0e3", "must not be 0, got 0.0e3"),
        ("offset", '"1,5"', 'expected a number, got "1,5"'),
        ("offset", "nan", 'expected a number, got "nan"'),
        ("offset", "1e999", '"1e999" is out of the range of a number'),
        ("poll_interval", "0", "must be greater than 0, got 0"),
        ("poll_interval", "-1", "must be greater than 0, got -1"),
        ("poll_interval", "5s", 'expected a number, got "5s"'),
        ("deadband", "-0.1", "must not be negative, got -0.1"),
        ("heartbeat", "0", "must be greater than 0, got 0"),
        ("min", "low", 'expected a number, got "low"'),
        ("max", "1_000", 'expected a number, got "1_000"'),
        ("alarm_hh", "x", 'expected a number, got "x"'),
        ("alarm_h", "inf", 'expected a number, got "inf"'),
        ("alarm_l", "--1", 'expected a number, got "--1"'),
        ("alarm_ll", "", None),
        ("alarm_state", "on", 'expected a number, got "on"'),
        ("alarm_deadband", "-1", "must not be negative, got -1"),
        ("alarm_delay", "-5", "must not be negative, got -5"),
        ("alarm_clear_delay", "soon", 'expected a number, got "soon"'),
        (
            "alarm_priority",
            "urgent",
            'unknown priority "urgent": expected one of critical, high, medium, low',
        ),
        ("writable", "maybe", 'expected true or false (also yes/no, 1/0), got "maybe"'),
        (
            "tags",
            "=cdu",
            'tag "=cdu" has no name: expected name=value or a bare marker name, separated by ;',
        ),
        ("tags", "equip=cdu;equip=ahu", 'tag "equip" is given twice'),
        ("tags", "my tag=1", 'tag name "my tag" must not contain spaces'),
    ],
)
def test_cell_value_problems(tmp_path: Path, column: str, value: str, message: str | None) -> None:
    text = f"point_id,device,address,{column}\nb.a,ahu-1,ai:1,{value}\n"
    if message is None:
        assert load(tmp_path, text).points
        return
    assert one_problem(tmp_path, text) == (2, column, message)


def test_min_greater_than_max(tmp_path: Path) -> None:
    assert one_problem(tmp_path, "point_id,device,address,min,max\nb.a,ahu-1,ai:1,10,5\n") == (
        2,
        "max",
        "max (5) is less than min (10)",
    )


@pytest.mark.parametrize(
    ("hh", "h", "lo", "ll", "column", "message"),
    [
        ("40", "45", "", "", "alarm_h", "alarm_h (45) must not be greater than alarm_hh (40)"),
        ("", "30", "30", "", "alarm_l", "alarm_l (30) must be less than alarm_h (30)"),
        ("", "", "10", "12", "alarm_ll", "alarm_ll (12) must not be greater than alarm_l (10)"),
        ("20", "", "", "25", "alarm_ll", "alarm_ll (25) must be less than alarm_hh (20)"),
        ("", "20.5", "", "20.5", "alarm_ll", "alarm_ll (20.5) must be less than alarm_h (20.5)"),
    ],
)
def test_limits_out_of_order(
    tmp_path: Path,
    hh: str,
    h: str,
    lo: str,
    ll: str,
    column: str,
    message: str,
) -> None:
    text = f"point_id,device,address,alarm_hh,alarm_h,alarm_l,alarm_ll\nb.a,ahu-1,ai:1,{hh},{h},{lo},{ll}\n"
    line, col, found = one_problem(tmp_path, text)
    assert (line, col) == (2, column)
    assert found == message + "; expected alarm_hh >= alarm_h > alarm_l >= alarm_ll"


def test_writable_read_only_modbus_tables(tmp_path: Path) -> None:
    text = f"{HEADER},writable\nx.a,cdu-01,ir:1,int16,true\nx.b,cdu-01,di:1,,yes\nx.c,cdu-01,hr:1,int16,true\n"
    assert problems(tmp_path, text) == [
        (
            2,
            "writable",
            "ir (input registers) are read-only in Modbus; use hr or coil for a writable point",
        ),
        (
            3,
            "writable",
            "di (discrete inputs) are read-only in Modbus; use hr or coil for a writable point",
        ),
    ]


def test_every_problem_across_files_is_reported_in_order(tmp_path: Path) -> None:
    a = write(tmp_path, f"{HEADER},scale\nx.a,cdu-01,hr:1,int16,0\nX,cdu-01,hr:2,int17,\n", "a.csv")
    b = write(tmp_path, f"{HEADER}\nb.x,ahu-1,ai:-1,\n", "b.csv")
    c = write(tmp_path, "", "c.csv")
    with pytest.raises(ScheduleError) as exc:
        load_schedule([a, b, c], DEVICES)
    located = [(Path(i.file).name, i.line, i.column) for i in exc.value.issues]
    assert located == [
        ("a.csv", 2, "scale"),
        ("a.csv", 3, "point_id"),
        ("a.csv", 3, "data_type"),
        ("b.csv", 2, "address"),
        ("c.csv", 0, None),
    ]
    lines = str(exc.value).splitlines()
    assert len(lines) == 5
    assert lines[0] == f'{a}:2: column "scale": must not be 0, got 0'


def test_issue_formatting() -> None:
    assert str(ScheduleIssue("f.csv", 14, "address", "bad")) == 'f.csv:14: column "address": bad'
    assert str(ScheduleIssue("f.csv", 3, None, "bad")) == "f.csv:3: bad"
    assert str(ScheduleIssue("f.csv", 0, None, "bad")) == "f.csv: bad"


def test_huge_cell_is_cut_short_in_messages(tmp_path: Path) -> None:
    _, column, message = one_problem(
        tmp_path, f"point_id,device,address,scale\nb.a,ahu-1,ai:1,{'x' * 5000}\n"
    )
    assert column == "scale" and len(message) < 120


# ---------------------------------------------------------------------------------------- version


def test_version_is_content_hash_independent_of_order_and_names(tmp_path: Path) -> None:
    a_text = f"{HEADER}\nx.a,cdu-01,hr:1,int16\n"
    b_text = "point_id,device,address\nb.x,ahu-1,ai:1\n"
    a, b = write(tmp_path, a_text, "a.csv"), write(tmp_path, b_text, "b.csv")
    ab = load_schedule([a, b], DEVICES)
    ba = load_schedule([b, a], DEVICES)
    assert ab.version == ba.version
    assert ab.version.startswith("sha256:") and len(ab.version) == 7 + 16
    assert [p.point_id for p in ab.points] == ["x.a", "b.x"]
    assert [p.point_id for p in ba.points] == ["b.x", "x.a"]
    moved = write(tmp_path, a_text, "renamed.csv")
    single = load_schedule([moved], DEVICES)
    import hashlib

    assert single.version == "sha256:" + hashlib.sha256(a_text.encode()).hexdigest()[:16]
    assert single.version == schedule_version([a_text.encode()])
    assert schedule_version([a_text.encode() + b"\n"]) != single.version
    assert schedule_version([a_text.encode(), b_text.encode()]) == ab.version


# ------------------------------------------------------------------------------------------- diff


def test_diff_added_removed_changed(tmp_path: Path) -> None:
    old = load(
        tmp_path,
        f"{HEADER},units,tags\nx.a,cdu-01,hr:1,int16,degC,\nx.b,cdu-01,hr:2,int16,,\nx.c,cdu-01,hr:3,int16,,\n",
        "old.csv",
    )
    new = load(
        tmp_path,
        f"{HEADER},units,tags\n# moved rows are not changes\nx.c,cdu-01,hr:3,int16,,\nx.a,cdu-01,hr:1,float32,K,loop=1\nx.d,cdu-01,coil:1,,,\n",
        "new.csv",
    )
    d = diff_schedules(old, new)
    assert [p.point_id for p in d.added] == ["x.d"]
    assert [p.point_id for p in d.removed] == ["x.b"]
    assert len(d.changed) == 1 and d.changed[0].point_id == "x.a"
    assert d.changed[0].field_names == ("data_type", "units", "tags")
    units = d.changed[0].changes[1]
    assert (units.old, units.new) == ("degC", "K")
    assert d.unchanged == 1 and not d.is_empty
    text = format_diff(d)
    assert f"+ x.d  (cdu-01 coil:1 bool)  [{tmp_path / 'new.csv'}:5]" in text
    assert "- x.b  (cdu-01 hr:2 int16)" in text
    assert "    data_type: int16 -> float32" in text
    assert '    units: "degC" -> "K"' in text
    assert "    tags: (none) -> loop=1" in text
    assert text.splitlines()[-1] == "1 added, 1 removed, 1 changed, 1 unchanged"
    same = diff_schedules(old, old)
    assert same.is_empty and "no point changes" in format_diff(same)


# ------------------------------------------------------------------------------------ performance


def test_ten_thousand_rows_load(tmp_path: Path) -> None:
    """Prints the load time; correctness is asserted, speed is a figure (see bench/)."""
    rows = [
        f"cdu-01.p{i},cdu-01,hr:{i % 60000},float32,CDAB,0.1,,degC,point {i},,0.5,,"
        f"{'true' if i % 3 == 0 else ''},0,100,90,80,10,5,,high,1,5,0,equip=cdu;n={i}"
        for i in range(10_000)
    ]
    text = ",".join(COLUMNS) + "\n" + "\n".join(rows) + "\n"
    path = write(tmp_path, text)
    t0 = time.perf_counter()
    schedule = load_schedule([path], DEVICES)
    elapsed = time.perf_counter() - t0
    print(f"\n10,000-row schedule loaded in {elapsed * 1000:.0f} ms")
    assert len(schedule.points) == 10_000
    assert schedule.points[-1].source.line == 10_001


# ------------------------------------------------------------------ validation additions (#12)


def test_same_reading_twice_is_a_warning_naming_both_lines(tmp_path: Path) -> None:
    text = (
        HEADER + "\ncdu-01.a,cdu-01,hr:1,int16\n"
        "cdu-01.b,cdu-01,hr:1,uint16\n"  # same register, other type: a deliberate view
        "cdu-01.c,cdu-01,hr:1,int16\n"
        "b.x,ahu-1,ai:1,\nb.y,ahu-1,analog-input:1/present-value,\n"
    )
    path = write(tmp_path, text)
    schedule, issues = validate_schedule([path], DEVICES)
    assert schedule is not None and len(schedule.points) == 5
    assert [str(i) for i in issues] == [
        f'{path}:4: warning: column "address": "cdu-01.c" reads the same value as "cdu-01.a" '
        f"at {path}:2 (cdu-01 hr:1 as int16); a second point for one value is usually a "
        "copy-paste slip",
        f'{path}:6: warning: column "address": "b.y" reads the same value as "b.x" at {path}:5 '
        "(ahu-1 analog-input:1); a second point for one value is usually a copy-paste slip",
    ]
    assert all(i.severity == "warning" and not i.is_error for i in issues)
    assert load_schedule([path], DEVICES) == schedule

    strict, strict_issues = validate_schedule([path], DEVICES, strict=True)
    assert strict is None
    assert [(i.line, i.severity) for i in strict_issues] == [(4, "error"), (6, "error")]
    with pytest.raises(ScheduleError) as err:
        load_schedule([path], DEVICES, strict=True)
    assert "warning" not in str(err.value) and '"cdu-01.c" reads the same value' in str(err.value)


def test_same_reading_across_files(tmp_path: Path) -> None:
    a = write(tmp_path, HEADER + "\ncdu-01.a,cdu-01,coil:3,\n", "a.csv")
    b = write(tmp_path, HEADER + "\n\ncdu-01.b,cdu-01,coil:3,bool\n", "b.csv")
    schedule, issues = validate_schedule([a, b], DEVICES)
    assert schedule is not None
    assert [(i.file, i.line, i.column) for i in issues] == [(str(b), 3, "address")]
    assert f"at {a}:2" in issues[0].message


def test_point_id_length_limit(tmp_path: Path) -> None:
    longest = "cdu-01." + "x" * (200 - 7)
    assert len(load(tmp_path, f"{HEADER}\n{longest},cdu-01,hr:1,int16\n").points) == 1
    line, column, message = one_problem(tmp_path, f"{HEADER}\n{longest}x,cdu-01,hr:1,int16\n")
    assert (line, column) == (2, "point_id")
    assert message.endswith("is 201 characters long: a point id has at most 200")
    # the receiver takes every id the loader takes, and no longer one
    from outpost.cloud.wire import PointMeta

    assert PointMeta(point_id=longest).point_id == longest


def test_wrong_number_of_cells_does_not_hide_other_errors(tmp_path: Path) -> None:
    text = (
        HEADER + "\ncdu-01.a,cdu-09,hr:1\n"  # short, and an unknown device
        "cdu-01.b,cdu-01,hr:2,int99,extra\n"  # long, and an unknown data type
        "cdu-01.a,cdu-01,hr:3,int16\n"  # the id of the short row is still taken
    )
    found = problems(tmp_path, text)
    assert [f[:2] for f in found] == [
        (2, None),
        (2, "device"),
        (3, None),
        (3, "data_type"),
        (4, "point_id"),
    ]
    assert found[0][2] == "expected 4 cells (one per header column), found 3"
    assert sum("cells (one per header column)" in f[2] for f in found) == 2
    assert 'unknown data_type "int99"' in found[3][2]
    assert "duplicate point_id" in found[4][2]


def test_warning_formatting() -> None:
    warning = ScheduleIssue("f.csv", 4, "address", "twice", severity="warning")
    assert str(warning) == 'f.csv:4: warning: column "address": twice'
    cell = ScheduleIssue("site.xlsx", 14, "address", "bad", sheet="Points", cell="C14")
    assert str(cell) == 'site.xlsx:Points!C14: column "address": bad'
    assert str(ScheduleIssue("site.xlsx", 14, None, "bad", sheet="Points")) == (
        "site.xlsx:Points!14: bad"
    )
    assert str(ScheduleIssue("site.xlsx", 0, None, "bad", sheet="Points")) == (
        "site.xlsx:Points: bad"
    )
