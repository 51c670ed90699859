"""``outpost cloud user ...``: dashboard users on the receiver's database.

Like ``outpost cloud enroll`` these work on the database directly (``--dsn``,
``$OUTPOST_RECEIVER_DSN``, or the embedded server in ``--data-dir``), whether or not the
receiver runs. Each change is written to the audit log with the OS user as actor. ``token``
prints the new token alone on stdout (``TOKEN=$(outpost cloud user token alice)``); anything
for humans goes to stderr.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from . import audit, users
from .server import configure_logging, run_with_storage
from .settings import DEFAULT_DATA_DIR, DSN_ENV
from .storage import Storage
from .users import ROLES, UserError

user_app = typer.Typer(
    help="Dashboard users: add, list, remove, passwd, token, revoke-token.",
    no_args_is_help=True,
)


@user_app.callback()
def _stderr_logs() -> None:
    """Logs to stderr: stdout carries only what scripts read (``token`` prints the token)."""
    configure_logging()


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
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin (no prompt)."
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise _fail("--password-stdin: stdin is empty")
        pw = line
    else:
        pw = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    try:
        return users.check_password(pw)
    except UserError as exc:
        raise _fail(str(exc)) from None


def _sites(text: str | None) -> list[str] | None:
    return None if text is None else [s for s in text.split(",")]


@user_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")],
    sites: Annotated[
        str | None,
        typer.Option("--sites", help="Comma-separated sites the user may see (default: all)."),
    ] = None,
    password_stdin: PasswordStdin = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Create a user with a password (prompted, or --password-stdin)."""
    try:
        users.check_name(name)
        users.check_role(role)
        site_list = users.check_sites(_sites(sites))
    except UserError as exc:
        raise _fail(str(exc)) from None
    password = _read_password(password_stdin)

    async def go(storage: Storage) -> users.User:
        async with storage.pool.acquire() as conn, conn.transaction():
            user = await users.add_user(conn, name, role, password, site_list)
            await audit.record_cli(
                conn, audit.os_user(), "user.add", name, {"role": role, "sites": site_list}
            )
            return user

    try:
        user = run_with_storage(go, dsn=dsn, data_dir=data_dir)
    except UserError as exc:
        raise _fail(str(exc)) from None
    scope = ",".join(user.sites) if user.sites is not None else "all sites"
    typer.echo(f"user {user.name} added: {user.role}, {scope}", err=True)


@user_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Machine output.")] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Users with role, sites and active token count."""

    async def go(storage: Storage) -> tuple[list[users.User], list[users.TokenInfo]]:
        return await users.list_users(storage.pool), await users.list_tokens(storage.pool)

    found, tokens = run_with_storage(go, dsn=dsn, data_dir=data_dir)
    active: dict[str, int] = {}
    for t in tokens:
        if t.revoked_at is None:
            active[t.user] = active.get(t.user, 0) + 1
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": u.name,
                        "role": u.role,
                        "sites": list(u.sites) if u.sites is not None else None,
                        "tokens": active.get(u.name, 0),
                        "created_at": u.created_at.isoformat(),
                    }
                    for u in found
                ],
                indent=2,
            )
        )
        return
    if not found:
        typer.echo("no users (add one: outpost cloud user add NAME --role admin)", err=True)
        return
    width = max(4, *(len(u.name) for u in found))
    typer.echo(f"{'NAME':<{width}}  {'ROLE':<8}  {'TOKENS':>6}  SITES")
    for u in found:
        scope = ",".join(u.sites) if u.sites is not None else "*"
        typer.echo(f"{u.name:<{width}}  {u.role:<8}  {active.get(u.name, 0):>6}  {scope}")


@user_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="User name.")],
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Delete a user with their sessions and tokens."""

    async def go(storage: Storage) -> bool:
        async with storage.pool.acquire() as conn, conn.transaction():
            done = await users.remove_user(conn, name)
            if done:
                await audit.record_cli(conn, audit.os_user(), "user.remove", name)
            return done

    if not run_with_storage(go, dsn=dsn, data_dir=data_dir):
        raise _fail(f"unknown user {name}")
    typer.echo(f"user {name} removed", err=True)


@user_app.command("passwd")
def passwd(
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: PasswordStdin = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Set a new password (the user's sessions end)."""
    password = _read_password(password_stdin)

    async def go(storage: Storage) -> bool:
        async with storage.pool.acquire() as conn, conn.transaction():
            done = await users.set_password(conn, name, password)
            if done:
                await audit.record_cli(conn, audit.os_user(), "user.passwd", name)
            return done

    if not run_with_storage(go, dsn=dsn, data_dir=data_dir):
        raise _fail(f"unknown user {name}")
    typer.echo(f"password of {name} changed; their sessions ended", err=True)


@user_app.command("token")
def token(
    name: Annotated[str, typer.Argument(help="User name.")],
    label: Annotated[str, typer.Option("--label", help="What the token is for.")] = "",
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Create a personal API token (stdout: the token alone; shown only now).

    Send it as `Authorization: Bearer TOKEN`; it acts with the user's role and sites."""

    async def go(storage: Storage) -> tuple[users.TokenInfo, str]:
        async with storage.pool.acquire() as conn, conn.transaction():
            info, tok = await users.create_token(conn, name, label)
            await audit.record_cli(
                conn, audit.os_user(), "token.create", name, {"token_id": info.id, "label": label}
            )
            return info, tok

    try:
        info, tok = run_with_storage(go, dsn=dsn, data_dir=data_dir)
    except UserError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"token {info.id} for {name} (revoke: outpost cloud user revoke-token {name} "
        f"--id {info.id}):",
        err=True,
    )
    typer.echo(tok)


@user_app.command("revoke-token")
def revoke_token(
    name: Annotated[str, typer.Argument(help="User name.")],
    token_id: Annotated[
        int | None, typer.Option("--id", help="Token id (see `user tokens`).", show_default=False)
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Revoke every token of the user.")] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Revoke one personal token (--id) or all of them (--all)."""
    if (token_id is None) == (not all_):
        raise _fail("give exactly one of --id N or --all")

    async def go(storage: Storage) -> int:
        async with storage.pool.acquire() as conn, conn.transaction():
            n = await users.revoke_token(conn, name, token_id)
            if n:
                await audit.record_cli(
                    conn, audit.os_user(), "token.revoke", name, {"token_id": token_id, "count": n}
                )
            return n

    n = run_with_storage(go, dsn=dsn, data_dir=data_dir)
    if n == 0:
        raise _fail(f"no active token {'#' + str(token_id) if token_id else ''} of {name}")
    typer.echo(f"{n} token(s) of {name} revoked", err=True)


@user_app.command("tokens")
def tokens(
    name: Annotated[str, typer.Argument(help="User name.")],
    dsn: DsnOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """The user's tokens: id, label, created, last used, revoked (never the tokens)."""

    async def go(storage: Storage) -> list[users.TokenInfo]:
        return await users.list_tokens(storage.pool, name)

    rows = run_with_storage(go, dsn=dsn, data_dir=data_dir)
    typer.echo(f"{'ID':>5}  {'CREATED':<20}  {'LAST USED':<20}  {'REVOKED':<20}  LABEL")

    def t(v: datetime | None) -> str:
        return v.isoformat(timespec="seconds") if v is not None else "-"

    for r in rows:
        typer.echo(
            f"{r.id:>5}  {t(r.created_at):<20}  {t(r.last_used_at):<20}  "
            f"{t(r.revoked_at):<20}  {r.label}"
        )


def main(argv: list[str]) -> int:
    """``python -m outpost.cloud.receiver user ...``."""
    try:
        user_app(args=argv, prog_name="python -m outpost.cloud.receiver user")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
