"""Point schedule loader and validator: CSV files and .xlsx workbooks.

A schedule is one or more CSV files or workbooks, one row per point (see DESIGN.md "Point schedule" and
``point_schedules/examples/README.md``). Loading is all-or-nothing: every problem in every file
is collected as a ``ScheduleIssue`` (file, physical line, column, message) and reported at
once; a ``Schedule`` is only built when there are none.

File format details that matter to people writing schedules in a spreadsheet:

- UTF-8 with or without a byte-order mark; anything else is rejected naming the first bad byte.
- Line 1 is the first physical line of the file, so the numbers match any text editor. A record
  whose quoted cell spans several lines is reported at the line where it starts.
- Blank lines, rows whose cells are all empty, and lines starting with ``#`` are comments. The
  first non-comment line is the header.
- Cells are stripped of surrounding white space; an empty cell means "use the default".
- A workbook (``.xlsx``, recognised by its content, not its name) is read from its first sheet
  or the sheet named by ``sheet=``; its rows follow the same rules, numbers and booleans are
  read as the spreadsheet shows them, formulas as their last computed value. Issues name the
  cell: ``site.xlsx:Points!C14: column "address": ...``.

Some findings are warnings (``ScheduleIssue.severity``): the schedule still loads, unless
``strict=True`` makes them errors. Today that is two points reading the same address of the
same device with the same data type.

The version of a schedule (``schedule_version``) is a content hash of the file bytes. It does not
depend on the order the files are given in nor on their names: the same files make the same
version wherever they are stored. For a single file it is ``sha256:`` plus the first 16 hex
digits of ``sha256sum FILE``, so an operator can check it by hand.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from outpost.point_schedules.addresses import AddressError, parse_address
from outpost.point_schedules.model import (
    DEFAULT_ACQUISITION,
    NO_LIMITS,
    NO_TAGS,
    POINT_COLUMNS,
    POINT_ID_MAX_LENGTH,
    POINT_ID_PATTERN,
    Acquisition,
    Address,
    AlarmPriority,
    ByteOrder,
    DataType,
    Limits,
    ModbusAddress,
    Point,
    Schedule,
    SourceRef,
)

__all__ = [
    "COLUMNS",
    "NUMERIC_COLUMNS",
    "REQUIRED_COLUMNS",
    "ScheduleError",
    "ScheduleIssue",
    "is_workbook",
    "load_schedule",
    "parse_schedule",
    "schedule_version",
    "validate_schedule",
    "workbook_as_csv",
]

# Derived from ``Point``: a new field there is a new column here, in the template and on the wire.
COLUMNS: tuple[str, ...] = POINT_COLUMNS
REQUIRED_COLUMNS: tuple[str, ...] = ("point_id", "device", "address")
_COLUMN_SET = frozenset(COLUMNS)
# the columns each shared part of a Point holds
_ACQUISITION = tuple(f.name for f in fields(Acquisition))
_LIMIT_COLUMNS = tuple(f.name for f in fields(Limits))


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class ScheduleIssue:
    """One problem in a schedule. ``line`` 0 means the file as a whole.

    In a workbook ``line`` is the row number, ``sheet`` the sheet's name and ``cell`` the cell
    reference (``C14``) when the problem is in one cell.
    """

    file: str
    line: int
    column: str | None
    message: str
    severity: Severity = "error"
    sheet: str | None = None
    cell: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def location(self) -> str:
        """``site.csv:14``, ``site.xlsx:Points!C14``, ``site.xlsx:Points!14`` (a whole row)."""
        where = self.file
        if self.sheet is not None:
            where = f"{where}:{self.sheet}"
            if self.cell or self.line > 0:
                where = f"{where}!{self.cell or self.line}"
        elif self.line > 0:
            where = f"{where}:{self.line}"
        return where

    def __str__(self) -> str:
        where = self.location
        text = f'column "{self.column}": {self.message}' if self.column else self.message
        if self.severity == "warning":
            text = "warning: " + text
        return f"{where}: {text}" if where else text


class ScheduleError(Exception):
    """The schedule is invalid; ``issues`` lists every problem found (errors, and warnings
    when there are any), in file and line order."""

    def __init__(self, issues: Sequence[ScheduleIssue]) -> None:
        self.issues: list[ScheduleIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


# ----------------------------------------------------------------------------- public functions


def load_schedule(
    files: Sequence[str | Path],
    devices: Mapping[str, str],
    *,
    strict: bool = False,
    sheet: str | None = None,
    keep_source: bool = True,
) -> Schedule:
    """Load and validate schedule files (CSV or .xlsx). ``devices`` maps device id → protocol.

    Raises ``ScheduleError`` carrying every problem across all files. Warnings do not stop a
    load; use ``validate_schedule`` to see them, or ``strict=True`` to make them errors.
    ``sheet`` names the sheet to read in every workbook (default: each workbook's first).
    ``keep_source=False`` leaves ``Point.source`` None: a process that keeps the schedule but never
    shows where a point was declared (the agent) saves ≈ 85 bytes a point; issues still name
    file and line.
    """
    schedule, issues = validate_schedule(
        files, devices, strict=strict, sheet=sheet, keep_source=keep_source
    )
    if schedule is None:
        raise ScheduleError(issues)
    return schedule


def validate_schedule(
    files: Sequence[str | Path],
    devices: Mapping[str, str],
    *,
    strict: bool = False,
    sheet: str | None = None,
    keep_source: bool = True,
) -> tuple[Schedule | None, list[ScheduleIssue]]:
    """Like ``load_schedule`` but returns ``(schedule or None, issues)`` instead of raising.

    The schedule is None exactly when an issue is an error; a valid schedule may come with
    warnings.
    """
    sources: list[tuple[str, bytes]] = []
    read_issues: list[ScheduleIssue] = []
    for f in files:
        name = str(f)
        try:
            sources.append((name, Path(f).read_bytes()))
        except IsADirectoryError:
            read_issues.append(ScheduleIssue(name, 0, None, "is a directory, not a CSV file"))
        except OSError as e:
            reason = e.strerror or str(e)
            read_issues.append(ScheduleIssue(name, 0, None, f"cannot read file: {reason}"))
    if not files:
        read_issues.append(ScheduleIssue("", 0, None, "no schedule files given"))
    schedule, issues = parse_schedule(
        sources, devices, strict=strict, sheet=sheet, keep_source=keep_source
    )
    if read_issues:
        # Keep the report in the order the files were given; sort is stable within a file.
        order = {str(f): i for i, f in reversed(list(enumerate(files)))}
        merged = sorted(read_issues + issues, key=lambda i: order.get(i.file, -1))
        return None, merged
    return schedule, issues


def parse_schedule(
    sources: Sequence[tuple[str, bytes]],
    devices: Mapping[str, str],
    *,
    strict: bool = False,
    sheet: str | None = None,
    keep_source: bool = True,
) -> tuple[Schedule | None, list[ScheduleIssue]]:
    """Validate schedule contents already in memory, e.g. a schedule pushed from the receiver.

    ``sources`` are ``(name, content)`` pairs, CSV text or .xlsx workbooks; the names appear in
    issues and ``Point.source`` (None with ``keep_source=False``, see ``load_schedule``).
    """
    issues: list[ScheduleIssue] = []
    points: list[Point] = []
    shared = _Shared()
    for name, data in sources:
        parser = _FileParser(name, devices, issues, shared, strict, sheet, keep_source)
        parser.parse(data, points)
    if any(i.is_error for i in issues) or not sources:
        return None, issues
    schedule = Schedule(
        points=tuple(points),
        version=schedule_version([data for _, data in sources]),
        files=tuple(name for name, _ in sources),
    )
    return schedule, issues


def schedule_version(contents: Sequence[bytes]) -> str:
    """Content hash of the schedule files, independent of their order and names.

    One file: ``sha256:`` + first 16 hex digits of its SHA-256. Several: the same over the
    sorted hex digests of the files, one per line.
    """
    digests = sorted(hashlib.sha256(c).hexdigest() for c in contents)
    if len(digests) == 1:
        return "sha256:" + digests[0][:16]
    combined = hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()
    return "sha256:" + combined[:16]


# ------------------------------------------------------------------------------ cell vocabulary

_POINT_ID_RE = re.compile(POINT_ID_PATTERN)
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BIT_TYPE_RE = re.compile(r"bit([0-9]{1,2})")
_TAG_NAME_RE = re.compile(r"[^\s=;]+")
_DATA_TYPES = {t.value: t for t in DataType}
_BYTE_ORDERS = {b.value: b for b in ByteOrder}
_PRIORITIES = {p.value: p for p in AlarmPriority}
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
# Names other tools use, for the "did you mean" hint only: guessing the width silently is
# exactly the kind of error that shows up as a plausible but wrong value months later.
_TYPE_ALIASES = {
    "float": "float32",
    "real": "float32",
    "single": "float32",
    "double": "float64",
    "int": "int16",
    "short": "int16",
    "word": "uint16",
    "long": "int32",
    "dint": "int32",
    "dword": "uint32",
    "udint": "uint32",
    "boolean": "bool",
    "bit": "bool",
    "coil": "bool",
}
_TYPE_LIST = ", ".join(_DATA_TYPES) + ", bitN"
_MULTI_REGISTER_TYPES = ", ".join(t.value for t in DataType if t.registers > 1)
# Limits from high to low. Within one side equal limits are allowed; across sides they are not.
_LIMITS = ("alarm_hh", "alarm_h", "alarm_l", "alarm_ll")
_HIGH_SIDE = frozenset({"alarm_hh", "alarm_h"})
# column -> (Point field, constraint); constraints: "" any, "nonzero", "positive", "nonneg"
_NUMERIC: tuple[tuple[str, str], ...] = (
    ("scale", "nonzero"),
    ("offset", ""),
    ("poll_interval", "positive"),
    ("deadband", "nonneg"),
    ("heartbeat", "positive"),
    ("min", ""),
    ("max", ""),
    ("alarm_hh", ""),
    ("alarm_h", ""),
    ("alarm_l", ""),
    ("alarm_ll", ""),
    ("alarm_deadband", "nonneg"),
    ("alarm_delay", "nonneg"),
    ("alarm_clear_delay", "nonneg"),
)
#: Columns holding a number (alarm_state also takes true/false).
NUMERIC_COLUMNS: frozenset[str] = frozenset([c for c, _ in _NUMERIC] + ["alarm_state"])
_CONSTRAINT_TEXT = {
    "nonzero": "must not be 0",
    "positive": "must be greater than 0",
    "nonneg": "must not be negative",
}


def _show(text: str, limit: int = 60) -> str:
    """A cell quoted for a message, cut short so one huge cell cannot flood the output."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return '"' + text.replace('"', '\\"') + '"'


def _fmt(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _column_letter(position: int) -> str:
    """Spreadsheet column name of a 0-based cell index: 0 -> A, 25 -> Z, 26 -> AA."""
    name = ""
    n = position + 1
    while n:
        n, rem = divmod(n - 1, 26)
        name = chr(ord("A") + rem) + name
    return name


class _WorkbookError(Exception):
    """The workbook or the sheet asked for cannot be read; the message is for the user."""


def _sheet_rows(data: bytes, sheet: str | None) -> tuple[str, Iterator[tuple[int, list[str]]]]:
    """The title of the sheet (``sheet`` or the first) and its rows as ``(row number, cells as
    text)``, every row, trailing empty cells cut. Raises ``_WorkbookError``."""
    import openpyxl  # only workbooks pay for importing it

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception:  # whatever a third-party parser raises on a user's file: one line
        raise _WorkbookError(
            "is a zip archive but not an .xlsx workbook (an .ods or .xls?): save it "
            'as .xlsx ("Excel 2007-365") or export the sheet as "CSV UTF-8"'
        ) from None
    if sheet is None:
        chosen = book.worksheets[0]
    elif sheet in book.sheetnames:
        chosen = book[sheet]
    else:
        book.close()
        names = ", ".join(f'"{n}"' for n in book.sheetnames)
        raise _WorkbookError(f'has no sheet "{sheet}": its sheets are {names}')

    def rows() -> Iterator[tuple[int, list[str]]]:
        try:
            for number, values in enumerate(chosen.iter_rows(min_row=1, values_only=True), 1):
                cells = [_cell_text(v) for v in values]
                # A sheet is as wide as its widest row: trailing empty cells are not cells.
                while cells and not cells[-1].strip():
                    cells.pop()
                yield number, cells
        finally:
            book.close()

    return chosen.title, rows()


def is_workbook(data: bytes) -> bool:
    """Whether ``data`` is a zip archive, i.e. read as a workbook rather than as CSV text."""
    return data.startswith(b"PK\x03\x04")


def workbook_as_csv(name: str, data: bytes, sheet: str | None = None) -> str:
    """One sheet of an .xlsx workbook as CSV text, cells as the loader reads them, one line
    per row (so line numbers match row numbers unless a cell holds a line break).

    For tools that move schedules as text, e.g. ``outpost schedule load`` to the running
    agent. Raises ``ScheduleError`` when the workbook or the sheet cannot be read.
    """
    try:
        _, rows = _sheet_rows(data, sheet)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        width = 0  # the header's, once seen: a sheet's trailing blanks become empty cells
        for _, cells in rows:
            if cells and not cells[0].lstrip().startswith("#"):
                width = width or len(cells)
                cells += [""] * (width - len(cells))
            writer.writerow(cells)
    except _WorkbookError as e:
        raise ScheduleError([ScheduleIssue(name, 0, None, str(e))]) from None
    except Exception as e:  # a corrupt sheet inside a readable workbook: one line
        raise ScheduleError(
            [ScheduleIssue(name, 0, None, f"cannot read the workbook: {e}", sheet=sheet)]
        ) from None
    return out.getvalue()


def _cell_text(value: object) -> str:
    """A workbook cell as the text a CSV export of it would hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _fmt(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


# ------------------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Shared:
    """What equal cells of one load share: one object per distinct value, not one per point.

    A schedule repeats the same device names, units, numbers, tag sets and (across devices of
    one model) addresses down thousands of rows; the loaded schedule lives as long as the
    agent, so each repetition kept as its own object costs memory for the process' lifetime
    (≈ 30 bytes per float, 50+ per string, 60+ per address). Everything shared is immutable.
    """

    strings: dict[str, str] = field(default_factory=dict)
    # cell text -> its value; only texts that are valid finite numbers are cached
    numbers: dict[str, float] = field(default_factory=dict)
    # (protocol, cell text) -> parsed address; only valid ones are cached
    addresses: dict[tuple[str, str], Address] = field(default_factory=dict)
    # addresses built after parsing (a bitN data type moves the bit into the address)
    canonical: dict[ModbusAddress, ModbusAddress] = field(default_factory=dict)
    tags: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = field(default_factory=dict)
    # seeded with the model's defaults, which points built elsewhere share too
    acquisitions: dict[Acquisition, Acquisition] = field(
        default_factory=lambda: {DEFAULT_ACQUISITION: DEFAULT_ACQUISITION}
    )
    limits: dict[Limits, Limits] = field(default_factory=lambda: {NO_LIMITS: NO_LIMITS})
    # the parts by the cell texts they were made from (texts differ where values may not: "1"
    # and "1.0"; the dicts above still make those one object)
    acquisition_by_text: dict[tuple[str | None, ...], Acquisition] = field(default_factory=dict)
    limits_by_text: dict[tuple[str | None, ...], Limits] = field(default_factory=dict)

    # Bookkeeping for the whole load, kept compact: a SourceRef per point id and a
    # (device, address, type) tuple per point live until the last row and are then freed
    # among the points that stay, leaving ≈ 13 MB of holes per 100,000 points in the heap,
    # which the process' RSS keeps.
    files: list[tuple[str, str | None]] = field(default_factory=list)  # (name, sheet)
    # point id -> where it was first declared: line << _FILE_BITS | file number
    declared: dict[str, int] = field(default_factory=dict)
    # what a point reads: (device, data type) -> address -> the first point reading it
    readers: dict[tuple[str, DataType | None], dict[Address, Point]] = field(default_factory=dict)

    def declaration(self, point_id: str) -> SourceRef | None:
        code = self.declared.get(point_id)
        if code is None:
            return None
        name, sheet = self.files[code & _FILE_MASK]
        return SourceRef(name, code >> _FILE_BITS, sheet)


_FILE_BITS = 20  # up to a million files in one load
_FILE_MASK = (1 << _FILE_BITS) - 1


def _violates(constraint: str, value: float) -> bool:
    return (
        (constraint == "nonzero" and value == 0)
        or (constraint == "positive" and value <= 0)
        or (constraint == "nonneg" and value < 0)
    )


@dataclass
class _FileParser:
    name: str
    devices: Mapping[str, str]
    issues: list[ScheduleIssue]
    shared: _Shared
    strict: bool = False
    wanted_sheet: str | None = None
    keep_source: bool = True
    sheet: str | None = None  # the sheet being read, None for CSV
    file_no: int = 0  # in ``shared.files``
    index: dict[str, int] = field(default_factory=dict)
    missing_data_type_lines: list[int] = field(default_factory=list)
    names: tuple[str, ...] = ()
    pick: Callable[[list[str]], Sequence[str]] = lambda cells: ()
    numeric: list[tuple[str, str]] = field(default_factory=list)

    def issue(
        self,
        line: int,
        column: str | None,
        message: str,
        *,
        position: int | None = None,
        severity: Severity = "error",
    ) -> None:
        """Record an issue; ``position`` is the 0-based cell index when ``column`` is not (yet)
        a known column, e.g. in the header."""
        cell = None
        if self.sheet is not None and line > 0:
            if position is None and column is not None:
                position = self.index.get(column)
            if position is not None:
                cell = f"{_column_letter(position)}{line}"
        self.issues.append(
            ScheduleIssue(self.name, line, column, message, severity, self.sheet, cell)
        )

    def source(self, line: int) -> SourceRef:
        return SourceRef(self.name, line, self.sheet)

    # -------------------------------------------------------------------------------- file level

    def decode(self, data: bytes) -> str | None:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            self.issue(0, None, 'is UTF-16 encoded: save it as UTF-8 ("CSV UTF-8")')
            return None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            self.issue(
                line,
                None,
                f"not valid UTF-8: byte 0x{data[e.start]:02X} at offset {e.start}; "
                'save the file as UTF-8 ("CSV UTF-8" in a spreadsheet)',
            )
            return None
        nul = text.find("\x00")
        if nul >= 0:
            self.issue(
                text.count("\n", 0, nul) + 1,
                None,
                "contains a NUL character; is this really a CSV text file?",
            )
            return None
        return text

    def records(self, text: str) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(start line, cells)`` for each non-comment record."""
        state = {"lineno": 0, "start": 0, "at_start": True}
        raw = io.StringIO(text, newline="")

        def lines() -> Iterator[str]:
            for physical in raw:
                state["lineno"] += 1
                if state["at_start"]:
                    stripped = physical.strip()
                    # A comment is only recognised where a record starts, so a "#" at the
                    # beginning of a continuation line inside a quoted cell stays data.
                    if not stripped or stripped.startswith("#"):
                        continue
                    state["start"] = state["lineno"]
                    state["at_start"] = False
                yield physical

        reader = csv.reader(lines(), strict=True)
        while True:
            state["at_start"] = True
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                if str(e) == "unexpected end of data":
                    self.issue(
                        state["start"],
                        None,
                        'a quoted cell that starts on this line is never closed (missing ")',
                    )
                    return
                self.issue(
                    state["start"],
                    None,
                    f"malformed CSV: {e} (a quote inside a "
                    'cell must be doubled: "" and the cell itself quoted)',
                )
                continue
            if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            yield state["start"], cells

    def workbook_records(self, data: bytes) -> Iterator[tuple[int, list[str]]] | None:
        """The rows of one sheet as ``(row number, cells as text)``, or None (issue recorded)."""
        try:
            title, rows = _sheet_rows(data, self.wanted_sheet)
        except _WorkbookError as e:
            self.issue(0, None, str(e))
            return None
        self.sheet = title

        def records() -> Iterator[tuple[int, list[str]]]:
            number = 0
            try:
                for number, cells in rows:
                    if cells and not cells[0].lstrip().startswith("#"):
                        yield number, cells
            except Exception as e:  # a corrupt sheet inside a readable workbook: one line
                self.issue(number + 1, None, f"cannot read this row of the workbook: {e}")

        return records()

    def parse(self, data: bytes, out: list[Point]) -> None:
        if is_workbook(data):
            records = self.workbook_records(data)
            if records is None:
                return
        else:
            text = self.decode(data)
            if text is None:
                return
            records = self.records(text)
        self.file_no = len(self.shared.files)
        self.shared.files.append((self.name, self.sheet))
        first = next(records, None)
        if first is None:
            self.issue(
                0,
                None,
                "empty file: expected a header line naming the columns "
                f"({', '.join(REQUIRED_COLUMNS)}, ...) and one row per point",
            )
            return
        header_line, header = first
        self.read_header(header_line, header)
        width = len(header)
        rows = 0
        for line, cells in records:
            rows += 1
            present = len(cells)
            if self.sheet is not None and present < width:  # a sheet's trailing blanks
                cells += [""] * (width - present)
                present = width
            if present != width:
                self.wrong_width(line, cells, width)
                # The cells that are there are still checked, so one missing comma does not
                # hide the row's other mistakes; the row itself is never loaded.
                cells = cells[:width] + [""] * (width - present)
                n_issues = len(self.issues)
                self.row(line, cells)
                # A cell that is not there is not "empty": drop what row() said about those.
                self.issues[n_issues:] = [
                    i
                    for i in self.issues[n_issues:]
                    if i.column is None or self.index.get(i.column, 0) < present
                ]
                continue
            point = self.row(line, cells)
            if point is not None:
                self.check_same_reading(point)
                out.append(point)
        if rows == 0:
            self.issue(0, None, "no points: the file has a header but no rows")
        if self.missing_data_type_lines:
            lines = self.missing_data_type_lines
            shown = ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else "")
            self.issue(
                header_line,
                "data_type",
                "required column is missing: modbus register "
                f"points need a data_type (lines {shown})",
            )

    def wrong_width(self, line: int, cells: list[str], width: int) -> None:
        if self.sheet is not None:  # only longer rows reach here
            refs = [
                f"{_column_letter(i)}{line}" for i in range(width, len(cells)) if cells[i].strip()
            ]
            self.issue(
                line,
                None,
                f"cells right of the last header column hold values ({', '.join(refs[:5])}"
                f"{', ...' if len(refs) > 5 else ''}): give the column a header or clear them",
            )
            return
        hint = " (a cell containing a comma must be quoted)" if len(cells) > width else ""
        self.issue(
            line,
            None,
            f"expected {width} cells (one per header column), found {len(cells)}{hint}",
        )

    def check_same_reading(self, point: Point) -> None:
        """Two points reading one value is usually a copy-paste slip (a warning; strict: an
        error)."""
        readers = self.shared.readers
        by_address = readers.get((point.device, point.data_type))
        if by_address is None:
            by_address = readers[point.device, point.data_type] = {}
        first = by_address.setdefault(point.address, point)
        if first is point:
            return
        # every loaded point's declaration is known, with or without ``keep_source``
        here = self.shared.declaration(point.point_id)
        there = self.shared.declaration(first.point_id)
        if here is None:
            return
        what = f"{point.device} {point.address}"
        if point.data_type is not None:
            what += f" as {point.data_type.value}"
        self.issue(
            here.line,
            "address",
            f'"{point.point_id}" reads the same value as "{first.point_id}" at {there} '
            f"({what}); a second point for one value is usually a copy-paste slip",
            severity="error" if self.strict else "warning",
        )

    def read_header(self, line: int, header: list[str]) -> None:
        if len(header) == 1:
            for sep, label in ((";", '";"'), ("\t", "tabs")):
                if sep in header[0]:
                    self.issue(
                        line,
                        None,
                        f"the header is one single column: the file seems to use {label} "
                        'as separator; export it with "," (CSV UTF-8)',
                    )
                    break
        for i, raw in enumerate(header):
            name = raw.strip()
            if not name:
                self.issue(
                    line,
                    None,
                    f"header cell {i + 1} is empty: every column needs a name "
                    "(remove trailing separators)",
                    position=i,
                )
            elif name in self.index:
                self.issue(
                    line,
                    name,
                    f"column given twice (cells {self.index[name] + 1} and {i + 1})",
                    position=i,
                )
            elif name not in _COLUMN_SET:
                close = difflib.get_close_matches(name.lower(), COLUMNS, n=1, cutoff=0.6)
                hint = (
                    f'did you mean "{close[0]}"?'
                    if close
                    else "known columns: " + ", ".join(COLUMNS)
                )
                self.issue(line, name, f"unknown column ({hint})", position=i)
            else:
                self.index[name] = i
        self.names = tuple(self.index)
        positions = list(self.index.values())
        # itemgetter returns a bare item for one index and fails for none: keep rows uniform.
        if len(positions) > 1:
            self.pick = operator.itemgetter(*positions)
        else:
            self.pick = lambda cells: [cells[i] for i in positions]
        self.numeric = [(c, k) for c, k in _NUMERIC if c in self.index]
        for name in REQUIRED_COLUMNS:
            if name not in self.index:
                self.issue(line, name, "required column is missing")

    # --------------------------------------------------------------------------------- row level

    def row(self, line: int, cells: list[str]) -> Point | None:
        index = self.index
        values = dict(zip(self.names, map(str.strip, self.pick(cells)), strict=True))
        n_issues = len(self.issues)
        get = values.get

        point_id = get("point_id", "")
        if "point_id" in index:
            if not point_id:
                self.issue(line, "point_id", "required, the cell is empty")
            elif len(point_id) > POINT_ID_MAX_LENGTH:
                self.issue(
                    line,
                    "point_id",
                    f"{_show(point_id)} is {len(point_id)} characters long: "
                    f"a point id has at most {POINT_ID_MAX_LENGTH}",
                )
            elif _POINT_ID_RE.fullmatch(point_id) is None:
                self.issue(
                    line,
                    "point_id",
                    f"{_show(point_id)} is not a valid point id: use "
                    "lower-case letters, digits and _ . - (starting with a letter or digit)",
                )
            else:
                declared = self.shared.declared
                if point_id in declared:
                    first = self.shared.declaration(point_id)
                    self.issue(
                        line,
                        "point_id",
                        f'duplicate point_id "{point_id}": first defined at {first}',
                    )
                else:
                    declared[point_id] = line << _FILE_BITS | self.file_no

        device = get("device", "")
        protocol: str | None = None
        if "device" in index:
            if not device:
                self.issue(line, "device", "required, the cell is empty")
            else:
                protocol = self.devices.get(device)
                if protocol is None:
                    known = ", ".join(sorted(self.devices)) or "none"
                    close = difflib.get_close_matches(device, list(self.devices), n=1)
                    hint = f'did you mean "{close[0]}"? ' if close else ""
                    self.issue(
                        line,
                        "device",
                        f'unknown device "{device}": {hint}devices in the agent config: {known}',
                    )

        address = None
        address_text = get("address", "")
        if "address" in index:
            if not address_text:
                self.issue(line, "address", "required, the cell is empty")
            elif protocol is not None:
                parsed = self.shared.addresses
                address = parsed.get((protocol, address_text))
                if address is None:
                    try:
                        address = parse_address(protocol, address_text)
                    except AddressError as e:
                        self.issue(
                            line, "address", f"{protocol} address {_show(address_text)}: {e}"
                        )
                    else:
                        parsed[protocol, address_text] = address

        kw: dict[str, object] = {}

        # data_type: a name of DataType, or "bitN" which is bool at bit N of a register
        data_type: DataType | None = None
        type_bit: int | None = None
        type_text = get("data_type", "")
        type_ok = True
        if type_text:
            lowered = type_text.lower()
            data_type = _DATA_TYPES.get(lowered)
            if data_type is None:
                m = _BIT_TYPE_RE.fullmatch(lowered)
                if m is not None and int(m.group(1)) <= 15:
                    data_type, type_bit = DataType.BOOL, int(m.group(1))
                else:
                    type_ok = False
                    close = (
                        [_TYPE_ALIASES[lowered]]
                        if lowered in _TYPE_ALIASES
                        else (difflib.get_close_matches(lowered, list(_DATA_TYPES), n=1))
                    )
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                    if m is not None:
                        msg = f"bit {m.group(1)} out of range 0..15"
                    else:
                        msg = f"unknown data_type {_show(type_text)}{hint}: expected one of "
                        msg += _TYPE_LIST
                    self.issue(line, "data_type", msg)

        byte_order_text = get("byte_order", "")
        if byte_order_text:
            bo = _BYTE_ORDERS.get(byte_order_text.upper())
            if bo is None:
                self.issue(
                    line,
                    "byte_order",
                    f"unknown byte_order {_show(byte_order_text)}: "
                    "expected one of ABCD, CDAB, BADC, DCBA",
                )
            else:
                kw["byte_order"] = bo

        if protocol == "modbus" and isinstance(address, ModbusAddress):
            address, data_type = self.modbus_checks(
                line, address, data_type, type_bit, type_ok, bool(byte_order_text)
            )
        elif protocol is not None and protocol != "modbus":
            if type_bit is not None:
                self.issue(
                    line,
                    "data_type",
                    f"bitN data types exist only for modbus registers, not for {protocol}",
                )
            if byte_order_text:
                self.issue(
                    line,
                    "byte_order",
                    f"byte_order applies only to modbus multi-register values, not to {protocol}",
                )

        numbers = self.shared.numbers
        for column, constraint in self.numeric:
            text = get(column)
            if text:
                # Spreadsheets repeat the same few numbers down a column; the cache makes the
                # common case one dict lookup and every point share one float object. Only
                # valid numbers are cached; the column's constraint is checked either way.
                v = numbers.get(text)
                if v is None:
                    v = self.number(line, column, text, constraint)
                elif constraint and _violates(constraint, v):
                    self.issue(line, column, f"{_CONSTRAINT_TEXT[constraint]}, got {text}")
                    v = None
                if v is not None:
                    kw[column] = v

        text = get("alarm_state")
        if text:
            lowered = text.lower()
            if lowered in ("true", "false"):
                kw["alarm_state"] = 1.0 if lowered == "true" else 0.0
            else:
                v = self.number(line, "alarm_state", text, "")
                if v is not None:
                    kw["alarm_state"] = v

        lo, hi = kw.get("min"), kw.get("max")
        if isinstance(lo, float) and isinstance(hi, float) and lo > hi:
            self.issue(line, "max", f"max ({_fmt(hi)}) is less than min ({_fmt(lo)})")
        self.check_limits(line, kw)

        writable_text = get("writable", "")
        if writable_text:
            lowered = writable_text.lower()
            if lowered in _TRUE:
                kw["writable"] = True
            elif lowered not in _FALSE:
                self.issue(
                    line,
                    "writable",
                    f"expected true or false (also yes/no, 1/0), got {_show(writable_text)}",
                )
        if (
            kw.get("writable")
            and isinstance(address, ModbusAddress)
            and address.table in ("ir", "di")
        ):
            kind = "input registers" if address.table == "ir" else "discrete inputs"
            self.issue(
                line,
                "writable",
                f"{address.table} ({kind}) are read-only in Modbus; "
                "use hr or coil for a writable point",
            )

        priority_text = get("alarm_priority", "")
        if priority_text:
            p = _PRIORITIES.get(priority_text.lower())
            if p is None:
                self.issue(
                    line,
                    "alarm_priority",
                    f"unknown priority {_show(priority_text)}: "
                    "expected one of critical, high, medium, low",
                )
            else:
                kw["alarm_priority"] = p

        shared = self.shared
        tags: Mapping[str, str] = NO_TAGS
        tags_text = get("tags", "")
        if tags_text:
            parsed_tags = self.tags(line, tags_text)
            if parsed_tags:
                key = tuple(parsed_tags.items())
                tags = shared.tags.get(key) or shared.tags.setdefault(
                    key, MappingProxyType(parsed_tags)
                )

        if len(self.issues) != n_issues or address is None or not point_id or not device:
            return None
        strings = shared.strings
        units = get("units", "")
        description = get("description", "")
        # The same cell texts make the same part: one dict lookup for most rows.
        acquisition_texts = tuple(map(get, _ACQUISITION))
        acquisition = shared.acquisition_by_text.get(acquisition_texts)
        if acquisition is None:
            # kw holds each column's value, already checked against the column's type
            acquisition = Acquisition(**{k: v for k, v in kw.items() if k in _ACQUISITION})  # type: ignore[arg-type]
            acquisition = shared.acquisitions.setdefault(acquisition, acquisition)
            shared.acquisition_by_text[acquisition_texts] = acquisition
        limit_texts = tuple(map(get, _LIMIT_COLUMNS))
        limits = shared.limits_by_text.get(limit_texts)
        if limits is None:
            limits = Limits(**{k: v for k, v in kw.items() if k in _LIMIT_COLUMNS})  # type: ignore[arg-type]
            limits = shared.limits.setdefault(limits, limits)
            shared.limits_by_text[limit_texts] = limits
        return Point.from_parts(
            point_id,
            strings.setdefault(device, device),
            address,
            data_type,
            strings.setdefault(units, units),
            strings.setdefault(description, description),
            tags,
            acquisition,
            limits,
            self.source(line) if self.keep_source else None,
        )

    def modbus_checks(
        self,
        line: int,
        address: ModbusAddress,
        data_type: DataType | None,
        type_bit: int | None,
        type_ok: bool,
        has_byte_order: bool,
    ) -> tuple[ModbusAddress | None, DataType | None]:
        if type_bit is not None:
            if address.table not in ("hr", "ir"):
                self.issue(
                    line,
                    "data_type",
                    f"bit{type_bit} needs a register address (hr or ir), not {address.table}",
                )
                return None, data_type
            if address.bit is not None and address.bit != type_bit:
                self.issue(
                    line,
                    "data_type",
                    f"bit{type_bit} contradicts the address {address} (bit {address.bit})",
                )
                return None, data_type
            built = ModbusAddress(address.table, address.address, type_bit)
            address = self.shared.canonical.setdefault(built, built)
        if address.is_bit_table or address.bit is not None:
            what = (
                f"{address.table} addresses are single bits"
                if address.is_bit_table
                else f"{address} is a bit of a register"
            )
            if data_type is None and type_ok:
                data_type = DataType.BOOL
            elif data_type is not None and data_type is not DataType.BOOL:
                self.issue(
                    line,
                    "data_type",
                    f"{what}: data_type must be bool (or empty), got {data_type.value}",
                )
                return address, data_type
        elif data_type is None:
            if type_ok:
                if "data_type" in self.index:
                    self.issue(
                        line,
                        "data_type",
                        f"required for modbus register points: one of {_TYPE_LIST}",
                    )
                else:
                    self.missing_data_type_lines.append(line)
            return address, None
        if data_type is None:  # an unknown data_type, already reported
            return address, None
        registers = data_type.registers if address.bit is None else 1
        if address.address + registers - 1 > 65535:
            self.issue(
                line,
                "address",
                f"{data_type.value} at {address} needs {registers} "
                "registers and runs past the last address 65535",
            )
        if has_byte_order and (registers == 1 or address.is_bit_table):
            self.issue(
                line,
                "byte_order",
                "byte_order applies only to multi-register types "
                f"({_MULTI_REGISTER_TYPES}), not to {data_type.value}"
                + (" bits" if address.bit is not None or address.is_bit_table else ""),
            )
        return address, data_type

    def number(self, line: int, column: str, text: str, constraint: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        # float() also takes "nan", "inf", "1_000" and non-ASCII digits; a schedule may not.
        if not math.isfinite(value) or not text.isascii() or "_" in text:
            if _NUMBER_RE.fullmatch(text) is None:
                self.issue(line, column, f"expected a number, got {_show(text)}")
            else:
                self.issue(line, column, f"{_show(text)} is out of the range of a number")
            return None
        self.shared.numbers[text] = value
        if constraint and _violates(constraint, value):
            self.issue(line, column, f"{_CONSTRAINT_TEXT[constraint]}, got {text}")
            return None
        return value

    def check_limits(self, line: int, kw: dict[str, object]) -> None:
        given = [(name, float(kw[name])) for name in _LIMITS if name in kw]  # type: ignore[arg-type]
        for (upper, uv), (lower, lv) in itertools.pairwise(given):
            crosses = (upper in _HIGH_SIDE) != (lower in _HIGH_SIDE)
            if crosses and uv <= lv:
                self.issue(
                    line,
                    lower,
                    f"{lower} ({_fmt(lv)}) must be less than {upper} "
                    f"({_fmt(uv)}); expected alarm_hh >= alarm_h > alarm_l >= alarm_ll",
                )
            elif not crosses and uv < lv:
                self.issue(
                    line,
                    lower,
                    f"{lower} ({_fmt(lv)}) must not be greater than {upper} "
                    f"({_fmt(uv)}); expected alarm_hh >= alarm_h > alarm_l >= alarm_ll",
                )

    def tags(self, line: int, text: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        for part in text.split(";"):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            name, value = name.strip(), value.strip()
            if not name:
                self.issue(
                    line,
                    "tags",
                    f"tag {_show(part)} has no name: expected "
                    "name=value or a bare marker name, separated by ;",
                )
                continue
            if _TAG_NAME_RE.fullmatch(name) is None:
                self.issue(line, "tags", f"tag name {_show(name)} must not contain spaces")
                continue
            if name in tags:
                self.issue(line, "tags", f'tag "{name}" is given twice')
                continue
            tags[name] = value if sep else ""
        return tags
