"""Commented starter schedules, one per protocol (``outpost schedule template``).

Each template is a valid schedule for a device of that protocol named as in
``agent.example.toml`` (``cdu-01``, ``ahu-1``, ``pdu-a``, ``rack-sensors``), or under the
device id passed in. As CSV (:func:`template`), lines starting with ``#`` are comments the
loader skips; as a workbook (:func:`template_xlsx`), the points are on the first sheet with
drop-down lists for the enumerated columns, and the help is on a second sheet, "Notes".
"""

from __future__ import annotations

import io

from outpost.point_schedules.addresses import PROTOCOLS
from outpost.point_schedules.loader import COLUMNS, NUMERIC_COLUMNS
from outpost.point_schedules.model import AlarmPriority, ByteOrder, DataType

__all__ = ["DEFAULT_DEVICES", "TEMPLATE_FORMATS", "template", "template_xlsx"]

TEMPLATE_FORMATS = ("csv", "xlsx")

DEFAULT_DEVICES: dict[str, str] = {
    "modbus": "cdu-01",
    "bacnet": "ahu-1",
    "snmp": "pdu-a",
    "mqtt": "rack-sensors",
}

_COMMON_HELP = """\
# Outpost point schedule: one row per point. Save as CSV, UTF-8, comma-separated.
# Lines starting with # and blank lines are comments. An empty cell means "use the default".
# Check it with:  outpost schedule validate THIS.csv -c agent.toml
#
# Columns (header names exact, any order; only point_id, device, address are required):
#   point_id        unique id: lower-case letters, digits, _ . -  (e.g. cdu-01.supply_temp)
#   device          a device id from [devices.*] in the agent config
#   address         protocol address, see below
#   data_type       bool int16 uint16 int32 uint32 int64 uint64 float32 float64 (bitN)
#   byte_order      ABCD (default) CDAB BADC DCBA, multi-register Modbus values only
#   scale, offset   engineering value = raw * scale + offset (defaults 1 and 0)
#   units, description   free text
#   poll_interval   seconds (default: the device's poll_interval)
#   deadband        store a reading only when it moved more than this (default 0)
#   heartbeat       store at least every N seconds even without change (default 300)
#   writable        true/false (default false)
#   min, max        plausible range: writes outside are refused, reads get uncertain quality
#   alarm_hh, alarm_h, alarm_l, alarm_ll   analog limits, alarm_hh >= alarm_h > alarm_l >= alarm_ll
#   alarm_state     discrete alarm: the abnormal value (e.g. 1 for a leak sensor)
#   alarm_priority  critical high medium low (default medium; hh/ll one step above)
#   alarm_deadband  hysteresis for return to normal
#   alarm_delay, alarm_clear_delay   seconds a condition must hold before (de)activation
#   tags            name=value or marker names separated by ;  (equip=cdu;loop=1;temp)
#
"""

_ADDRESS_HELP = {
    "modbus": """\
# Modbus addresses are 0-based wire addresses (Modicon 40001 = hr:0):
#   hr:40  holding register    ir:0  input register    coil:5  coil    di:3  discrete input
#   hr:40.3  bit 3 (0..15) of holding register 40, data_type bool (or empty)
# data_type is required for hr/ir registers; coils, discrete inputs and bits are bool.
# 32/64-bit types take 2/4 consecutive registers; set byte_order if the device swaps words.
""",
    "bacnet": """\
# BACnet addresses: OBJECT-TYPE:INSTANCE[/PROPERTY][[INDEX]], property default present-value:
#   analog-input:1   analog-value:3/present-value   binary-output:2   multi-state-value:4
#   device:1001/object-list[2]   (abbreviations ai ao av bi bo bv msi mso msv are accepted)
# data_type is optional: values arrive typed and are stored as numbers.
""",
    "snmp": """\
# SNMP addresses are numeric OIDs (MIB names are not resolved):
#   1.3.6.1.2.1.1.3.0 (sysUpTime)   1.3.6.1.2.1.2.2.1.10.1 (ifInOctets of interface 1)
# Counters are stored as read; use scale to convert units (e.g. centiseconds to seconds).
""",
    "mqtt": """\
# MQTT addresses: TOPIC-FILTER, optionally followed by #$ and a JSON path into the payload:
#   site/rack-3/env#$.temp   site/rack-3/power#$.phases[0].kw   site/rack-3/door (plain number)
# The payload (or the value the JSON path selects) should hold a number.
""",
}

# The template shows every column but the two rarely needed on day one.
_USED = tuple(c for c in COLUMNS if c not in ("alarm_deadband", "alarm_clear_delay"))

# Rows as {column: value}; "{d}" is replaced by the device id.
_ROWS: dict[str, list[dict[str, str]]] = {
    "modbus": [
        {
            "point_id": "{d}.supply_temp",
            "address": "hr:0",
            "data_type": "int16",
            "scale": "0.1",
            "units": "degC",
            "description": "Secondary supply temperature",
            "deadband": "0.2",
            "min": "0",
            "max": "80",
            "alarm_hh": "45",
            "alarm_h": "40",
            "alarm_l": "12",
            "alarm_priority": "high",
            "alarm_delay": "30",
            "tags": "equip=cdu;loop=secondary;supply;temp",
        },
        {
            "point_id": "{d}.flow",
            "address": "hr:2",
            "data_type": "float32",
            "byte_order": "ABCD",
            "units": "l/min",
            "description": "Secondary flow",
            "deadband": "1",
            "alarm_l": "20",
            "tags": "equip=cdu;flow",
        },
        {
            "point_id": "{d}.energy",
            "address": "ir:10",
            "data_type": "uint32",
            "byte_order": "CDAB",
            "scale": "0.01",
            "units": "kWh",
            "heartbeat": "900",
            "description": "Energy meter (word-swapped)",
        },
        {
            "point_id": "{d}.setpoint",
            "address": "hr:20",
            "data_type": "int16",
            "scale": "0.1",
            "units": "degC",
            "writable": "true",
            "min": "15",
            "max": "35",
            "description": "Supply temperature setpoint",
        },
        {
            "point_id": "{d}.pump_run",
            "address": "coil:0",
            "writable": "true",
            "description": "Pump run command",
            "tags": "equip=cdu;pump;cmd",
        },
        {
            "point_id": "{d}.leak",
            "address": "di:1",
            "alarm_state": "1",
            "alarm_priority": "critical",
            "description": "Leak detected",
        },
        {
            "point_id": "{d}.fault",
            "address": "hr:30.3",
            "data_type": "bool",
            "alarm_state": "1",
            "description": "Unit fault (status word bit 3)",
        },
    ],
    "bacnet": [
        {
            "point_id": "{d}.supply_air_temp",
            "address": "analog-input:1",
            "units": "degC",
            "deadband": "0.2",
            "alarm_h": "28",
            "alarm_l": "12",
            "alarm_delay": "60",
            "description": "Supply air temperature",
            "tags": "equip=ahu;air;supply;temp",
        },
        {
            "point_id": "{d}.supply_air_sp",
            "address": "analog-value:1/present-value",
            "units": "degC",
            "writable": "true",
            "min": "14",
            "max": "26",
            "description": "Supply air setpoint",
        },
        {
            "point_id": "{d}.fan_status",
            "address": "binary-input:1",
            "description": "Supply fan running",
        },
        {
            "point_id": "{d}.fan_cmd",
            "address": "binary-output:1",
            "writable": "true",
            "description": "Supply fan command",
        },
        {
            "point_id": "{d}.mode",
            "address": "multi-state-value:1",
            "description": "Operating mode (1 off, 2 auto, 3 manual)",
        },
    ],
    "snmp": [
        {
            "point_id": "{d}.uptime",
            "address": "1.3.6.1.2.1.1.3.0",
            "scale": "0.01",
            "units": "s",
            "heartbeat": "600",
            "description": "sysUpTime",
        },
        {
            "point_id": "{d}.if1_in_octets",
            "address": "1.3.6.1.2.1.2.2.1.10.1",
            "units": "B",
            "description": "ifInOctets, interface 1",
        },
        {
            "point_id": "{d}.if1_oper_status",
            "address": "1.3.6.1.2.1.2.2.1.8.1",
            "alarm_state": "2",
            "alarm_priority": "high",
            "description": "ifOperStatus, interface 1 (2 = down)",
        },
    ],
    "mqtt": [
        {
            "point_id": "{d}.rack3_temp",
            "address": "site/rack-3/env#$.temp",
            "units": "degC",
            "deadband": "0.2",
            "alarm_hh": "35",
            "alarm_h": "30",
            "description": "Rack 3 inlet temperature",
            "tags": "equip=rack;rack=3;temp",
        },
        {
            "point_id": "{d}.rack3_humidity",
            "address": "site/rack-3/env#$.rh",
            "units": "%RH",
            "alarm_h": "70",
            "alarm_l": "20",
            "description": "Rack 3 humidity",
        },
        {
            "point_id": "{d}.rack3_kw_l1",
            "address": "site/rack-3/power#$.phases[0].kw",
            "units": "kW",
            "description": "Rack 3 power, phase L1",
        },
        {
            "point_id": "{d}.rack3_door",
            "address": "site/rack-3/door",
            "alarm_state": "1",
            "alarm_priority": "low",
            "description": "Rack 3 door open",
        },
    ],
}


def _cell(text: str) -> str:
    if any(c in text for c in ',"\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def _rows(protocol: str, device: str | None) -> tuple[str, list[dict[str, str]]]:
    if protocol not in _ROWS:
        raise ValueError(f'unknown protocol "{protocol}": expected one of {", ".join(PROTOCOLS)}')
    device = device or DEFAULT_DEVICES[protocol]
    rows = []
    for row in _ROWS[protocol]:
        values = {k: v.replace("{d}", device) for k, v in row.items()}
        values["device"] = device
        rows.append(values)
    return device, rows


def template(protocol: str, device: str | None = None) -> str:
    """A commented example schedule for ``protocol`` that validates as it is."""
    device, rows = _rows(protocol, device)
    lines = [
        _COMMON_HELP
        + _ADDRESS_HELP[protocol]
        + f'# Example rows for the {protocol} device "{device}":',
        ",".join(_USED),
    ]
    for values in rows:
        lines.append(",".join(_cell(values.get(col, "")) for col in _USED))
    return "\n".join(lines) + "\n"


# Drop-down lists: (column, allowed values, whether other text is refused). data_type only
# warns, because bit0..bit15 are valid too and do not fit in a list.
_CHOICES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("data_type", tuple(t.value for t in DataType), False),
    ("byte_order", tuple(b.value for b in ByteOrder), True),
    ("alarm_priority", tuple(p.value for p in AlarmPriority), True),
    ("writable", ("true", "false"), True),
)
_VALIDATED_ROWS = 5000  # rows of the Points sheet that get the drop-down lists


def _notes(protocol: str) -> list[str]:
    """The CSV template's help, reworded for a workbook."""
    lines = [
        "Outpost point schedule (workbook): one row per point on the first sheet, Points.",
        'Rows starting with # and empty rows are skipped. An empty cell means "use the default".',
        "Check it with:  outpost schedule validate THIS.xlsx -c agent.toml "
        "(or --sheet NAME for another sheet)",
        'Problems are reported by cell, e.g. site.xlsx:Points!C14: column "address": ...',
        "",
    ]
    help_text = _COMMON_HELP.split("# Columns", 1)[1]
    for raw in ("# Columns" + help_text + _ADDRESS_HELP[protocol]).splitlines():
        lines.append(raw.removeprefix("#").removeprefix(" ").rstrip())
    return lines


def _typed(column: str, text: str) -> str | int | float:
    """Numbers as numbers, so the spreadsheet sorts and sums them; everything else as text."""
    if column in NUMERIC_COLUMNS and text:
        number = float(text)
        return int(number) if number.is_integer() and "." not in text else number
    return text


def template_xlsx(protocol: str, device: str | None = None) -> bytes:
    """The template as an .xlsx workbook: Points (with drop-down lists) and Notes."""
    from openpyxl import Workbook  # only the workbook template pays for importing it
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    device, rows = _rows(protocol, device)
    book = Workbook()
    sheet = book.active
    assert sheet is not None  # a new Workbook always has one sheet
    sheet.title = "Points"
    sheet.append(list(_USED))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for values in rows:
        sheet.append([_typed(col, values.get(col, "")) for col in _USED])
    sheet.freeze_panes = "A2"
    for i, col in enumerate(_USED, 1):
        longest = max([len(col)] + [len(r.get(col, "")) for r in rows])
        sheet.column_dimensions[get_column_letter(i)].width = min(max(longest + 2, 8), 48)
    for column, choices, refuse in _CHOICES:
        letter = get_column_letter(_USED.index(column) + 1)
        check = DataValidation(
            type="list",
            formula1='"' + ",".join(choices) + '"',
            allow_blank=True,
            showErrorMessage=True,
            errorStyle="stop" if refuse else "warning",
            errorTitle=f"{column}: not in the list",
            error=f"{column} is one of: {', '.join(choices)}"
            + ("" if refuse else " (or bit0..bit15 for a bit of a register)"),
        )
        check.add(f"{letter}2:{letter}{_VALIDATED_ROWS}")
        sheet.add_data_validation(check)
    notes = book.create_sheet("Notes")
    for line in _notes(protocol):
        notes.append([line])
    notes.column_dimensions["A"].width = 110
    notes["A1"].font = Font(bold=True)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
