"""``outpost sim --schedule FILE... -c agent.toml [--out sim-agent.toml]``: serve the site's own
devices, built from its schedule (``drivers.sim.from_schedule``), and write the agent config
that points at them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from outpost.agent.cli.common import config_or_exit, fail
from outpost.drivers.base import DeviceConfig
from outpost.point_schedules.loader import validate_schedule
from outpost.point_schedules.model import Schedule


def serve_schedule(files: list[Path], config: Path | None, out: Path | None, control: str) -> None:
    from outpost.agent.core.logs import configure_logging

    cfg = config_or_exit(config, check_files=False)
    schedule, issues = validate_schedule(files, cfg.device_protocols())
    if schedule is None:
        for issue in issues:
            typer.echo(str(issue), err=True)
        fail(f"schedule invalid: {sum(i.is_error for i in issues)} problem(s)", 2)
    raw = tomllib.loads(cfg.config_path.read_text(encoding="utf-8"))
    out = (out or cfg.config_path.parent / "sim-agent.toml").resolve()
    configure_logging("warning", "auto")
    try:
        asyncio.run(_serve(schedule, cfg.devices, raw, cfg.config_path.parent, files, out, control))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        fail(f"cannot serve: {exc.strerror or exc}")
    typer.echo("simulator stopped", err=True)


async def _serve(
    schedule: Schedule,
    devices: Mapping[str, DeviceConfig],
    raw: dict[str, Any],
    config_dir: Path,
    files: list[Path],
    out: Path,
    control: str,
) -> None:
    from outpost.drivers.sim.from_schedule import (
        SIM_COMMUNITY,
        ScheduleSite,
        dump_toml,
        sim_agent_config,
    )

    site = ScheduleSite(schedule, devices, control=control)
    ready = asyncio.Event()
    runner = asyncio.create_task(site.run(ready), name="sim-schedule")
    if sys.platform != "win32":
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, runner.cancel)
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = sim_agent_config(
            raw, config_dir, site.served, [f.resolve() for f in files], out.parent
        )
        _write_config(out, dump_toml(doc), config_dir, SIM_COMMUNITY)
        lines = [f"Simulating schedule {schedule.version}:"]
        for s in site.served.values():
            lines.append(f"  {s.device:<14} {s.protocol:<7} {s.endpoint:<22} {s.points} points")
        for device, why in site.skipped.items():
            lines.append(f"  {device:<14} not simulated: {why}")
        lines.append(
            f"  control        {site.control}  (outpost sim status|set|release --control {site.control})"
        )
        lines.append(f"Agent config for the simulator: {out}")
        lines.append(f"  run it: outpost run -c {out}")
        lines.append("Ctrl-C stops.")
        print("\n".join(lines), flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    finally:
        waiter.cancel()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner


def _write_config(out: Path, text: str, config_dir: Path, community: str) -> None:
    (out.parent / "sim-community").write_text(community + "\n")
    out.write_text(
        f"# written by `outpost sim --schedule`: {config_dir} pointed at the simulator\n" + text
    )
