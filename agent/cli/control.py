"""``outpost alarms | ack | shelve | unshelve | mode … | write | events``: local control.

``register(app)`` adds the commands to the root app (``outpost.agent.cli`` calls it). They talk to
the running daemon over its Unix socket (``agent.api.client.AgentClient`` via ``call_agent``);
the actor recorded with every action is the OS user running the command, as the daemon reads it
from the socket (peer credentials), not from anything the command sends. ``events`` asks the daemon
(``GET /events``) and, when no agent is running, reads the buffer file directly, so the history
is there after a crash too.
"""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from outpost.agent.api.client import AgentAccessDenied, AgentNotRunning, ApiError
from outpost.agent.cli.common import (
    ConfigOption,
    JsonOption,
    call_agent,
    client_for,
    config_or_exit,
    console,
    fail,
    print_json,
)
from outpost.fsm.clock import format_duration, parse_duration

mode_app = typer.Typer(
    help="Show or change the site's operating mode (`outpost mode` shows it).",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc}", 2)


def _local(iso_text: str | None) -> str:
    """ISO UTC → short local time for tables (machine output keeps ISO UTC)."""
    if not iso_text:
        return ""
    try:
        ts = datetime.fromisoformat(iso_text.replace("Z", "+00:00"))
    except ValueError:
        return iso_text
    local = ts.astimezone()
    today = datetime.now(UTC).astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _alarm_line(a: dict[str, Any]) -> str:
    return f"{a['id']}: {a['state']}" + (
        f" (shelved until {_local(a['shelved_until'])})" if a.get("shelved_until") else ""
    )


# ------------------------------------------------------------------------------ alarms


def alarms(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Also alarms that are normal.")] = False,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List alarms: active, unacknowledged, shelved and out-of-service ones (--all: every one)."""
    rows = call_agent(config, "GET", "/alarms", params={"all": str(all_).lower()})
    if json_out:
        print_json(rows)
        return
    if not rows:
        typer.echo("no alarms" if all_ else "no active or unacknowledged alarms")
        return
    from rich.table import Column, Table

    table = Table("state", "priority", "value", "limit", "since", "acked by", "note")
    # ids and states are what people copy into `outpost ack`: never wrap them
    table.columns.insert(0, Column("alarm", no_wrap=True))
    table.columns[1].no_wrap = True
    styles = {"unack_active": "bold red", "rtn_unack": "yellow", "ack_active": "red"}
    for a in rows:
        value = _num(a.get("value"))
        if value and a.get("units"):
            value += f" {a['units']}"
        note = a.get("shelve_note") or a.get("ack_note") or ""
        if a.get("shelved_until"):
            note = f"until {_local(a['shelved_until'])} {note}".strip()
        elif a.get("one_shot"):
            note = f"one-shot {note}".strip()
        table.add_row(
            a["id"],
            a["state"],
            a["priority"],
            value,
            _num(a.get("limit")),
            _local(a.get("activated_at")),
            a.get("acked_by") or "",
            note,
            style=styles.get(a["state"], ""),
        )
    console().print(table)


def ack(
    alarm_id: Annotated[
        str | None,
        typer.Argument(help="e.g. cdu-01.supply_temp:hi (or --all)", show_default=False),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Every alarm waiting for acknowledgement.")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="With --all: only this device's.")
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option("--priority", "-p", help="With --all: only critical|high|medium|low."),
    ] = None,
    note: Annotated[str | None, typer.Option("--note", "-n", help="Why / what was done.")] = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Acknowledge an alarm, or a flood of them with --all (recorded with your user name)."""
    if all_ == (alarm_id is not None):
        fail("give either an ALARM id or --all (with --device/--priority to narrow it)", 2)
    if not all_ and (device is not None or priority is not None):
        fail("--device and --priority go with --all", 2)
    if alarm_id is not None:
        body = call_agent(config, "POST", f"/alarms/{alarm_id}/ack", json={"note": note})
        if json_out:
            print_json(body)
        else:
            typer.echo(f"acknowledged {_alarm_line(body)}")
        return
    many = call_agent(
        config,
        "POST",
        "/alarms/ack",
        json={"all": True, "device": device, "priority": priority, "note": note},
    )
    if json_out:
        print_json(many)
        return
    for a in many["acked"]:
        typer.echo(f"acknowledged {_alarm_line(a)}")
    for skipped in many["skipped"]:
        typer.echo(f"skipped {skipped['id']}: {skipped['reason']}", err=True)
    if not many["acked"]:
        typer.echo("nothing to acknowledge")


def shelve(
    alarm_id: Annotated[str, typer.Argument(help="e.g. cdu-01.supply_temp:hi")],
    for_: Annotated[
        str | None,
        typer.Option("--for", help="How long: 90s, 30m, 2h, 1h30m (max: alarms.shelve_max_s)."),
    ] = None,
    one_shot: Annotated[
        bool, typer.Option("--one-shot", help="Until the alarm next returns to normal.")
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason", "-r", "--note", "-n", help="Why (required: a shelve is a recorded act)."
        ),
    ] = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Shelve an alarm: hidden from the active list for a time, still evaluated underneath.

    A reason is required (ISA-18.2); critical alarms only where alarms.allow_shelve_critical
    is on."""
    if (for_ is None) == (not one_shot):
        fail("give either --for DURATION (e.g. --for 30m) or --one-shot", 2)
    duration = None if one_shot else _duration(for_ or "", "--for")
    if reason is None or not reason.strip():
        fail('shelving needs a reason: --reason "why" (it is recorded with your name)', 2)
    body = call_agent(
        config,
        "POST",
        f"/alarms/{alarm_id}/shelve",
        json={"duration_s": duration, "reason": reason},
    )
    if json_out:
        print_json(body)
    elif duration is None:
        typer.echo(f"shelved {alarm_id} until it next returns to normal (one-shot)")
    else:
        typer.echo(
            f"shelved {alarm_id} for {format_duration(duration)} "
            f"(until {_local(body['shelved_until'])})"
        )


def unshelve(
    alarm_id: Annotated[str, typer.Argument(help="e.g. cdu-01.supply_temp:hi")],
    note: Annotated[str | None, typer.Option("--note", "-n")] = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """End a shelve now; the alarm shows its true state at once."""
    body = call_agent(config, "POST", f"/alarms/{alarm_id}/unshelve", json={"note": note})
    if json_out:
        print_json(body)
    else:
        typer.echo(f"unshelved {_alarm_line(body)}")


# ------------------------------------------------------------------------------- modes


def _print_mode(state: dict[str, Any]) -> None:
    line = f"mode {state['mode']}"
    if state.get("since"):
        line += f" since {_local(state['since'])}"
    if state.get("until"):
        line += f", until {_local(state['until'])}"
    typer.echo(line)
    if state.get("cause"):
        typer.echo(f"  cause:  {state['cause']}")
    if state.get("reason"):
        typer.echo(f"  reason: {state['reason']}")
    if state.get("actor"):
        typer.echo(f"  by:     {state['actor']}")
    if state.get("scope"):
        typer.echo(f"  scope:  {state['scope']}")
    for w in state.get("failsafe_writes") or []:
        typer.echo(
            f"  failsafe {w['point']} = {_num(w['value'])}: {w['result']} {w.get('message') or ''}"
        )


@mode_app.callback()
def mode(
    ctx: typer.Context,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show the current mode, since when and why."""
    if ctx.invoked_subcommand is not None:
        return
    state = call_agent(config, "GET", "/mode")
    if json_out:
        print_json(state)
    else:
        _print_mode(state)


@mode_app.command("set")
def mode_set(
    name: Annotated[str, typer.Argument(help="The mode to set: maintenance.")],
    for_: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 1h30m.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (recorded, shown).")],
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            help="Suppress only these: devices and tag:NAME, comma-separated (default: config).",
        ),
    ] = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Put the site into maintenance: alarms in scope are suppressed until it expires."""
    if name != "maintenance":
        fail(f"only maintenance can be set by hand (got {name!r}); see `outpost mode graph`", 2)
    duration = _duration(for_, "--for")
    state = call_agent(
        config,
        "POST",
        "/mode",
        json={
            "mode": name,
            "duration_s": duration,
            "reason": reason,
            "scope": scope,
        },
    )
    if json_out:
        print_json(state)
    else:
        _print_mode(state)


@mode_app.command("clear")
def mode_clear(
    reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why.")] = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Leave maintenance, or emergency once its condition is gone."""
    state = call_agent(config, "POST", "/mode/clear", json={"reason": reason})
    if json_out:
        print_json(state)
    else:
        _print_mode(state)


@mode_app.command("graph")
def mode_graph(
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or mermaid.")] = "text",
    config: ConfigOption = None,
) -> None:
    """Print the mode state machine (text, or a Mermaid diagram)."""
    if fmt not in ("text", "mermaid"):
        fail(f"--format: expected text or mermaid, got {fmt!r}", 2)
    body = call_agent(config, "GET", "/mode/graph", params={"format": fmt})
    sys.stdout.write(body["graph"])


# ------------------------------------------------------------------------------ writes


def write(
    point_id: Annotated[str, typer.Argument(metavar="POINT")],
    value_text: Annotated[
        str, typer.Argument(metavar="VALUE", help="Engineering value, e.g. 21.5 or -5.")
    ],
    priority: Annotated[
        int | None, typer.Option("--priority", "-p", help="BACnet priority 1..16.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Read back and compare.")
    ] = True,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Write a value to a writable point: range-checked, read back, recorded with your name.

    Exits 1 unless the device holds the value afterwards.
    """
    try:
        value = float(value_text)
    except ValueError:
        fail(f"VALUE: expected a number, got {value_text!r}", 2)
    if not math.isfinite(value):  # nan, inf, and 1e309 (which float() makes inf)
        fail(f"VALUE: expected a finite number, got {value_text!r}", 2)
    if not yes:
        live = call_agent(config, "GET", f"/points/{point_id}")
        units = f" {live.get('units')}" if live.get("units") else ""
        now = _num(live.get("value"))
        prompt = f"write {_num(value)}{units} to {point_id} (now {now or 'unknown'}{units})?"
        if not typer.confirm(prompt, default=False):
            fail("not written", 1)
    outcome = call_agent(
        config,
        "POST",
        f"/points/{point_id}/write",
        json={"value": value, "priority": priority, "verify": verify},
    )
    if json_out:
        print_json(outcome)
    else:
        units = f" {outcome['units']}" if outcome.get("units") else ""
        if outcome["result"] == "ok":
            typer.echo(
                f"{point_id} = {_num(outcome['value'])}{units} (read back {_num(outcome['read_back'])})"
            )
        elif outcome["ok"]:
            typer.echo(f"{point_id} = {_num(outcome['value'])}{units} ({outcome['result']})")
        else:
            typer.echo(f"outpost: write {outcome['result']}: {outcome['message']}", err=True)
    if not outcome["ok"]:
        raise typer.Exit(1)


def relinquish(
    point_id: Annotated[str, typer.Argument(metavar="POINT")],
    priority: Annotated[
        int | None,
        typer.Option("--priority", "-p", help="BACnet priority 1..16 (default: the device's)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """BACnet: release this agent's command on a point (write null at the priority)."""
    if not yes:
        live = call_agent(config, "GET", f"/points/{point_id}")
        units = f" {live.get('units')}" if live.get("units") else ""
        now = _num(live.get("value"))
        if not typer.confirm(
            f"relinquish {point_id} (now {now or 'unknown'}{units})?", default=False
        ):
            fail("not relinquished", 1)
    outcome = call_agent(
        config,
        "POST",
        f"/points/{point_id}/relinquish",
        json={"priority": priority},
    )
    if json_out:
        print_json(outcome)
    elif outcome["ok"]:
        units = f" {outcome['units']}" if outcome.get("units") else ""
        typer.echo(f"{point_id}: relinquished; now {_num(outcome['read_back'])}{units}")
    else:
        typer.echo(f"outpost: relinquish {outcome['result']}: {outcome['message']}", err=True)
    if not outcome["ok"]:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------ events


def _event_summary(e: dict[str, Any]) -> str:
    d = e.get("detail") or {}
    parts = []
    if "from" in d and "to" in d and d["from"] != d["to"]:
        parts.append(f"{d['from']} → {d['to']}")
    elif d.get("base_from") and d.get("base_to") and d["base_from"] != d["base_to"]:
        # a change under an overlay (shelved/suppressed): show what moved underneath
        parts.append(f"{d['from']} ({d['base_from']} → {d['base_to']})")
    if d.get("result"):
        parts.append(f"{_num(d.get('value'))} {d['result']}".strip())
    for key in ("cause", "reason", "note", "message"):
        if d.get(key):
            parts.append(f"{key}: {d[key]}")
    return "; ".join(parts)


def events(
    since: Annotated[
        str | None,
        typer.Option("--since", help="ISO 8601 time or a duration back (30m, 2h, 1d)."),
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="alarm, mode, operator, write, system, ...")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Most recent N; 0 = all.")] = 200,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Recorded events: alarm transitions, mode changes, operator actions, writes."""
    from outpost.agent.control.events import parse_since, read_events

    try:
        parse_since(since)
    except ValueError as exc:
        fail(f"--since: {exc}", 2)
    params = {"since": since, "kind": kind, "limit": limit}
    try:
        rows = client_for(config).get("/events", **params)
    except AgentNotRunning:
        path: Path = config_or_exit(config, check_files=False).buffer.path
        if not path.is_file():
            fail(f"no agent running and no buffer file at {path}")
        from outpost.buffer.schema import BufferFileError

        try:
            rows = read_events(path, since=parse_since(since), kind=kind, limit=limit)
        except (BufferFileError, OSError) as exc:
            fail(str(exc))
        typer.echo(f"(no agent running: read {path})", err=True)
    except AgentAccessDenied as exc:
        fail(str(exc))
    except ApiError as exc:
        fail(exc.message)
    if json_out:
        print_json(rows)
        return
    if not rows:
        typer.echo("no events")
        return
    from rich.table import Table

    table = Table("time", "kind", "source", "actor", "detail")
    for e in rows:
        table.add_row(
            _local(e["ts"]), e["kind"], e["source"], e.get("actor") or "", _event_summary(e)
        )
    console().print(table)


# ---------------------------------------------------------------------------- register


def register(app: typer.Typer) -> None:
    """Add the local-control commands to the root ``outpost`` app."""
    app.command("alarms")(alarms)
    app.command("ack")(ack)
    app.command("shelve")(shelve)
    app.command("unshelve")(unshelve)
    app.add_typer(mode_app, name="mode")
    # negative values (`outpost write p -5`) are values, not options
    app.command("write", context_settings={"ignore_unknown_options": True})(write)
    app.command("relinquish")(relinquish)
    app.command("events")(events)
