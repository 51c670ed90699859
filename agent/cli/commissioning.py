"""``outpost schedule probe`` and ``outpost schedule load``: try a schedule on the devices,
then put it into the running agent.

probe reads every point once, through the running agent's drivers when an agent answers on
the config's socket (same connections and sessions as its polls), with drivers of its own
otherwise. It never writes. Exit 0 when every point read good, 1 otherwise, 2 when it could
not run (invalid schedule, bad option).

load validates, shows the diff against the running schedule, optionally probes, then hands
the files to the agent, which applies them as a pushed schedule is applied
(``cloud.commands.schedule_apply``): stored under ``data_dir/schedules/pushed/<version>/``,
installed live, verified, rolled back by itself when the points do not read good.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import typer

from outpost.agent.api.client import AgentAccessDenied, AgentClient, AgentNotRunning, ApiError
from outpost.agent.cli.common import fail
from outpost.agent.core.config import AgentConfig
from outpost.drivers.base import Driver, DriverContext
from outpost.drivers.probe import ProbeReport, probe_points
from outpost.drivers.registry import driver_class
from outpost.point_schedules.diff import diff_schedules, format_diff
from outpost.point_schedules.loader import ScheduleIssue, parse_schedule, validate_schedule
from outpost.point_schedules.model import Point, Schedule

EXIT_BAD = 1
EXIT_TROUBLE = 2


def read_texts(files: list[Path]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for f in files:
        try:
            texts[str(f)] = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            fail(f"{f}: not UTF-8 text (a workbook? save it as CSV to load it)", EXIT_TROUBLE)
        except OSError as exc:
            fail(f"{f}: cannot read file: {exc.strerror or exc}", EXIT_TROUBLE)
    return texts


def print_issues(issues: list[ScheduleIssue] | list[str]) -> None:
    for issue in issues:
        typer.echo(str(issue), err=True)


def valid_or_exit(files: list[Path], devices: dict[str, str], code: int) -> Schedule:
    schedule, issues = validate_schedule(files, devices)
    if schedule is None:
        print_issues(issues)
        fail(f"schedule invalid: {sum(i.is_error for i in issues)} problem(s)", code)
    return schedule


# ------------------------------------------------------------------------------ agent socket


def _agent_answers(cfg: AgentConfig) -> bool:
    try:
        AgentClient(cfg.api.socket, timeout=3.0).get("/schedule")
    except (AgentNotRunning, AgentAccessDenied, ApiError):
        return False
    return True


def _stream(cfg: AgentConfig, route: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    transport = httpx.HTTPTransport(uds=str(cfg.api.socket))
    timeout = httpx.Timeout(10.0, read=None)  # a probe of a big schedule takes its time
    with (
        httpx.Client(transport=transport, base_url="http://outpost", timeout=timeout) as client,
        client.stream("POST", route, json=body) as response,
    ):
        if response.status_code >= 400:
            response.read()
            fail(f"the agent refused: {response.text}", EXIT_TROUBLE)
        for line in response.iter_lines():
            if line.strip():
                yield json.loads(line)


@contextmanager
def _progress(total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    if quiet:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("probing", total=total)
        yield lambda n: bar.advance(task, n)


def probe_through_agent(
    cfg: AgentConfig, texts: dict[str, str], device: str | None, progress: Callable[[int], None]
) -> ProbeReport:
    done = 0
    for message in _stream(cfg, "/schedule/probe", {"files": texts, "device": device}):
        if "done" in message:
            progress(message["done"] - done)
            done = message["done"]
        elif "rejected" in message:
            print_issues(message["rejected"])
            fail("the running agent rejects this schedule", EXIT_TROUBLE)
        elif "report" in message:
            return ProbeReport.from_dict(message["report"])
    fail("the agent ended the probe without a report", EXIT_TROUBLE)


async def probe_locally(
    cfg: AgentConfig, points: list[Point], progress: Callable[[int], None]
) -> ProbeReport:
    context = DriverContext()
    drivers: dict[str, Driver] = {}
    config_errors: dict[str, str] = {}
    for device_id in dict.fromkeys(p.device for p in points):
        dev = cfg.devices[device_id]
        if not dev.enabled:
            continue
        try:
            drivers[device_id] = driver_class(dev.protocol)(device_id, dev, context)
        except (ValueError, OSError) as exc:  # e.g. a secret's variable is not set
            config_errors[device_id] = str(exc)
    try:
        report = await probe_points(
            drivers, points, protocols=cfg.device_protocols(), progress=progress
        )
    finally:
        for driver in drivers.values():
            try:
                await asyncio.wait_for(driver.close(), 2.0)
            except (Exception, TimeoutError):  # closing must not hide the report
                pass
        await context.aclose()
    for found in report.devices:
        if found.device in config_errors:
            found.error = config_errors[found.device]
            for p in report.points:
                if p.device == found.device:
                    p.reason = found.error
    return report


def run_probe(
    cfg: AgentConfig,
    schedule: Schedule,
    texts: dict[str, str],
    device: str | None,
    *,
    quiet: bool = False,
) -> tuple[ProbeReport, str]:
    """(report, how): through the running agent when one answers, else with own drivers."""
    from outpost.agent.core.logs import configure_logging

    # the drivers log through structlog: to stderr, and only what needs attention
    configure_logging("error", "auto")
    points = [p for p in schedule.points if device is None or p.device == device]
    with _progress(len(points), quiet) as progress:
        if _agent_answers(cfg):
            return probe_through_agent(cfg, texts, device, progress), "the running agent"
        return asyncio.run(probe_locally(cfg, points, progress)), "its own drivers"


def _value(v: float | None) -> str:
    if v is None:
        return "—"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"


def print_report(report: ProbeReport, how: str) -> None:
    from rich.table import Table

    from outpost.agent.cli.common import console

    con = console()
    points = Table("point_id", "address", "value", "quality", "ms", "reason")
    for p in report.points:
        style = "" if p.good or p.quality == "skipped" else "red"
        points.add_row(
            p.point_id,
            p.address,
            _value(p.value),
            p.quality,
            "—" if p.response_ms is None else f"{p.response_ms:.1f}",
            p.reason,
            style=style,
        )
    con.print(points)
    devices = Table("device", "protocol", "reachable", "good", "bad", "slowest ms", "error")
    for d in report.devices:
        devices.add_row(
            d.device,
            d.protocol,
            "yes" if d.reachable else "NO",
            str(d.good),
            str(d.bad + d.skipped) if not d.skipped else f"{d.bad} (+{d.skipped} skipped)",
            "—" if d.slowest_ms is None else f"{d.slowest_ms:.1f}",
            d.error,
        )
    con.print(devices)
    good = sum(p.good for p in report.points)
    typer.echo(
        f"{'ok' if report.ok else 'NOT ok'}: {good}/{len(report.points)} points good "
        f"(read once through {how})"
    )


# ------------------------------------------------------------------------------ load


def running_schedule(cfg: AgentConfig) -> tuple[str | None, Schedule | None]:
    """The running agent's schedule version and, when its files are readable text, the
    schedule itself (for the diff)."""
    try:
        body = AgentClient(cfg.api.socket).get("/schedule")
    except (AgentNotRunning, AgentAccessDenied) as exc:
        fail(f"{exc} (load applies to a running agent)")
    except ApiError as exc:
        fail(exc.message)
    files = body.get("files") or []
    if not files or any(f.get("text") is None for f in files):
        return body.get("version"), None
    sources = [(f["name"], f["text"].encode("utf-8")) for f in files]
    schedule, _ = parse_schedule(sources, cfg.device_protocols())
    return body.get("version"), schedule


def show_diff(old: Schedule | None, new: Schedule) -> bool:
    """Print the diff; False when nothing would change."""
    if old is None:
        typer.echo(f"(the running schedule's files cannot be read here; new: {new.version})")
        return True
    diff = diff_schedules(old, new)
    typer.echo(format_diff(diff))
    return not diff.is_empty


def record_refusal(cfg: AgentConfig, texts: dict[str, str]) -> None:
    """An invalid schedule is still sent to the agent, which refuses it with the same loader
    and records the attempt as an event (nothing more happens there)."""
    try:
        AgentClient(cfg.api.socket).post("/schedule/load", {"files": texts})
    except (AgentNotRunning, AgentAccessDenied, ApiError):
        pass


def apply(cfg: AgentConfig, texts: dict[str, str], within_s: float) -> dict[str, Any]:
    client = AgentClient(cfg.api.socket, timeout=within_s + 30.0)
    try:
        result: dict[str, Any] = client.post(
            "/schedule/load", {"files": texts, "within_s": within_s}
        )
    except (AgentNotRunning, AgentAccessDenied) as exc:
        fail(str(exc))
    except ApiError as exc:
        fail(exc.message)
    return result
