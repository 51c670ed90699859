"""``outpost scan modbus`` (which addresses of a device answer) and ``outpost read --address``
(read one address once, without a schedule). Neither needs a config or a running agent.

Exit codes: scan 0 when something answered, 1 when nothing did, 2 on bad options or no
connection; read --address 0 when the value reads good, 1 otherwise, 2 on a bad URL.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from outpost.agent.cli.common import JsonOption, fail

scan_app = typer.Typer(
    help="Find what a device answers, to help write a schedule.", no_args_is_help=True
)


def _host_port(text: str, default: int) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        return text, default
    try:
        port = int(port_text)
    except ValueError:
        fail(f"HOST[:PORT]: bad port {port_text!r}", 2)
    if not host or not 0 < port < 65536:
        fail(f"HOST[:PORT]: expected e.g. 192.0.2.10:502, got {text!r}", 2)
    return host, port


@scan_app.command("modbus")
def scan_modbus(
    target: Annotated[str, typer.Argument(metavar="HOST[:PORT]", help="Modbus TCP device")],
    unit: Annotated[int, typer.Option("--unit", "-u", min=0, max=255, help="unit id")] = 1,
    table: Annotated[
        str, typer.Option("--table", "-t", help="hr, ir, coil or di", show_default=True)
    ] = "hr",
    address_range: Annotated[
        str, typer.Option("--range", "-r", help="FIRST-LAST wire addresses (0-based)")
    ] = "0-9999",
    timeout: Annotated[float, typer.Option("--timeout", min=0.05, help="seconds")] = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Which addresses answer and which raise exceptions, as ranges.

    Reads in blocks as large as a request allows and splits a refused block in halves down to
    single addresses (as the poller isolates a bad register). Only reads.
    """
    from outpost.drivers.modbus.scan import TABLES, ScanError, parse_range, scan

    if table not in TABLES:
        fail(f"--table: expected one of {', '.join(TABLES)}, got {table!r}", 2)
    try:
        first, last = parse_range(address_range)
    except ValueError as exc:
        fail(f"--range: {exc}", 2)
    host, port = _host_port(target, 502)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    with Progress(
        f"scanning {table} {first}-{last}",
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("scan", total=last - first + 1)
        try:
            result = asyncio.run(
                scan(
                    host,
                    port,
                    unit=unit,
                    table=table,  # checked against TABLES above
                    first=first,
                    last=last,
                    request_timeout=timeout,
                    progress=lambda n: bar.advance(task, n),
                )
            )
        except ScanError as exc:
            fail(str(exc), 2)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        from rich.table import Table

        from outpost.agent.cli.common import console

        out = Table("addresses", "count", "outcome")
        for run in result.runs:
            span = f"{table}:{run.start}" + (f"-{run.end}" if run.count > 1 else "")
            out.add_row(span, str(run.count), run.outcome, style="" if run.ok else "dim")
        console().print(out)
        answering = sum(r.count for r in result.runs if r.ok)
        typer.echo(
            f"{answering} of {last - first + 1} addresses answer "
            f"({result.requests} requests, {result.seconds:.1f}s)"
        )
    if not any(r.ok for r in result.runs):
        raise typer.Exit(1)


def read_address(url: str, as_json: bool) -> None:
    """``outpost read --address URL``: one read through the real driver."""
    from outpost.agent.core.logs import configure_logging
    from outpost.drivers.adhoc import AdhocError, parse_point_url
    from outpost.drivers.base import DriverContext
    from outpost.drivers.probe import probe_points
    from outpost.drivers.registry import driver_class

    try:
        target = parse_point_url(url)
    except AdhocError as exc:
        fail(f"--address: {exc}", 2)
    configure_logging("error", "auto")  # driver logs to stderr, only what needs attention

    async def once() -> dict[str, object]:
        context = DriverContext()
        try:
            driver = driver_class(target.protocol)(target.point.device, target.device, context)
        except Exception as exc:  # e.g. a community variable that is not set
            fail(f"--address: {exc}", 2)
        try:
            report = await probe_points(
                {target.point.device: driver},
                [target.point],
                protocols={target.point.device: target.protocol},
            )
        finally:
            await driver.close()
            await context.aclose()
        p = report.points[0]
        return {
            "address": url,
            "value": p.value,
            "quality": p.quality,
            "reason": p.reason,
            "response_ms": p.response_ms,
        }

    row = asyncio.run(once())
    if as_json:
        typer.echo(json.dumps(row, indent=2))
    else:
        value = row["value"]
        shown = "—" if value is None else f"{value:.10g}"
        reason = f" ({row['reason']})" if row["reason"] else ""
        ms = row["response_ms"]
        timing = "" if ms is None else f" in {ms:.1f} ms"
        typer.echo(f"{url} = {shown}  [{row['quality']}]{reason}{timing}")
    if row["quality"] != "good":
        raise typer.Exit(1)
