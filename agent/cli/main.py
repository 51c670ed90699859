"""`outpost` — the command line of the edge agent, its simulator and the receiver."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated

import structlog
import typer
from rich.table import Table

from outpost.agent.cli.common import (
    ConfigOption,
    JsonOption,
    call_agent,
    config_or_exit,
    console,
    print_json,
)
from outpost.agent.core.config import AgentConfig

app = typer.Typer(
    name="outpost",
    help="Outpost edge gateway: run the agent, inspect it, manage schedules, buffer and cloud.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Agent configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.callback()
def _root(
    config: ConfigOption = None,
) -> None:
    """Global options apply to every command (they can also be given after the command)."""
    if config is not None:
        import os

        # Sub-commands read OUTPOST_CONFIG as their default; click runs this callback before it
        # parses the sub-command, so `outpost -c X status` and `outpost status -c X` agree.
        os.environ["OUTPOST_CONFIG"] = str(config)


# ---------------------------------------------------------------------------- run


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the agent in the foreground (systemd: Type=notify). Ctrl-C / SIGTERM stop it cleanly."""
    from outpost.agent.core.logs import configure_logging
    from outpost.agent.core.runtime import EX_CONFIG, Runtime, StartupError

    cfg = config_or_exit(config)
    _secrets_or_exit(cfg)
    _page_or_exit(cfg)
    configure_logging(cfg.logging.level, cfg.logging.format)
    # From here on everything goes through the log, so in JSON mode every line is JSON.
    log = structlog.get_logger("outpost.agent.run")
    try:
        asyncio.run(Runtime(cfg).run())
    except StartupError as exc:
        log.error("agent.start_failed", error=str(exc), exit_code=EX_CONFIG)
        raise typer.Exit(EX_CONFIG) from None
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("agent.crashed")
        raise typer.Exit(1) from None


def _secrets_or_exit(cfg: AgentConfig) -> None:
    """A device secret that cannot be read stops `run` as it fails `config check` (one rule,
    ``drivers.secrets``): same lines, exit 2, before anything starts."""
    from outpost.drivers.secrets import secret_problems

    problems = secret_problems(cfg.devices)
    for device_id, message in problems:
        typer.echo(f'{cfg.config_path}: key "devices.{device_id}": {message}', err=True)
    if problems:
        raise typer.Exit(2)


def _page_or_exit(cfg: AgentConfig) -> None:
    """The status page off loopback needs local users: say so in one line, exit 78 (as any
    configuration error of `run`), before anything starts."""
    from outpost.agent.api.users import lan_bind_problem, users_path
    from outpost.agent.core.runtime import EX_CONFIG

    problem = lan_bind_problem(cfg.api.bind, users_path(cfg.agent.data_dir))
    if problem is not None:
        typer.echo(f"outpost: {problem}", err=True)
        raise typer.Exit(EX_CONFIG)


# ---------------------------------------------------------------------------- config


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the config (and that its schedule files load); print every problem at once."""
    from outpost.drivers.secrets import secret_problems
    from outpost.point_schedules.loader import ScheduleError, load_schedule

    cfg = config_or_exit(config)
    # the same rule as `run` (drivers.secrets): an unreadable secret is a config error
    problems = [
        f'{cfg.config_path}: key "devices.{device_id}": {message}'
        for device_id, message in secret_problems(cfg.devices)
    ]
    try:
        schedule = load_schedule(cfg.schedules.files, cfg.device_protocols())
    except ScheduleError as exc:
        problems.extend(str(issue) for issue in exc.issues)
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        raise typer.Exit(2)
    typer.echo(
        f"{cfg.config_path}: ok — gateway {cfg.agent.id}, {len(cfg.devices)} device(s), "
        f"{len(schedule.points)} point(s), schedule {schedule.version}"
    )


# ---------------------------------------------------------------------------- daemon views


def _fmt_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


@app.command()
def status(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """Show the running agent: mode, devices, schedule, buffer, uplink."""
    body = call_agent(config, "GET", "/status")
    if json_out:
        print_json(body)
        return
    con = console()
    mode = body.get("mode") or {}
    con.print(
        f"[bold]{body['gateway_id']}[/bold] {body.get('site', '')} — mode [bold]{mode.get('mode', '?')}[/bold]"
        f"{' since ' + str(mode['since']) if mode.get('since') else ''}"
        f" — up {body['uptime_s']:.0f}s, {'ready' if body['ready'] else 'starting'}"
    )
    sched = body["schedule"]
    con.print(f"schedule {sched['version']} ({sched['points']} points)")
    table = Table("device", "protocol", "state", "points", "last ok", "error")
    for name, dev in body["devices"].items():
        state = (
            "up"
            if dev.get("connected")
            else ("disabled" if not dev.get("enabled", True) else "DOWN")
        )
        table.add_row(
            name,
            dev.get("protocol", ""),
            state,
            str(dev.get("points", 0)),
            _age(dev.get("last_ok_ts"), body),
            dev.get("last_error") or "",
        )
    con.print(table)
    buf = body.get("buffer") or {}
    if buf:
        con.print(
            f"buffer: {buf.get('rows', 0)} rows, {buf.get('unsynced_rows', 0)} unsynced, "
            f"oldest unsynced {_secs(buf.get('oldest_unsynced_age_s'))}, "
            f"{(buf.get('size_bytes') or 0) / 1e6:.1f} MB"
        )
    up = body.get("uplink")
    if up is None:
        con.print("uplink: none (edge-only)")
    else:
        con.print(
            f"uplink: {'connected' if up.get('connected') else 'NOT connected'}, "
            f"last success {_age(up.get('last_success_ts'), body)}, backlog {up.get('backlog_rows', '?')} rows, "
            f"oldest unsynced {_secs(up.get('oldest_unsynced_age_s'))}, rejected {up.get('rejected_batches', 0)}"
            + (f", last error: {up['last_error']}" if up.get("last_error") else "")
        )
    cmds = body.get("commands")
    if cmds is not None:
        last = cmds.get("last_command")
        con.print(
            f"commands: {'connected' if cmds.get('connected') else 'NOT connected'}, last "
            + (
                f"#{last['id']} {last['kind']} {last['status']} {_age(last.get('at'), body)}"
                if last
                else "none"
            )
            + f", pending results {cmds.get('pending_results', 0)}, remote writes "
            + ("on" if cmds.get("remote_writes") else "off")
            + (f", last error: {cmds['last_error']}" if cmds.get("last_error") else "")
        )
    alarms = body.get("alarms")
    if alarms is not None:
        con.print("alarms: " + (", ".join(f"{k} {v}" for k, v in alarms.items()) or "none active"))


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}s"


def _age(ts: float | None, body: dict) -> str:
    if not ts:
        return "never"
    import time

    return f"{max(0.0, time.time() - ts):.0f}s ago"


@app.command()
def points(
    config: ConfigOption = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="Only this device.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Live value of every point (or one device's points)."""
    rows = call_agent(config, "GET", "/points", params={"device": device} if device else None)
    if json_out:
        print_json(rows)
        return
    table = Table("point_id", "device", "value", "units", "quality", "ts")
    for r in rows:
        table.add_row(
            r["point_id"],
            r["device"],
            _fmt_value(r["value"]),
            r["units"],
            r["quality"],
            r["ts"] or "—",
        )
    console().print(table)


@app.command()
def read(
    point_id: Annotated[
        str | None,
        typer.Argument(help="Point id, e.g. cdu-01.supply_temp", show_default=False),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Read this address once, without a schedule or agent: "
            "modbus://HOST:PORT/UNIT/hr:40?type=float32&order=CDAB, "
            "bacnet://HOST:PORT/DEVICE_INSTANCE/analog-input:1, "
            "snmp://HOST:PORT/1.3.6.1.2.1.1.3.0?community_env=VAR",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Current value of one point (from the running agent), or of any --address (read now)."""
    if (point_id is None) == (address is None):
        typer.echo("outpost: give either a POINT id or --address URL", err=True)
        raise typer.Exit(2)
    if address is not None:
        from outpost.agent.cli.scan import read_address

        read_address(address, json_out)
        return
    row = call_agent(config, "GET", f"/points/{point_id}")
    if json_out:
        print_json(row)
        return
    typer.echo(
        f"{row['point_id']} = {_fmt_value(row['value'])} {row['units']}".rstrip()
        + f"  [{row['quality']}] at {row['ts'] or '—'}"
    )


@app.command()
def reload(config: ConfigOption = None) -> None:
    """Reload the running agent's schedule files (as SIGHUP does) and wait for the outcome.

    Exit 0 with the new version when the files load; exit 1 with the loader's errors when
    they are rejected (the running schedule stays, and the rejection is an event).
    """
    body = call_agent(config, "POST", "/reload")
    if "version" not in body:  # an agent without the schedule routes only queues the reload
        typer.echo("reload requested; see `outpost status` for the schedule version")
        return
    previous = body.get("previous")
    same = " (unchanged)" if previous == body["version"] else f" (was {previous})"
    typer.echo(f"schedule {body['version']} loaded{same}")


# ---------------------------------------------------------------------------- sub-apps


def _mount() -> None:
    """Add every command group. Imported here, not at the top, so `outpost run` (the daemon)
    does not load simulators, the receiver or discovery; a missing or renamed module still
    fails loudly at the first command that mounts them."""
    from outpost.agent.cli import (
        buffer,
        cloud,
        control,
        demo,
        discover,
        scan,
        schedule,
        sim,
        user,
    )

    app.add_typer(schedule.schedule_app, name="schedule")
    app.add_typer(buffer.buffer_app, name="buffer")
    app.add_typer(sim.sim_app, name="sim")
    app.add_typer(cloud.cloud_app, name="cloud")
    app.add_typer(discover.discover_app, name="discover")
    app.add_typer(scan.scan_app, name="scan")
    app.add_typer(user.user_app, name="user")
    control.register(app)
    demo.register(app)


_mounted: list[bool] = []


def get_app() -> typer.Typer:
    """The fully mounted app (also what tests drive with typer's CliRunner)."""
    if not _mounted:
        _mount()
        _mounted.append(True)
    return app


def main() -> None:
    import sys

    # The daemon needs none of the other sub-commands: not importing them keeps the
    # long-running process smaller (simulators, receiver, discovery stay out of its memory).
    if "run" in sys.argv[1:3]:
        app()
    else:
        get_app()()
