"""Spreadsheets as schedules: .xlsx workbooks through the same loader, validation and diff as CSV,
errors by cell, sheet choice, and the workbook template. Workbooks are written with openpyxl."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import openpyxl
import pytest

from outpost.point_schedules.diff import diff_schedules, format_diff
from outpost.point_schedules.loader import (
    COLUMNS,
    ScheduleError,
    is_workbook,
    load_schedule,
    parse_schedule,
    validate_schedule,
    workbook_as_csv,
)
from outpost.point_schedules.model import SourceRef
from outpost.point_schedules.template import DEFAULT_DEVICES, template, template_xlsx
from tests.agent_process import cli, start_agent, write_config
from tests.modbus_server import start_server
from tests.uplink_harness import wait_for

DEVICES = {"cdu-01": "modbus", "ahu-1": "bacnet", "pdu-a": "snmp", "rack": "mqtt"}
HEADER = ["point_id", "device", "address", "data_type"]

Cell = str | int | float | bool | None


def workbook(
    path: Path, sheets: dict[str, Sequence[Sequence[Cell]]], *, at: dict[str, str] | None = None
) -> Path:
    """Write ``sheets`` (name -> rows) in order; ``at`` sets single cells of the first sheet."""
    book = openpyxl.Workbook()
    first = book.active
    assert first is not None
    book.remove(first)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(list(row))
    for ref, value in (at or {}).items():
        book.worksheets[0][ref] = value
    book.save(path)
    return path


def csv_text(rows: Sequence[Sequence[Cell]]) -> str:
    def text(v: Cell) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        s = str(v)
        return f'"{s}"' if "," in s else s

    width = len(rows[0])
    lines = []
    for row in rows:
        cells = [text(v) for v in row]
        if cells and not cells[0].startswith("#"):
            cells += [""] * (width - len(cells))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


FULL_ROWS: list[list[Cell]] = [
    list(COLUMNS),
    [
        "cdu-01.supply_temp",
        "cdu-01",
        "hr:40",
        "float32",
        "CDAB",
        0.1,
        -5,
        "degC",
        "Supply temp, secondary",
        2.5,
        0.2,
        600,
        True,
        0,
        90,
        80,
        70,
        10,
        5,
        None,
        "high",
        0.5,
        30,
        10,
        "equip=cdu;temp",
    ],
    ["# a comment row"],
    [],
    ["cdu-01.leak", "cdu-01", "di:1", None, None, None, None, None, "Leak"]
    + [None] * 10
    + [1, "critical"],
    ["b.sat", "ahu-1", "analog-input:1", None, None, 1, 0, "degC", "SAT"],
    ["pdu.uptime", "pdu-a", "1.3.6.1.2.1.1.3.0", None, None, 0.01, None, "s"],
    ["rack.t", "rack", "site/rack-3/env#$.temp", None, None, None, None, "degC"],
]


def test_workbook_loads_the_same_points_as_its_csv(tmp_path: Path) -> None:
    xlsx = workbook(tmp_path / "site.xlsx", {"Points": FULL_ROWS})
    csv = tmp_path / "site.csv"
    csv.write_text(csv_text(FULL_ROWS), encoding="utf-8")
    from_xlsx = load_schedule([xlsx], DEVICES)
    from_csv = load_schedule([csv], DEVICES)
    assert from_xlsx.points == from_csv.points
    assert len(from_xlsx.points) == 5
    p = from_xlsx.by_id()["cdu-01.supply_temp"]
    assert (p.scale, p.offset, p.heartbeat, p.writable, p.alarm_delay) == (0.1, -5, 600, True, 30)
    assert from_xlsx.by_id()["cdu-01.leak"].alarm_state == 1.0
    # rows are spreadsheet rows: the comment and the empty row count
    assert str(from_xlsx.by_id()["cdu-01.leak"].source) == f"{xlsx}:Points!5"
    assert from_xlsx.files == (str(xlsx),)
    assert from_xlsx.version.startswith("sha256:")


def test_errors_name_sheet_and_cell(tmp_path: Path) -> None:
    rows: list[list[Cell]] = [HEADER] + [
        [f"cdu-01.r{i}", "cdu-01", f"hr:{i}", "int16"] for i in range(2, 14)
    ]
    rows.append(["cdu-01.bad", "cdu-01", "hr:x", "int16"])  # row 14
    rows.append(["cdu-01.worse", "cdu-09", "hr:1", "int99"])  # row 15
    path = workbook(tmp_path / "site.xlsx", {"Points": rows})
    schedule, issues = validate_schedule([path], DEVICES)
    assert schedule is None
    text = [str(i) for i in issues]
    assert text[0].startswith(f'{path}:Points!C14: column "address": modbus address "hr:x": ')
    assert text[1].startswith(f'{path}:Points!B15: column "device": unknown device "cdu-09"')
    assert text[2].startswith(f'{path}:Points!D15: column "data_type": unknown data_type "int99"')
    assert len(issues) == 3
    assert [(i.sheet, i.cell, i.line) for i in issues] == [
        ("Points", "C14", 14),
        ("Points", "B15", 15),
        ("Points", "D15", 15),
    ]


def test_header_problems_name_their_cell(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "h.xlsx",
        {"S": [["point_id", "device", "adress", "address"], ["b.x", "ahu-1", "", "ai:1"]]},
    )
    _, issues = validate_schedule([path], DEVICES)
    assert [str(i) for i in issues] == [
        f'{path}:S!C1: column "adress": unknown column (did you mean "address"?)'
    ]


def test_sheet_choice(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "two.xlsx",
        {
            "Modbus": [HEADER, ["cdu-01.a", "cdu-01", "hr:1", "int16"]],
            "BACnet": [HEADER, ["b.x", "ahu-1", "ai:1"]],
        },
    )
    assert [p.point_id for p in load_schedule([path], DEVICES).points] == ["cdu-01.a"]
    second = load_schedule([path], DEVICES, sheet="BACnet")
    assert [p.point_id for p in second.points] == ["b.x"]
    assert str(second.points[0].source) == f"{path}:BACnet!2"
    with pytest.raises(ScheduleError) as err:
        load_schedule([path], DEVICES, sheet="Points")
    assert str(err.value) == f'{path}: has no sheet "Points": its sheets are "Modbus", "BACnet"'


def test_cells_right_of_the_header_and_trailing_blanks(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "w.xlsx",
        {"P": [HEADER, ["cdu-01.a", "cdu-01", "hr:1"], ["cdu-01.b", "cdu-01", "hr:2", "int16"]]},
        # a stray value far right in row 3, and formatting-only width in row 1
        at={"G3": "oops", "F1": " "},
    )
    _, issues = validate_schedule([path], DEVICES)
    assert [str(i) for i in issues] == [
        f'{path}:P!D2: column "data_type": required for modbus register points: one of '
        "bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, bitN",
        f"{path}:P!3: cells right of the last header column hold values (G3): "
        "give the column a header or clear them",
    ]


def test_same_reading_warning_and_strict_in_a_workbook(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "d.xlsx",
        {
            "Points": [
                HEADER,
                ["cdu-01.a", "cdu-01", "hr:1", "int16"],
                ["cdu-01.b", "cdu-01", "hr:1", "int16"],
            ]
        },
    )
    schedule, issues = validate_schedule([path], DEVICES)
    assert schedule is not None
    assert [str(i) for i in issues] == [
        f'{path}:Points!C3: warning: column "address": "cdu-01.b" reads the same value as '
        f'"cdu-01.a" at {path}:Points!2 (cdu-01 hr:1 as int16); a second point for one value '
        "is usually a copy-paste slip"
    ]
    strict, strict_issues = validate_schedule([path], DEVICES, strict=True)
    assert strict is None and [i.severity for i in strict_issues] == ["error"]


def test_other_zip_files_are_named(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("content.xml", "<office:document-content/>")
    path = tmp_path / "site.ods"
    path.write_bytes(buf.getvalue())
    _, issues = validate_schedule([path], DEVICES)
    assert len(issues) == 1 and issues[0].line == 0
    assert "not an .xlsx workbook" in issues[0].message
    assert "CSV UTF-8" in issues[0].message


def test_diff_between_csv_and_workbook(tmp_path: Path) -> None:
    csv = tmp_path / "old.csv"
    csv.write_text(csv_text(FULL_ROWS), encoding="utf-8")
    rows = [list(r) for r in FULL_ROWS]
    rows[1][COLUMNS.index("alarm_h")] = 75
    rows.append(["cdu-01.new", "cdu-01", "hr:100", "uint16"])
    xlsx = workbook(tmp_path / "new.xlsx", {"Points": rows})
    old = load_schedule([csv], DEVICES)
    assert diff_schedules(old, load_schedule([csv], DEVICES)).is_empty
    diff = diff_schedules(old, load_schedule([xlsx], DEVICES))
    assert [p.point_id for p in diff.added] == ["cdu-01.new"]
    assert [c.point_id for c in diff.changed] == ["cdu-01.supply_temp"]
    text = format_diff(diff)
    assert f"[{xlsx}:Points!9]" in text and "alarm_h" in text


@pytest.mark.parametrize("protocol", sorted(DEFAULT_DEVICES))
def test_template_workbook(tmp_path: Path, protocol: str) -> None:
    device = DEFAULT_DEVICES[protocol]
    path = tmp_path / f"{protocol}.xlsx"
    path.write_bytes(template_xlsx(protocol))
    from_xlsx = load_schedule([path], {device: protocol})
    csv = tmp_path / f"{protocol}.csv"
    csv.write_text(template(protocol), encoding="utf-8")
    assert from_xlsx.points == load_schedule([csv], {device: protocol}).points

    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Points", "Notes"]
    points = book["Points"]
    header = [c.value for c in points[1]]
    assert header[:3] == ["point_id", "device", "address"] and set(header) <= set(COLUMNS)
    lists = {}
    for dv in points.data_validations.dataValidation:
        letter = str(dv.sqref).split(":")[0].rstrip("0123456789")
        column = header[openpyxl.utils.column_index_from_string(letter) - 1]
        lists[column] = (dv.formula1, dv.errorStyle)
    assert lists["data_type"][0] == '"bool,int16,uint16,int32,uint32,int64,uint64,float32,float64"'
    assert lists["data_type"][1] == "warning"  # bit0..bit15 are valid too
    assert lists["byte_order"] == ('"ABCD,CDAB,BADC,DCBA"', "stop")
    assert lists["alarm_priority"] == ('"critical,high,medium,low"', "stop")
    assert lists["writable"] == ('"true,false"', "stop")
    notes = "\n".join(str(r[0].value or "") for r in book["Notes"].iter_rows())
    assert "alarm_priority" in notes and "outpost schedule validate" in notes
    assert "Points!C14" in notes


def test_template_workbook_under_another_device(tmp_path: Path) -> None:
    path = tmp_path / "x.xlsx"
    path.write_bytes(template_xlsx("bacnet", "ahu-9"))
    schedule = load_schedule([path], {"ahu-9": "bacnet"})
    assert {p.device for p in schedule.points} == {"ahu-9"}
    with pytest.raises(ValueError, match="unknown protocol"):
        template_xlsx("opcua")


def test_cli_validates_a_workbook(tmp_path: Path) -> None:
    """The load path the technician uses: `outpost schedule validate site.xlsx -c agent.toml`."""
    path = tmp_path / "site.xlsx"
    path.write_bytes(template_xlsx("modbus"))
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nid = "gw-1"\n\n[devices.cdu-01]\nprotocol = "modbus"\nhost = "127.0.0.1"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "NO_COLOR": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "outpost.agent",
            "schedule",
            "validate",
            str(path),
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "cdu-01 (modbus): 7 points" in run.stdout
    bad = workbook(tmp_path / "bad.xlsx", {"Points": [HEADER, ["cdu-01.a", "cdu-01", "hr:x"]]})
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "outpost.agent",
            "schedule",
            "validate",
            str(bad),
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert f'{bad}:Points!C2: column "address"' in run.stderr


def test_workbook_as_csv_loads_the_same_points(tmp_path: Path) -> None:
    """How tools that move schedules as text (``schedule load``) carry a workbook."""
    path = workbook(tmp_path / "site.xlsx", {"Notes": [["read me"]], "Points": FULL_ROWS})
    text = workbook_as_csv(str(path), path.read_bytes(), sheet="Points")
    assert is_workbook(path.read_bytes()) and not is_workbook(text.encode())
    from_text, issues = parse_schedule([("site.csv", text.encode())], DEVICES)
    assert from_text is not None and issues == []
    assert from_text.points == load_schedule([path], DEVICES, sheet="Points").points
    # one line per row: the leak point keeps its row number
    assert from_text.by_id()["cdu-01.leak"].source == SourceRef("site.csv", 5)
    with pytest.raises(ScheduleError) as err:
        workbook_as_csv(str(path), path.read_bytes(), sheet="Nope")
    assert str(err.value) == f'{path}: has no sheet "Nope": its sheets are "Notes", "Points"'
    with pytest.raises(ScheduleError, match=r"not an \.xlsx workbook"):
        workbook_as_csv("x.xlsx", b"PK\x03\x04junk")


def outpost(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outpost.agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=cwd,
    )


def test_cli_template_xlsx_sheet_and_strict(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nid = "gw-1"\n\n[devices.cdu-01]\nprotocol = "modbus"\nhost = "127.0.0.1"\n'
        '\n[devices.ahu-1]\nprotocol = "bacnet"\naddress = "127.0.0.1:47809"\ndevice_instance = 1001\n',
        encoding="utf-8",
    )
    made = outpost("schedule", "template", "--format", "xlsx", "-o", "t.xlsx", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert openpyxl.load_workbook(tmp_path / "t.xlsx").sheetnames == ["Points", "Notes"]
    piped = subprocess.run(  # stdout is a pipe here: the workbook goes to it
        [
            sys.executable,
            "-m",
            "outpost.agent",
            "schedule",
            "template",
            "-p",
            "bacnet",
            "-f",
            "xlsx",
        ],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert piped.returncode == 0, piped.stderr
    (tmp_path / "piped.xlsx").write_bytes(piped.stdout)
    assert len(load_schedule([tmp_path / "piped.xlsx"], {"ahu-1": "bacnet"}).points) == 5
    bad_format = outpost("schedule", "template", "--format", "ods", cwd=tmp_path)
    assert bad_format.returncode == 2 and "unknown format" in bad_format.stderr

    path = workbook(
        tmp_path / "two.xlsx",
        {
            "Modbus": [
                HEADER,
                ["cdu-01.a", "cdu-01", "hr:1", "int16"],
                ["cdu-01.b", "cdu-01", "hr:1", "int16"],
            ],
            "BACnet": [HEADER, ["b.x", "ahu-1", "ai:1"]],
        },
    )
    loose = outpost("schedule", "validate", str(path), "-c", str(config), cwd=tmp_path)
    assert loose.returncode == 0, loose.stderr
    assert f'{path}:Modbus!C3: warning: column "address": "cdu-01.b"' in loose.stderr
    assert loose.stdout.rstrip().endswith(", 1 warning")
    strict = outpost("schedule", "validate", str(path), "--strict", "-c", str(config), cwd=tmp_path)
    assert strict.returncode == 1
    assert f'{path}:Modbus!C3: column "address": "cdu-01.b"' in strict.stderr
    sheet = outpost(
        "schedule",
        "validate",
        str(path),
        "--sheet",
        "BACnet",
        "--json",
        "-c",
        str(config),
        cwd=tmp_path,
    )
    assert sheet.returncode == 0, sheet.stderr
    doc = json.loads(sheet.stdout)
    assert doc["valid"] is True and doc["points"] == 1 and doc["warnings"] == 0
    missing = outpost(
        "schedule",
        "validate",
        str(path),
        "--sheet",
        "Nope",
        "--json",
        "-c",
        str(config),
        cwd=tmp_path,
    )
    assert missing.returncode == 1
    issue = json.loads(missing.stdout)["issues"][0]
    assert "severity" not in issue and 'has no sheet "Nope"' in issue["message"]
    warned = outpost("schedule", "validate", str(path), "--json", "-c", str(config), cwd=tmp_path)
    assert warned.returncode == 0, warned.stderr
    doc = json.loads(warned.stdout)
    assert doc["valid"] is True and doc["warnings"] == 1
    (issue,) = doc["issues"]
    assert (issue["severity"], issue["sheet"], issue["cell"], issue["line"]) == (
        "warning",
        "Modbus",
        "C3",
        3,
    )
    diff = outpost(
        "schedule",
        "diff",
        str(path),
        "--sheet",
        "BACnet",
        "-a",
        str(tmp_path / "t.xlsx"),
        "-c",
        str(config),
        cwd=tmp_path,
    )
    assert diff.returncode == 1, diff.stderr  # different: like diff(1)
    assert "+ b.x" in diff.stdout and f"[{path}:BACnet!2]" in diff.stdout


async def test_cli_loads_a_workbook_into_the_running_agent(tmp_path: Path) -> None:
    """`outpost schedule load site.xlsx --sheet S`: validated by cell, sent as CSV, applied live."""
    server = await start_server()
    await server.set("hr", 0, [235, 778])
    good = "point_id,device,address,data_type,scale\nplc.temp,plc,hr:0,int16,0.1\n"
    cfg = write_config(
        tmp_path, {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": server.port}}, good
    )
    rows: list[list[Cell]] = [
        ["point_id", "device", "address", "data_type", "scale"],
        ["plc.temp", "plc", "hr:0", "int16", 0.1],
        ["plc.more", "plc", "hr:1", "uint16", None],
    ]
    path = workbook(tmp_path / "site.xlsx", {"Notes": [["see Points"]], "Points": rows})
    bad = workbook(tmp_path / "bad.xlsx", {"Points": [*rows, ["plc.x", "plc", "hr:y", "int16"]]})
    agent = start_agent(cfg)
    try:
        await asyncio.to_thread(agent.wait_ready)
        refused = await asyncio.to_thread(cli, cfg, "schedule", "load", str(bad), "--yes")
        assert refused.returncode == 1
        assert f'{bad}:Points!C4: column "address"' in refused.stderr
        loaded = await asyncio.to_thread(
            cli, cfg, "schedule", "load", str(path), "--sheet", "Points", "--yes"
        )
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        assert "+ plc.more" in loaded.stdout

        async def more_read() -> bool:
            r = await asyncio.to_thread(cli, cfg, "read", "plc.more", "--json")
            return r.returncode == 0 and json.loads(r.stdout).get("value") == 778.0

        await wait_for(more_read, 20, "plc.more read by the running agent")
    finally:
        code = agent.stop()
        await server.stop()
    assert code == 0, agent.log()
    stored = list((tmp_path / "var" / "schedules" / "pushed").rglob("*.csv"))
    assert [p.name for p in stored] == ["site.xlsx.csv"]
