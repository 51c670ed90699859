"""`outpost sim` — run the simulated site, and steer a running one.

    outpost sim                                   serve the demo site in the foreground (Ctrl-C stops)
    outpost sim --site my-site.toml               another site file (or $OUTPOST_SIM_CONFIG)
    outpost sim status [--json]                   devices, active scenarios, forced signals, values
    outpost sim set cdu-01.supply_temp 35         force a signal
    outpost sim release cdu-01.supply_temp        back to the physics (no name: release all)
    outpost sim scenario COOLING_FAILURE          start a scenario (--clear ends it)

The steering commands talk to the running sim's control endpoint: ``control`` of the site
file, or ``--control HOST:PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from outpost.agent.cli.common import ConfigOption, fail, print_json

if TYPE_CHECKING:  # the simulators load only when a sim command runs
    from outpost.drivers.sim.site import SimConfig, SimSite

sim_app = typer.Typer(
    help="Simulated site (Modbus CDU/UPS/PDU, BACnet AHU, SNMP PDU on loopback) and its controls.",
    invoke_without_command=True,
)

SiteOption = Annotated[
    Path | None,
    typer.Option(
        "--site",
        envvar="OUTPOST_SIM_CONFIG",
        help="Sim site file (TOML). Default: the packaged demo site (drivers/sim/demo-site.toml).",
        show_default=False,
    ),
]
ControlOption = Annotated[
    str | None,
    typer.Option(
        "--control",
        help="HOST:PORT of the running sim's control endpoint (default: from the site file).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def _load(site: Path | None) -> SimConfig:
    from outpost.drivers.sim.site import SimConfigError, load_sim_config

    try:
        return load_sim_config(site)
    except SimConfigError as exc:
        fail(str(exc), 2)


def _control(ctx: typer.Context, control: str | None) -> str:
    if control:
        return control
    site = ctx.meta.get("outpost.sim.site")
    return str(_load(site).control)


def _request(address: str, request: dict[str, Any]) -> dict[str, Any]:
    from outpost.drivers.sim.site import SimControlError, sim_request

    try:
        return asyncio.run(sim_request(address, request))
    except SimControlError as exc:
        fail(str(exc))


@sim_app.callback()
def sim(
    ctx: typer.Context,
    site: SiteOption = None,
    schedule: Annotated[
        list[Path] | None,
        typer.Option(
            "--schedule",
            help="Simulate the devices of these schedule files (repeatable) instead of the "
            "demo site: every Modbus, BACnet and SNMP device they and the config (-c) name.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="With --schedule: where to write the agent config pointed at the simulator "
            "(default: sim-agent.toml next to the config).",
            show_default=False,
        ),
    ] = None,
    control: Annotated[
        str,
        typer.Option("--control", help="With --schedule: HOST:PORT of the control endpoint."),
    ] = "127.0.0.1:15029",
) -> None:
    """Serve the simulated site in the foreground, or steer a running one (sub-commands).

    With --schedule FILE... -c agent.toml: serve the site's own devices from its schedule
    (addresses, types, byte orders as written) and write an agent config pointing at them.
    """
    ctx.meta["outpost.sim.site"] = site
    if ctx.invoked_subcommand is not None:
        return
    if schedule:
        from outpost.agent.cli.sim_schedule import serve_schedule

        serve_schedule(schedule, config, out, control)
        return
    site_config = _load(site)
    from outpost.agent.core.logs import configure_logging

    configure_logging("info", "auto")
    try:
        asyncio.run(_serve(site_config))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        fail(f"cannot serve the control endpoint {site_config.control}: {exc.strerror or exc}")
    typer.echo("simulated site stopped", err=True)


async def _serve(config: SimConfig) -> None:
    from outpost.drivers.sim.site import SimSite

    site = SimSite(config)
    ready = asyncio.Event()
    runner = asyncio.create_task(site.run(ready), name="sim-site")
    # SIGTERM (systemd, `outpost demo`) stops as cleanly as Ctrl-C
    if sys.platform != "win32":  # no loop signal handlers there
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, runner.cancel)
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()  # start-up failed: raise it
            return
        _print_served(site)
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    finally:
        waiter.cancel()
        runner.cancel()
        try:
            await runner
        except (asyncio.CancelledError, Exception):
            pass


def _print_served(site: SimSite) -> None:
    lines = ["Simulated site serving:"]
    for name, kind in site.kinds.items():
        where = site.endpoints.get(name)
        state = where if where and name not in site.failed else f"FAILED: {site.failed.get(name)}"
        lines.append(f"  {name:<10} {kind:<11} {state}")
    lines.append(f"  control    {site.control}  (outpost sim status|set|release|scenario)")
    lines.append("Ctrl-C stops.")
    print("\n".join(lines), file=sys.stdout, flush=True)


@sim_app.command("status")
def status(ctx: typer.Context, control: ControlOption = None, json_out: JsonOption = False) -> None:
    """Devices, active scenarios, forced signals and every signal's current value."""
    answer = _request(_control(ctx, control), {"op": "status"})
    answer.pop("ok", None)
    if json_out:
        print_json(answer)
        return
    typer.echo("devices:")
    for name, dev in answer["devices"].items():
        where = dev["endpoint"] if not dev.get("error") else f"FAILED: {dev['error']}"
        typer.echo(f"  {name:<10} {dev['kind']:<11} {where}")
    active = answer["scenarios"]
    typer.echo(
        "scenarios: "
        + (
            ", ".join(s["name"] + (f" ({s['target']})" if s["target"] else "") for s in active)
            if active
            else "none"
        )
    )
    forced = answer["forced"]
    typer.echo(
        "forced: " + (", ".join(f"{k}={v:g}" for k, v in forced.items()) if forced else "none")
    )
    typer.echo("signals:")
    for name, value in answer["signals"].items():
        mark = "  (forced)" if name in forced else ""
        typer.echo(f"  {name:<34} {value:12.3f}{mark}")


@sim_app.command("set")
def set_signal(
    ctx: typer.Context,
    signal: Annotated[str, typer.Argument(help="Signal (= point id), e.g. cdu-01.supply_temp")],
    value: Annotated[float, typer.Argument(help="Value in engineering units")],
    control: ControlOption = None,
) -> None:
    """Force a signal to a value until released."""
    _request(_control(ctx, control), {"op": "set", "signal": signal, "value": value})
    typer.echo(f"{signal} forced to {value:g}")


@sim_app.command("release")
def release(
    ctx: typer.Context,
    signal: Annotated[
        str | None, typer.Argument(help="Signal to release; omit to release all")
    ] = None,
    control: ControlOption = None,
) -> None:
    """Hand a forced signal (or all) back to the physics."""
    answer = _request(_control(ctx, control), {"op": "release", "signal": signal})
    released = answer.get("released") or []
    typer.echo(f"released {', '.join(released)}" if released else "nothing was forced")


@sim_app.command("scenario")
def scenario(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            help="COOLING_FAILURE, POWER_SPIKE, MAINS_FAILURE, UNIT_FAULT, LEAK_DETECTED, "
            "CELL_DEGRADATION"
        ),
    ],
    clear: Annotated[bool, typer.Option("--clear", help="End the scenario.")] = False,
    target: Annotated[
        str | None,
        typer.Option("--target", help="Device for UNIT_FAULT (default cdu-01)."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Seconds until it ends by itself.")
    ] = None,
    control: ControlOption = None,
) -> None:
    """Start (or --clear) a scenario on the running sim.

    \b
    COOLING_FAILURE   facility water lost: CDU supply temperature climbs, AHU supply air
                      drifts up, rack temperatures rise
    POWER_SPIKE       IT load x1.5 (SNMP PDU outlets x1.8): PDU/UPS currents and heat rise
    MAINS_FAILURE     UPS runs on battery (charge and runtime fall), chillers lose power
                      (cooling drops to 30 %), SNMP PDU input and loads go to 0
    UNIT_FAULT        --target cdu-01: pump trips; ups-01: inverter fault; pdu-01: breaker
                      L3 trips; ahu-01: fan fails; the SNMP PDU: outlet 1 trips off
    LEAK_DETECTED     CDU leak sensor on, reservoir level drops; MQTT leak sensors report
    CELL_DEGRADATION  the UPS's weakest cell voltage and battery health fall
    """
    request = {
        "op": "scenario",
        "name": name,
        "active": not clear,
        "target": target,
        "duration": duration,
    }
    answer = _request(_control(ctx, control), request)
    active = ", ".join(s["name"] for s in answer["scenarios"]) or "none"
    typer.echo(f"{name.upper()} {'cleared' if clear else 'started'}; active: {active}")
