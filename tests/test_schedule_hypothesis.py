"""Property tests: whatever bytes, rows or cells a schedule holds, the loader answers with a
Schedule or with located issues, never with any other exception; valid points round-trip."""

from __future__ import annotations

import csv
import io
import re
import string

import openpyxl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.point_schedules.addresses import AddressError, parse_address
from outpost.point_schedules.loader import (
    COLUMNS,
    NUMERIC_COLUMNS,
    ScheduleError,
    ScheduleIssue,
    parse_schedule,
)
from outpost.point_schedules.model import (
    AlarmPriority,
    BacnetAddress,
    ByteOrder,
    DataType,
    ModbusAddress,
    MqttAddress,
    SnmpAddress,
)

DEVICES = {"cdu-01": "modbus", "ahu-1": "bacnet", "pdu-a": "snmp", "rack": "mqtt"}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(data: bytes) -> None:
    """The loader's contract for any input: a Schedule xor located errors; nothing else."""
    schedule, issues = parse_schedule([("f.csv", data)], DEVICES)
    assert (schedule is None) == any(i.is_error for i in issues)
    physical_lines = data.count(b"\n") + data.count(b"\r") + 1
    for issue in issues:
        assert issue.file == "f.csv"
        assert 0 <= issue.line <= physical_lines
        assert issue.message
        assert str(issue).startswith("f.csv")
    if schedule is not None:
        assert schedule.points
        ids = [p.point_id for p in schedule.points]
        assert len(ids) == len(set(ids))
        assert all(p.device in DEVICES for p in schedule.points)


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_header(data: bytes) -> None:
    check(b"point_id,device,address,data_type\n" + data)


CELL_CHARS = string.ascii_letters + string.digits + ",;=.:#$[]/\"' -_+\n\r\t\x00é"
junk = st.text(alphabet=CELL_CHARS, max_size=12)
cells_by_column = {
    "point_id": st.one_of(st.sampled_from(["a.1", "a.2", "cdu-01.t", "B", ""]), junk),
    "device": st.one_of(st.sampled_from([*DEVICES, "nope", ""]), junk),
    "address": st.one_of(
        st.sampled_from(
            [
                "hr:1",
                "hr:65535",
                "hr:1.15",
                "coil:3",
                "di:70000",
                "ai:1",
                "analog-input:1/x[2]",
                "1.3.6.1",
                ".1.3",
                "a/b#$.c",
                "a/#",
                "a/#/b",
                "40001",
                "",
            ]
        ),
        junk,
    ),
    "data_type": st.sampled_from(
        ["", "bool", "int16", "float32", "float64", "bit3", "bit99", "FLOAT32", "x"]
    ),
    "byte_order": st.sampled_from(["", "ABCD", "cdab", "ZZZZ"]),
    "writable": st.sampled_from(["", "true", "no", "1", "maybe"]),
    "alarm_priority": st.sampled_from(["", "critical", "LOW", "urgent"]),
    "tags": st.one_of(st.sampled_from(["", "a=b;c", "=x", "a;a", "a b=c"]), junk),
}
number_cell = st.one_of(
    st.sampled_from(["", "0", "-1", "1e999", "nan", "1_0", "1.5", ".5", "5."]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    junk,
)


def cell_for(column: str) -> st.SearchStrategy[str]:
    return cells_by_column.get(column, number_cell)


@st.composite
def csv_documents(draw: st.DrawFn) -> bytes:
    columns = draw(
        st.lists(st.sampled_from([*COLUMNS, "bogus"]), min_size=1, max_size=10, unique=True)
    )
    if draw(st.booleans()):
        columns = [
            "point_id",
            "device",
            "address",
            *(c for c in columns if c not in ("point_id", "device", "address")),
        ]
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        row = [draw(cell_for(c)) for c in columns]
        if draw(st.integers(0, 9)) == 0:
            row = row[:-1] if draw(st.booleans()) else [*row, "extra"]
        rows.append(row)
    out = io.StringIO()
    if draw(st.booleans()):
        out.write("# comment line\n")
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(columns)
    for row in rows:
        writer.writerow(row)
    data = out.getvalue().encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data


@SETTINGS
@given(csv_documents())
def test_malformed_rows_and_cells(data: bytes) -> None:
    check(data)


MODBUS_COLUMNS = ("point_id", "device", "address", "data_type", "byte_order", "writable")


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a.1", "a.2", "a.3"]),
            st.sampled_from(["cdu-01", "ahu-1", "x"]),
            st.sampled_from(
                [
                    "hr:1",
                    "hr:65535",
                    "hr:65534",
                    "ir:2.15",
                    "coil:3",
                    "di:4",
                    "coil:1.1",
                    "hr:1.16",
                    "ai:1",
                    "1.3.6",
                    "a/b",
                    "hr:x",
                ]
            ),
            st.sampled_from(
                ["", "bool", "int16", "uint32", "float64", "bit3", "bit15", "bit16", "x", "FLOAT32"]
            ),
            st.sampled_from(["", "ABCD", "dcba", "Q"]),
            st.sampled_from(["", "true", "no", "x"]),
        ),
        min_size=1,
        max_size=5,
    ),
    st.permutations(range(len(MODBUS_COLUMNS))),
)
def test_modbus_cell_combinations(rows: list[tuple[str, ...]], order: list[int]) -> None:
    """Dense combinations of the cells that interact (address, data_type, byte_order,
    writable), in any column order."""
    lines = [",".join(MODBUS_COLUMNS[i] for i in order)]
    lines += [",".join(row[i] for i in order) for row in rows]
    check(("\n".join(lines) + "\n").encode())


@SETTINGS
@given(csv_documents(), st.integers(0, 10_000), st.integers(0, 255))
def test_corrupted_bytes(data: bytes, position: int, byte: int) -> None:
    if data:
        i = position % len(data)
        data = data[:i] + bytes([byte]) + data[i + 1 :]
    check(data)


@SETTINGS
@given(st.sampled_from(["modbus", "bacnet", "snmp", "mqtt", "x"]), st.text(max_size=40))
def test_parse_address_raises_only_address_error(protocol: str, text: str) -> None:
    try:
        address = parse_address(protocol, text)
    except AddressError as exc:
        assert str(exc)
        return
    assert isinstance(address, ModbusAddress | BacnetAddress | SnmpAddress | MqttAddress)
    # The canonical form parses back to the same address.
    assert parse_address(protocol, str(address)) == address


# ------------------------------------------------------------------------------- round trip

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False).map(lambda v: round(v, 3))


@st.composite
def valid_points(draw: st.DrawFn) -> dict[str, str]:
    kind = draw(st.sampled_from(["register", "bit", "coil", "bacnet", "snmp", "mqtt"]))
    row: dict[str, str] = {}
    if kind == "register":
        dtype = draw(st.sampled_from([t for t in DataType]))
        reg = draw(st.integers(0, 65536 - dtype.registers))
        row.update(
            device="cdu-01",
            address=f"{draw(st.sampled_from(['hr', 'ir']))}:{reg}",
            data_type=dtype.value,
        )
        if dtype.registers > 1:
            row["byte_order"] = draw(st.sampled_from(["", *(b.value for b in ByteOrder)]))
    elif kind == "bit":
        row.update(
            device="cdu-01",
            address=f"hr:{draw(st.integers(0, 65535))}.{draw(st.integers(0, 15))}",
            data_type=draw(st.sampled_from(["", "bool"])),
        )
    elif kind == "coil":
        row.update(device="cdu-01", address=f"coil:{draw(st.integers(0, 65535))}")
        row["writable"] = draw(st.sampled_from(["", "true", "false"]))
    elif kind == "bacnet":
        row.update(device="ahu-1", address=f"analog-value:{draw(st.integers(0, 4194302))}")
        row["writable"] = draw(st.sampled_from(["", "yes", "no"]))
    elif kind == "snmp":
        arcs = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8))
        row.update(device="pdu-a", address="1.3." + ".".join(map(str, arcs)))
    else:
        row.update(device="rack", address=f"site/r{draw(st.integers(0, 99))}#$.v")
    lo, hi = sorted([draw(finite), draw(finite)])
    if draw(st.booleans()):
        row.update(min=repr(lo), max=repr(hi))
    limits = sorted({draw(finite) for _ in range(4)}, reverse=True)
    for name, value in zip(("alarm_hh", "alarm_h", "alarm_l", "alarm_ll"), limits, strict=False):
        if draw(st.booleans()):
            row[name] = repr(value)
    row["scale"] = draw(st.sampled_from(["", "0.1", "-2", "1e3"]))
    row["alarm_priority"] = draw(st.sampled_from(["", *(p.value for p in AlarmPriority)]))
    row["description"] = draw(st.text(max_size=20).map(str.strip))
    row["tags"] = draw(st.sampled_from(["", "equip=cdu;temp", "a=1;b=2;marker"]))
    return row


@SETTINGS
@given(st.lists(valid_points(), min_size=1, max_size=8))
def test_valid_points_round_trip(rows: list[dict[str, str]]) -> None:
    for i, row in enumerate(rows):
        row["point_id"] = f"p.{i}"
    columns = sorted({c for row in rows for c in row}, key=COLUMNS.index)
    out = io.StringIO()
    # "\r\n" makes csv.writer quote cells holding a bare "\r" too, as spreadsheets do.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    data = out.getvalue().encode()
    # Only a NUL inside a description may be refused; anything else rejected here is a bug.
    schedule, issues = parse_schedule([("f.csv", data)], DEVICES)
    errors = [i for i in issues if i.is_error]
    assert errors == [] or "NUL" in str(errors[0]), [str(i) for i in errors]
    # The only warning: random rows may read one address twice.
    assert all(i.is_error or "reads the same value" in i.message for i in issues)
    if schedule is None:
        return
    assert [p.point_id for p in schedule.points] == [r["point_id"] for r in rows]
    for p, row in zip(schedule.points, rows, strict=True):
        assert p.device == row["device"]
        assert str(p.address) == parse_address(DEVICES[p.device], row["address"]).__str__()
        for name in ("min", "max", "alarm_hh", "alarm_h", "alarm_l", "alarm_ll"):
            expected = float(row[name]) if row.get(name) else None
            assert getattr(p, name) == expected
        assert p.description == row["description"]
        assert p.writable is (row.get("writable", "") in ("true", "yes"))


def test_load_schedule_raises_schedule_error_only(tmp_path) -> None:
    """One concrete pass of the file-based entry point over a corrupted document."""
    path = tmp_path / "f.csv"
    path.write_bytes(b'point_id,device\n"a,\xff\n')
    from outpost.point_schedules.loader import load_schedule

    try:
        load_schedule([path], DEVICES)
    except ScheduleError as exc:
        assert exc.issues and exc.issues[0].line >= 1
    else:
        raise AssertionError("a corrupted file must not load")


# Characters an .xlsx cell cannot hold (XML 1.0), and "\r", which XML reads back as "\n".
_NOT_IN_XLSX = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\r\ud800-\udfff\ufffe\uffff]")


@settings(SETTINGS, max_examples=60)
@given(st.lists(valid_points(), min_size=1, max_size=8), st.booleans())
def test_workbook_loads_as_its_csv(rows: list[dict[str, str]], typed: bool) -> None:
    """The same rows as CSV and as a workbook (text cells, or numbers as numbers) load the
    same points."""
    for i, row in enumerate(rows):
        row["point_id"] = f"p.{i}"
        row["description"] = _NOT_IN_XLSX.sub("", row["description"]).strip()
    columns = sorted({c for row in rows for c in row}, key=COLUMNS.index)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
        cells: list[str | float | None] = []
        for c in columns:
            text = row.get(c, "")
            if typed and c in NUMERIC_COLUMNS and text:
                cells.append(float(text))
            else:
                cells.append(text or None)
        sheet.append(cells)
        for cell in sheet[sheet.max_row]:
            # openpyxl makes any text starting with "=" a formula (with no computed value):
            # the cell must hold the text itself, as a cell formatted as text does.
            if isinstance(cell.value, str) and cell.value.startswith("="):
                cell.data_type = "s"
    xlsx = io.BytesIO()
    book.save(xlsx)
    from_csv, csv_issues = parse_schedule([("f.csv", out.getvalue().encode())], DEVICES)
    from_xlsx, xlsx_issues = parse_schedule([("f.xlsx", xlsx.getvalue())], DEVICES)
    assert from_csv is not None and from_xlsx is not None, [str(i) for i in xlsx_issues]
    assert from_xlsx.points == from_csv.points

    def where(issues: list[ScheduleIssue]) -> list[tuple[int, str | None, str]]:
        return [(i.line, i.column, i.severity) for i in issues]

    # A CSV issue names the physical line where its record starts, and a quoted cell holding
    # a line break makes a record span several lines; a sheet numbers its rows one by one.
    row_at_line, line = {}, 2
    for number, row in enumerate(rows, 2):
        row_at_line[line] = number
        line += 1 + sum(v.count("\n") for v in row.values())
    in_rows = [(row_at_line[line], c, s) for line, c, s in where(csv_issues)]
    assert where(xlsx_issues) == in_rows  # warnings only: one address read twice
