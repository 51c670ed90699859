"""``outpost discover bacnet|snmp``: find points on live devices and write a schedule skeleton.

The skeleton (CSV) goes to ``--out`` or stdout; progress and a matching ``[devices.*]`` config
snippet go to stderr, so ``outpost discover bacnet --target 10.0.0.5 > ahu.csv`` works. The
skeleton is a valid schedule once its ``device`` column names devices of the agent config
(the suggested ids come from the devices' own names).

Exit codes: 0 points found; 1 nothing answered / nothing found; 2 bad options.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from outpost.agent.core.config import ID_PATTERN
from outpost.point_schedules.skeleton import DiscoveredPoint, write_skeleton

discover_app = typer.Typer(
    help="Discover devices and points (BACnet/IP, SNMP) and write a schedule skeleton CSV.",
    no_args_is_help=True,
)

OutOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="write the CSV here (default: stdout)", show_default=False),
]


def _quiet_logs() -> None:
    # stdout may carry the CSV: log lines go to stderr, and only problems.
    from outpost.agent.core.logs import configure_logging

    configure_logging("warning", "console", stream=sys.stderr)


def _progress(message: str) -> None:
    typer.echo(f"  {message}", err=True)


def _fail(message: str, code: int) -> None:
    typer.echo(f"outpost: {message}", err=True)
    raise typer.Exit(code)


def _write(points: list[DiscoveredPoint], out: Path | None, header: str) -> None:
    if out is None:
        count = write_skeleton(points, sys.stdout, header_comment=header)
        sys.stdout.flush()
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8", newline="") as fh:
            count = write_skeleton(points, fh, header_comment=header)
    typer.echo(f"wrote {count} points to {out or 'stdout'}", err=True)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@discover_app.command("bacnet")
def bacnet(
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="HOST[:PORT] of one device, or a directed broadcast (e.g. 192.168.1.255); "
            "default: broadcast on the --local network",
            show_default=False,
        ),
    ] = None,
    local: Annotated[
        str,
        typer.Option(
            "--local",
            "-l",
            # brackets escaped: typer renders help as rich markup, where [/PREFIX] is a tag
            help="this machine's BACnet/IP endpoint HOST\\[/PREFIX]\\[:PORT]; the prefix sets the "
            "broadcast network (e.g. 192.168.1.10/24). Use another port than 47808 when an "
            "Outpost agent runs on this machine.",
        ),
    ] = "0.0.0.0:47808",
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="seconds to wait for I-Am answers")
    ] = 3.0,
    out: OutOption = None,
) -> None:
    """Who-Is, then read every device's object list, names and units into a skeleton CSV."""
    from outpost.drivers.bacnet import parse_host_port
    from outpost.drivers.bacnet.discovery import config_snippet, discover_bacnet_devices

    _quiet_logs()
    try:
        host, prefix, _ = parse_host_port(local)
        if target is not None:
            parse_host_port(target)
    except ValueError as exc:
        _fail(str(exc), 2)
    if target is None and (prefix is None or prefix == 32):
        _fail(
            f"a broadcast Who-Is needs the network: give --local with a prefix (e.g. "
            f"--local {host if host != '0.0.0.0' else '192.168.1.10'}/24) or a --target",
            2,
        )
    typer.echo(f"discovering BACnet devices from {local} …", err=True)
    try:
        devices = asyncio.run(
            discover_bacnet_devices(
                local_address=local, target=target, timeout=timeout, progress=_progress
            )
        )
    except OSError as exc:
        _fail(str(exc), 1)
    points = [p for d in devices for p in d.points]
    if not points:
        _fail(
            "no BACnet device answered"
            if not devices
            else "the devices that answered have no point objects",
            1,
        )
    snippet = config_snippet(devices, local)
    typer.echo("\nagent config for these devices:\n" + snippet, err=True)
    header = "\n".join(
        [
            f"outpost discover bacnet {_stamp()}: {len(devices)} device(s), {len(points)} points",
            *(
                f"{d.device_id}: device {d.instance} at {d.address} {d.name!r} "
                f"{d.vendor} {d.model}".rstrip()
                for d in devices
            ),
        ]
    )
    _write(points, out, header)


@discover_app.command("snmp")
def snmp(
    target: Annotated[
        str, typer.Argument(help="the SNMP agent: HOST, HOST:PORT or [IPv6-ADDRESS]:PORT")
    ],
    port: Annotated[
        int | None,
        typer.Option("--port", "-p", min=1, max=65535, help="UDP port (default 161)"),
    ] = None,
    community_env: Annotated[
        str,
        typer.Option(
            "--community-env",
            help="environment variable holding the v2c community (never on the command line)",
        ),
    ] = "SNMP_COMMUNITY",
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            "-d",
            help="device id for the rows and the config block (default: from sysName)",
            show_default=False,
        ),
    ] = None,
    walk: Annotated[
        list[str] | None,
        typer.Option(
            "--walk",
            "-w",
            help="also propose every numeric value under this OID subtree (repeatable)",
            show_default=False,
        ),
    ] = None,
    enterprise: Annotated[
        bool,
        typer.Option(
            "--enterprise/--no-enterprise", help="walk the vendor subtree named by sysObjectID"
        ),
    ] = True,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="seconds per request")] = 2.0,
    out: OutOption = None,
) -> None:
    """Walk the system group, IF-MIB, ENTITY-SENSOR-MIB and the vendor's enterprise subtree
    into a skeleton CSV (SNMP v2c), and print the device's config block."""
    from outpost.drivers.snmp.discovery import (
        DiscoveryError,
        config_snippet,
        discover_snmp,
        parse_oid,
        parse_target,
    )

    try:
        host, target_port = parse_target(target)
        roots = [parse_oid(oid) for oid in walk or []]
    except ValueError as exc:
        _fail(str(exc), 2)
    if port is not None:
        if target_port not in (161, port):
            _fail(f"two ports given: {target} and --port {port}", 2)
        target_port = port
    if device is not None and not re.fullmatch(ID_PATTERN, device):
        _fail(f"--device {device!r}: a device id must match {ID_PATTERN}", 2)
    community = os.environ.get(community_env)
    if not community:
        _fail(
            f"environment variable {community_env} is not set: put the community there, or name "
            "another variable with --community-env",
            2,
        )
    _quiet_logs()
    typer.echo(f"discovering SNMP points on {host}:{target_port} …", err=True)
    try:
        points = asyncio.run(
            discover_snmp(
                host,
                target_port,
                community=community or "",
                device_id=device,
                walk=roots,
                enterprise=enterprise,
                timeout=timeout,
                progress=_progress,
            )
        )
    except DiscoveryError as exc:
        _fail(str(exc), 1)
    if not points:
        _fail(f"{host}:{target_port} answered but offers no points", 1)
    snippet = config_snippet(points[0].device, host, target_port, community_env)
    typer.echo("\nagent config for this device:\n" + snippet, err=True)
    header = f"outpost discover snmp {_stamp()}: {host}:{target_port}, {len(points)} points"
    _write(points, out, header)
