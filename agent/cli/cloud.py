"""``outpost cloud {serve,enroll,revoke,user,rollout}``: the central receiver, its gateway
enrollment, its dashboard users and schedule rollouts.

These commands run on the receiver host and work on the receiver's database directly (the
``--dsn`` one, ``$OUTPOST_RECEIVER_DSN``, or the embedded server in ``--data-dir``), so
``enroll`` and ``revoke`` work whether or not ``serve`` is running. With the embedded server
they connect to the running one or start it just for the command (``outpost.cloud.receiver.embedded``
explains how the two processes share it safely).

``enroll`` prints the enrollment token alone on stdout, so ``TOKEN=$(outpost cloud enroll gw-1)``
works; everything for humans goes to stderr.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from outpost.cloud.receiver.settings import DEFAULT_BIND, DEFAULT_DATA_DIR, DSN_ENV

cloud_app = typer.Typer(
    help="Central receiver: serve it, enroll and revoke gateways, manage users, roll out schedules.",
    no_args_is_help=True,
)

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        envvar=DSN_ENV,
        show_default=False,
        help="PostgreSQL DSN (default: $OUTPOST_RECEIVER_DSN, else the embedded "
        "PostgreSQL in --data-dir).",
    ),
]
DataDirOption = Annotated[
    Path,
    typer.Option("--data-dir", help="Receiver data dir: embedded PostgreSQL, admin.token."),
]


def _logging() -> None:
    from outpost.agent.core.logs import configure_logging

    configure_logging("info", stream=sys.stderr)


@cloud_app.command()
def serve(
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    bind: Annotated[str, typer.Option("--bind", help="HOST:PORT to listen on.")] = DEFAULT_BIND,
    max_body_mb: Annotated[
        float | None,
        typer.Option(
            "--max-body-mb",
            help="Request body limit, compressed and decompressed (default 16).",
            show_default=False,
        ),
    ] = None,
    max_rows: Annotated[
        int | None,
        typer.Option(
            "--max-rows",
            help="Most rows one readings/events query answers (default 10000).",
            show_default=False,
        ),
    ] = None,
    retention_days: Annotated[
        int | None,
        typer.Option(
            "--retention-days",
            help="Set the database's retention of readings, in days (0: keep forever); "
            "omitted: unchanged. Same as `outpost cloud retention`.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the receiver (Ctrl-C / SIGTERM stops it and its embedded PostgreSQL).

    The read API's admin token comes from $OUTPOST_RECEIVER_ADMIN_TOKEN, else from
    DATA_DIR/admin.token (created with a random token, mode 0600, on first start)."""
    from outpost.cloud.receiver.server import serve as run
    from outpost.cloud.receiver.settings import parse_bind

    try:
        parse_bind(bind)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--bind") from None
    _logging()
    run(
        dsn=dsn,
        data_dir=data_dir,
        bind=bind,
        max_body_bytes=int(max_body_mb * 1024 * 1024) if max_body_mb else None,
        max_rows=max_rows,
        retention_days=retention_days,
    )


@cloud_app.command()
def enroll(
    gateway_id: Annotated[
        str, typer.Argument(help="Gateway id, as in the agent config (agent section, id).")
    ],
    ttl: Annotated[str, typer.Option("--ttl", help="Validity: 90s, 15m, 24h, 7d.")] = "24h",
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Print a one-time enrollment token for GATEWAY_ID (stdout: the token alone).

    Put it in the agent config (cloud section, enrollment_token); the agent exchanges it
    once for its own gateway token."""
    from outpost.cloud.receiver.server import create_enrollment_token, parse_ttl
    from outpost.cloud.wire import ID_PATTERN

    if not re.match(ID_PATTERN, gateway_id):
        raise typer.BadParameter(
            f"{gateway_id!r} is not a valid id ([a-z0-9][a-z0-9_.-]*)", param_hint="GATEWAY_ID"
        )
    try:
        lifetime = parse_ttl(ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from None
    _logging()
    tok = create_enrollment_token(gateway_id, lifetime, dsn=dsn, data_dir=data_dir)
    typer.echo(
        f"enrollment token for {gateway_id}: usable once, valid until "
        f"{tok.expires_at.isoformat(timespec='seconds')}",
        err=True,
    )
    typer.echo(tok.token)


@cloud_app.command()
def revoke(
    gateway_id: Annotated[str, typer.Argument(help="Gateway id to revoke.")],
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Revoke GATEWAY_ID's token (its requests get 401 until it is enrolled again)."""
    from outpost.cloud.receiver.server import revoke_gateway

    _logging()
    if not revoke_gateway(gateway_id, dsn=dsn, data_dir=data_dir):
        typer.echo(f"outpost: unknown gateway {gateway_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"gateway {gateway_id} revoked", err=True)


@cloud_app.command()
def retention(
    days: Annotated[
        int | None,
        typer.Argument(
            min=1, help="Keep readings this many days (omit to only show it).", show_default=False
        ),
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Keep readings forever.")] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Show or set how long the database keeps readings (a property of the database: set
    once, audited; enroll, revoke and receivers started without --retention-days leave it)."""
    from outpost.cloud.receiver.server import retention_command

    if days is not None and off:
        typer.echo("outpost: give DAYS or --off, not both", err=True)
        raise typer.Exit(2)
    _logging()
    ever_set, kept = retention_command(days, off=off, dsn=dsn, data_dir=data_dir)
    if not ever_set:
        typer.echo("retention: never set (readings are kept forever)")
    elif kept is None:
        typer.echo("retention: readings are kept forever")
    else:
        typer.echo(f"retention: {kept} days")


def _mount_receiver_groups() -> None:
    """`outpost cloud user …` and `outpost cloud rollout …` live with the receiver they manage."""
    from outpost.cloud.receiver.rollout_cli import rollout_app
    from outpost.cloud.receiver.user_cli import user_app

    cloud_app.add_typer(user_app, name="user")
    cloud_app.add_typer(rollout_app, name="rollout")


_mount_receiver_groups()
