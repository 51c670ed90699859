"""``outpost cloud rollout {start,status,abort}``: schedule rollouts from the receiver host.

Like ``outpost cloud enroll``, these work on the receiver's database directly (``--dsn``,
``$OUTPOST_RECEIVER_DSN`` or the embedded server in ``--data-dir``); the running receiver's
long-polls wake through PostgreSQL NOTIFY, and the rollout advances inside the receiver as
results arrive. The actor is the OS user as ``name@fleet``; every start/abort is audited.

``start`` prints the rollout id alone on stdout (``RID=$(outpost cloud rollout start ...)``);
``--wait`` follows it to the end and exits 1 unless it succeeded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .settings import DEFAULT_DATA_DIR, DSN_ENV

rollout_app = typer.Typer(
    help="Schedule rollouts: canary first, verified by probe, then the rest; halt on failure.",
    no_args_is_help=True,
)

DsnOption = Annotated[
    str | None,
    typer.Option("--dsn", envvar=DSN_ENV, show_default=False, help="PostgreSQL DSN."),
]
DataDirOption = Annotated[
    Path, typer.Option("--data-dir", help="Receiver data dir (embedded PostgreSQL).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine output.")]


def _run(fn: Any, dsn: str | None, data_dir: Path) -> Any:
    from .command_store import CommandStore
    from .rollouts import RolloutEngine
    from .server import run_with_storage

    async def go(storage: Any) -> Any:
        engine = RolloutEngine(storage.pool)
        engine.commands = CommandStore(storage.pool, on_final=engine.on_final)
        return await fn(engine, storage)

    return run_with_storage(go, dsn=dsn, data_dir=data_dir)


@rollout_app.callback()
def _setup() -> None:
    from .server import configure_logging

    configure_logging()  # logs to stderr: stdout carries the id / the JSON


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@rollout_app.command()
def start(
    schedule: Annotated[
        list[Path], typer.Option("--schedule", "-s", help="Schedule CSV file (repeatable).")
    ],
    canary: Annotated[
        list[str], typer.Option("--canary", help="Canary gateway(s), applied and verified first.")
    ],
    gateways: Annotated[
        str, typer.Option("--gateways", help="GW,GW,... or 'all' (enrolled, not revoked).")
    ],
    min_good: Annotated[
        float, typer.Option("--min-good", help="Share of points that must read good.")
    ] = 0.95,
    within: Annotated[float, typer.Option("--within", help="Seconds the probe may take.")] = 60,
    allow_device_down: Annotated[
        bool,
        typer.Option("--allow-device-down", help="Do not fail when a device that was up is down."),
    ] = False,
    wave_size: Annotated[int, typer.Option("--wave-size", help="Gateways at a time after.")] = 10,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to the end.")] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Start a rollout; prints its id on stdout."""
    from pydantic import ValidationError

    from . import audit
    from .commands import central_actor
    from .rollouts import RolloutError, RolloutRequest

    files: dict[str, str] = {}
    for path in schedule:
        try:
            files[path.name] = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"{path}: {exc}", param_hint="--schedule") from None
    targets: list[str] | str = "all" if gateways.strip() == "all" else _split([gateways])
    try:
        req = RolloutRequest.model_validate(
            {
                "files": files,
                "gateways": targets,
                "canary": _split(canary),
                "verification": {
                    "min_good_ratio": min_good,
                    "within_s": within,
                    "no_new_device_down": not allow_device_down,
                },
                "wave_size": wave_size,
            }
        )
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise typer.BadParameter(f"{where}: {first['msg']}") from None
    user = audit.os_user()

    async def go(engine: Any, storage: Any) -> Any:
        view = await engine.start(req, central_actor(user))
        await audit.record_cli(
            storage.pool, user, "rollout.start", f"rollout/{view.id}", {"version": view.version}
        )
        return view

    try:
        view = _run(go, dsn, data_dir)
    except RolloutError as exc:
        typer.echo(f"outpost: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"rollout {view.id}: {view.version} to {len(view.targets)} gateway(s), canary "
        f"{', '.join(req.canary)}",
        err=True,
    )
    typer.echo(str(view.id))
    if wait:
        final = _follow(view.id, dsn, data_dir)
        raise typer.Exit(0 if final.state == "succeeded" else 1)


def _follow(rid: int, dsn: str | None, data_dir: Path) -> Any:
    async def get(engine: Any, _storage: Any) -> Any:
        return await engine.get(rid)

    seen = 0
    while True:
        view = _run(get, dsn, data_dir)
        for step in view.steps[seen:]:
            typer.echo(_step_line(step), err=True)
        seen = len(view.steps)
        if view.state != "running":
            typer.echo(f"rollout {rid}: {view.state} {view.reason}".rstrip(), err=True)
            return view
        time.sleep(1.0)


def _step_line(step: Any) -> str:
    detail = {k: v for k, v in step.detail.items() if v not in (None, "", [], {})}
    gw = f" {step.gateway_id}" if step.gateway_id else ""
    return f"{step.ts:%H:%M:%S} {step.step}{gw} by {step.actor} {json.dumps(detail)}"


@rollout_app.command()
def status(
    rollout_id: Annotated[int | None, typer.Argument(help="Rollout id; none: the latest.")] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """One rollout with its gateways and steps, or the recent ones."""

    async def go(engine: Any, _storage: Any) -> Any:
        if rollout_id is None:
            return await engine.list(20)
        return await engine.get(rollout_id)

    found = _run(go, dsn, data_dir)
    if found is None:
        typer.echo(f"outpost: no rollout {rollout_id}", err=True)
        raise typer.Exit(1)
    if isinstance(found, list):
        if as_json:
            typer.echo(json.dumps([v.model_dump(mode="json") for v in found], indent=2))
            return
        for v in found:
            done = sum(1 for t in v.targets if t.state == "succeeded")
            typer.echo(
                f"{v.id:>5}  {v.state:<9} {v.version}  {done}/{len(v.targets)} gateways  "
                f"{v.created_at:%Y-%m-%d %H:%M} by {v.created_by}  {v.reason}".rstrip()
            )
        return
    if as_json:
        typer.echo(found.model_dump_json(indent=2))
        return
    typer.echo(f"rollout {found.id}: {found.state} {found.reason}".rstrip())
    typer.echo(f"version {found.version}, files {', '.join(found.files)}, by {found.created_by}")
    for t in found.targets:
        role = "canary" if t.canary else "      "
        outcome = (t.outcome or {}).get("message", "")
        typer.echo(
            f"  {role} {t.gateway_id:<20} {t.state:<9} {t.old_version or '-'} -> "
            f"{t.new_version or '-'}  {outcome}".rstrip()
        )
    for step in found.steps:
        typer.echo("  " + _step_line(step))


@rollout_app.command()
def abort(
    rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Stop a running rollout: queue no further gateways, withdraw queued commands."""
    from . import audit
    from .commands import central_actor
    from .rollouts import RolloutError

    user = audit.os_user()

    async def go(engine: Any, storage: Any) -> Any:
        view = await engine.abort(rollout_id, central_actor(user))
        await audit.record_cli(storage.pool, user, "rollout.abort", f"rollout/{rollout_id}")
        return view

    try:
        view = _run(go, dsn, data_dir)
    except RolloutError as exc:
        typer.echo(f"outpost: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"rollout {view.id} aborted", err=True)
