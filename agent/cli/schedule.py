"""``outpost schedule ...``: validate, diff and template point schedules, offline.

These commands read files and the agent config only; they never talk to a running daemon, so a
commissioning engineer can use them on a laptop before the gateway exists.

Exit codes: 0 success; 1 the schedule is invalid (validate) or differs (diff, like diff(1));
2 the command could not do its job (bad config, invalid schedule given to diff, bad option).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from outpost.agent.cli.common import ConfigOption, JsonOption, config_or_exit
from outpost.point_schedules.addresses import PROTOCOLS
from outpost.point_schedules.diff import ScheduleDiff, diff_schedules, format_diff
from outpost.point_schedules.loader import (
    ScheduleError,
    ScheduleIssue,
    is_workbook,
    validate_schedule,
    workbook_as_csv,
)
from outpost.point_schedules.model import Schedule
from outpost.point_schedules.template import TEMPLATE_FORMATS, template_xlsx
from outpost.point_schedules.template import template as make_template

schedule_app = typer.Typer(
    help="Point schedules (CSV or .xlsx): validate, diff against the configured schedule, "
    "templates.",
    no_args_is_help=True,
)

EXIT_INVALID = 1
EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2
_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")


SheetOption = Annotated[
    str | None,
    typer.Option(
        "--sheet",
        help="the sheet to read in .xlsx workbooks (default: each workbook's first sheet)",
        metavar="NAME",
        show_default=False,
    ),
]
StrictOption = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="treat warnings (e.g. two points reading the same address) as errors",
    ),
]


def _load_devices(config: Path | None) -> tuple[dict[str, str], list[Path]]:
    # The schedule files named in the config may not exist yet on a commissioning laptop;
    # they are checked (as schedules) only when a command actually uses them.
    cfg = config_or_exit(config, check_files=False)
    return cfg.device_protocols(), list(cfg.schedules.files)


def _print_issues(issues: Sequence[ScheduleIssue]) -> None:
    for issue in issues:
        typer.echo(str(issue), err=True)


def _issue_json(issue: ScheduleIssue) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "file": issue.file,
        "line": issue.line,
        "column": issue.column,
        "message": issue.message,
    }
    # Only when they say something, so an error in a CSV file reads as it always did.
    if issue.severity != "error":
        doc["severity"] = issue.severity
    if issue.sheet is not None:
        doc["sheet"], doc["cell"] = issue.sheet, issue.cell
    return doc


def _texts(files: list[Path], sheet: str | None) -> dict[str, str]:
    """The files as the running agent takes them, as text: a workbook's sheet goes as CSV
    named FILE.csv, so the agent stores, versions and reloads plain CSV."""
    from outpost.agent.cli import commissioning as c

    texts: dict[str, str] = {}
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            data = b""  # read_texts reports it
        if not is_workbook(data):
            texts.update(c.read_texts([f]))
            continue
        try:
            texts[f"{f}.csv"] = workbook_as_csv(str(f), data, sheet)
        except ScheduleError as exc:
            _print_issues(exc.issues)
            raise typer.Exit(EXIT_TROUBLE) from None
    return texts


def _device_summary(schedule: Schedule, devices: Mapping[str, str]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for p in schedule.points:
        row = rows.get(p.device)
        if row is None:
            row = rows[p.device] = {
                "device": p.device,
                "protocol": devices.get(p.device, "?"),
                "points": 0,
                "writable": 0,
                "with_alarms": 0,
            }
        row["points"] += 1
        row["writable"] += p.writable
        row["with_alarms"] += p.has_alarms
    return list(rows.values())


@schedule_app.command("validate")
def validate_cmd(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="schedule files (CSV or .xlsx); default: schedules.files of the config",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    sheet: SheetOption = None,
    strict: StrictOption = False,
) -> None:
    """Check schedule files (CSV or .xlsx) against the devices of the agent config.

    Valid: warnings (if any) on stderr, one summary line per device and the schedule version
    (exit 0). With --strict a warning makes the schedule invalid.

    Invalid: every problem on stderr as FILE:LINE: column "NAME": message, in a workbook as
    FILE:SHEET!CELL: ... (exit 1).
    """
    devices, configured = _load_devices(config)
    paths = list(files) if files else configured
    if not paths:
        typer.echo("no schedule files given and none in the config's [schedules] files", err=True)
        raise typer.Exit(EXIT_TROUBLE)
    schedule, issues = validate_schedule(paths, devices, strict=strict, sheet=sheet)

    if as_json:
        doc: dict[str, Any] = {
            "valid": schedule is not None,
            "version": schedule.version if schedule else None,
            "files": [str(p) for p in paths],
            "points": len(schedule.points) if schedule else 0,
            "devices": _device_summary(schedule, devices) if schedule else [],
            "issues": [_issue_json(i) for i in issues],
            "warnings": sum(not i.is_error for i in issues),
        }
        typer.echo(json.dumps(doc, indent=2))
        if schedule is None:
            raise typer.Exit(EXIT_INVALID)
        return

    if schedule is None:
        _print_issues(issues)
        n_files = len({i.file for i in issues})
        typer.echo(
            f"schedule invalid: {len(issues)} problem{'s' * (len(issues) != 1)} "
            f"in {n_files} file{'s' * (n_files != 1)}",
            err=True,
        )
        raise typer.Exit(EXIT_INVALID)

    _print_issues(issues)  # warnings only: the schedule is valid
    summary = _device_summary(schedule, devices)
    for row in summary:
        typer.echo(
            f"{row['device']} ({row['protocol']}): {row['points']} points, "
            f"{row['writable']} writable, {row['with_alarms']} with alarms"
        )
    unused = sorted(set(devices) - {row["device"] for row in summary})
    if unused:
        typer.echo(f"configured devices without points: {', '.join(unused)}")
    warned = f", {len(issues)} warning{'s' * (len(issues) != 1)}" if issues else ""
    typer.echo(
        f"valid: {len(schedule.points)} points in {len(schedule.files)} "
        f"file{'s' * (len(schedule.files) != 1)}, version {schedule.version}{warned}"
    )


def _diff_json(diff: ScheduleDiff) -> dict[str, Any]:
    def value(v: object) -> object:
        if v is None or isinstance(v, bool | int | float | str | dict):
            return v
        return str(v.value) if hasattr(v, "value") else str(v)

    return {
        "old_version": diff.old_version,
        "new_version": diff.new_version,
        "added": [p.point_id for p in diff.added],
        "removed": [p.point_id for p in diff.removed],
        "changed": [
            {
                "point_id": c.point_id,
                "changes": {
                    fc.name: {"old": value(fc.old), "new": value(fc.new)} for fc in c.changes
                },
            }
            for c in diff.changed
        ],
        "unchanged": diff.unchanged,
    }


@schedule_app.command("diff")
def diff_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="the new (proposed) schedule files (CSV or .xlsx)",
            show_default=False,
            metavar="FILE",
        ),
    ],
    against: Annotated[
        list[Path] | None,
        typer.Option(
            "--against",
            "-a",
            help="the old schedule files to compare with (repeat for several); "
            "default: schedules.files of the config",
            metavar="OLD.csv",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    sheet: SheetOption = None,
) -> None:
    """Show what loading FILE... would change: points added (+), removed (-), changed (~).

    Baseline: the config's schedules.files (what the gateway is configured to run).

    With --against OLD.csv (repeatable) the baseline is those files. Both sides must be valid.

    --sheet picks the sheet of the new workbooks; the baseline's workbooks are read from their
    first sheet, as the agent reads them.

    Exit 0 when there is no difference, 1 when there is one, 2 on errors (as diff(1) does).
    """
    devices, configured = _load_devices(config)
    old_files = list(against) if against else configured
    if not old_files:
        typer.echo(
            "nothing to compare with: give --against OLD.csv or set [schedules] files "
            "in the config",
            err=True,
        )
        raise typer.Exit(EXIT_TROUBLE)
    old, old_issues = validate_schedule(old_files, devices)
    new, new_issues = validate_schedule(list(files), devices, sheet=sheet)
    if old is None or new is None:
        if old is None:
            typer.echo("the old schedule is invalid:", err=True)
            _print_issues(old_issues)
        if new is None:
            typer.echo("the new schedule is invalid:", err=True)
            _print_issues(new_issues)
        raise typer.Exit(EXIT_TROUBLE)
    diff = diff_schedules(old, new)
    if as_json:
        typer.echo(json.dumps(_diff_json(diff), indent=2))
    else:
        typer.echo(format_diff(diff))
    if not diff.is_empty:
        raise typer.Exit(EXIT_DIFFERENT)


@schedule_app.command("template")
def template_cmd(
    protocol: Annotated[
        str,
        typer.Option("--protocol", "-p", help=f"one of {', '.join(PROTOCOLS)}", show_default=True),
    ] = "modbus",
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="device id to use in the rows", show_default=False),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help=f"one of {', '.join(TEMPLATE_FORMATS)}"),
    ] = "csv",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="write to this file instead of stdout",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print an example schedule for one protocol (it validates as it is).

    CSV: commented rows. xlsx: a workbook with the rows on sheet Points, drop-down lists for
    data types, byte orders, priorities and writable, and the help on sheet Notes.

    Example: outpost schedule template -p modbus -d cdu-01 > site.csv

    Example: outpost schedule template -p modbus --format xlsx -o site.xlsx
    """
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(
            f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}",
            param_hint="--protocol",
        )
    if device is not None and _ID_RE.fullmatch(device) is None:
        raise typer.BadParameter(
            "a device id is lower-case letters, digits and _ . - (like cdu-01)",
            param_hint="--device",
        )
    if fmt not in TEMPLATE_FORMATS:
        raise typer.BadParameter(
            f"unknown format {fmt!r}; expected one of {', '.join(TEMPLATE_FORMATS)}",
            param_hint="--format",
        )
    if fmt == "csv":
        text = make_template(protocol, device)
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
        return
    data = template_xlsx(protocol, device)
    if output is not None:
        output.write_bytes(data)
    elif sys.stdout.isatty():
        raise typer.BadParameter(
            "an .xlsx workbook is binary: give --output FILE or redirect stdout to a file",
            param_hint="--output",
        )
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


DeviceOption = Annotated[
    str | None,
    typer.Option("--device", "-d", help="only this device's points", show_default=False),
]


@schedule_app.command("probe")
def probe_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(help="schedule files (CSV or .xlsx)", metavar="FILE", show_default=False),
    ],
    config: ConfigOption = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
    sheet: SheetOption = None,
) -> None:
    """Read every point of FILE... once and report value, quality and response time.

    Reads through the running agent's connections when an agent answers on the config's
    socket, with its own drivers otherwise. Never writes.

    Exit 0 when every point reads good, 1 otherwise, 2 when the schedule is invalid.
    """
    from outpost.agent.cli import commissioning as c

    cfg = config_or_exit(config, check_files=False)
    schedule, issues = validate_schedule(list(files), cfg.device_protocols(), sheet=sheet)
    if schedule is None:
        _print_issues(issues)
        typer.echo(f"schedule invalid: {sum(i.is_error for i in issues)} problem(s)", err=True)
        raise typer.Exit(EXIT_TROUBLE)
    if device is not None and device not in schedule.devices:
        raise typer.BadParameter(
            f"no point of these files is on device {device!r}; devices: "
            f"{', '.join(schedule.devices)}",
            param_hint="--device",
        )
    texts = _texts(list(files), sheet)
    report, how = c.run_probe(cfg, schedule, texts, device)
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), "via": how}, indent=2))
    else:
        c.print_report(report, how)
    if not report.ok:
        raise typer.Exit(EXIT_INVALID)


@schedule_app.command("load")
def load_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(help="schedule files (CSV or .xlsx)", metavar="FILE", show_default=False),
    ],
    config: ConfigOption = None,
    probe: Annotated[
        bool, typer.Option("--probe", help="read every point once first; stop if any is bad")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    within: Annotated[
        float,
        typer.Option(
            "--verify-within",
            min=1,
            max=600,
            help="seconds the agent waits for 95% of the points to read good before it rolls back",
        ),
    ] = 60.0,
    sheet: SheetOption = None,
    strict: StrictOption = False,
) -> None:
    """Validate FILE..., show the diff against the running schedule, optionally probe, then
    apply it to the running agent live and print the old and new version.

    The agent stores the files under its data_dir/schedules/pushed/ (as for a schedule pushed
    from the receiver), swaps the schedule live, and rolls back by itself if the points do not
    read good. The config's [schedules] files are not touched: the loaded schedule runs until
    they change. Every attempt, refused or applied, is an event.

    Exit 0 when applied (or already running), 1 when refused, rolled back or not confirmed.
    """
    from outpost.agent.cli import commissioning as c

    cfg = config_or_exit(config, check_files=False)
    names = [f.name for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # the agent stores the files side by side, by name
        raise typer.BadParameter(
            f"two files are named {twice[0]!r}; file names must differ", param_hint="FILE"
        )
    texts = _texts(list(files), sheet)
    schedule, issues = validate_schedule(
        list(files), cfg.device_protocols(), strict=strict, sheet=sheet
    )
    if schedule is None:
        _print_issues(issues)
        c.record_refusal(cfg, texts)
        typer.echo(
            f"schedule invalid: {sum(i.is_error for i in issues)} problem(s); nothing loaded",
            err=True,
        )
        raise typer.Exit(EXIT_INVALID)
    _print_issues(issues)  # warnings only: the schedule is valid
    old_version, old = c.running_schedule(cfg)
    if old_version == schedule.version:
        typer.echo(f"schedule {schedule.version} is already running")
        return
    c.show_diff(old, schedule)
    if probe:
        report, how = c.run_probe(cfg, schedule, texts, None)
        c.print_report(report, how)
        if not report.ok:
            typer.echo("probe failed: nothing loaded", err=True)
            raise typer.Exit(EXIT_INVALID)
    if not yes and not typer.confirm(
        f"load {schedule.version} in place of {old_version}?", default=False
    ):
        typer.echo("not loaded", err=True)
        raise typer.Exit(EXIT_INVALID)
    result = c.apply(cfg, texts, within)
    if result.get("status") != "succeeded":
        typer.echo(f"outpost: {result.get('message')}", err=True)
        _print_issues_text(result.get("errors") or [])
        raise typer.Exit(EXIT_INVALID)
    typer.echo(f"schedule {result.get('previous')} -> {result.get('version')}: {result['message']}")


def _print_issues_text(lines: Sequence[str]) -> None:
    for line in lines:
        typer.echo(line, err=True)
