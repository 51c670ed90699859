"""``outpost user add|list|remove|passwd``: the status page's local users.

They live in ``data_dir/page-users.json`` (argon2id hashes, mode 0600; see
``agent.api.users``). The running agent re-reads the file, so changes apply at once. A
password is typed twice at a prompt, or read from stdin with ``--password-stdin`` (one line,
for scripts); it is never an argument, so it never shows in ``ps`` or the shell history.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from outpost.agent.api.users import (
    ROLES,
    UserFileError,
    add_user,
    describe,
    load_users,
    remove_user,
    set_password,
    users_path,
)
from outpost.agent.cli.common import ConfigOption, JsonOption, config_or_exit, fail, print_json

user_app = typer.Typer(
    help="Local users of the status page ([api] bind): viewer or operator.",
    no_args_is_help=True,
)

PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = typer.prompt("password", hide_input=True)
    second = typer.prompt("again", hide_input=True)
    if first != second:
        fail("the two passwords differ", 2)
    return str(first)


@user_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="login name, e.g. alice")],
    role: Annotated[
        str, typer.Option("--role", "-r", help="viewer (read only) or operator (ack, shelve …)")
    ],
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Add a user who may log in to the status page."""
    if role not in ROLES:
        fail(f"--role must be one of {', '.join(ROLES)}, got {role!r}", 2)
    cfg = config_or_exit(config, check_files=False)
    path = users_path(cfg.agent.data_dir)
    try:
        add_user(path, name, role, _password(password_stdin))
    except ValueError as exc:
        fail(str(exc), 2)
    except UserFileError as exc:
        fail(str(exc), 1)
    typer.echo(f"added {name} ({role}) to {path}")


@user_app.command("list")
def list_(json_out: JsonOption = False, config: ConfigOption = None) -> None:
    """List the users (names and roles; never the hashes)."""
    cfg = config_or_exit(config, check_files=False)
    try:
        users = describe(load_users(users_path(cfg.agent.data_dir)))
    except UserFileError as exc:
        fail(str(exc), 1)
    if json_out:
        print_json(users)
        return
    if not users:
        typer.echo("no users (the status page then answers on loopback only)")
    for u in users:
        typer.echo(f"{u['name']}\t{u['role']}\tchanged {u['changed']}")


@user_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="login name")], config: ConfigOption = None
) -> None:
    """Remove a user; their open sessions end with the next request."""
    cfg = config_or_exit(config, check_files=False)
    try:
        remove_user(users_path(cfg.agent.data_dir), name)
    except ValueError as exc:
        fail(str(exc), 2)
    except UserFileError as exc:
        fail(str(exc), 1)
    typer.echo(f"removed {name}")


@user_app.command("passwd")
def passwd(
    name: Annotated[str, typer.Argument(help="login name")],
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Set a new password for a user."""
    cfg = config_or_exit(config, check_files=False)
    try:
        set_password(users_path(cfg.agent.data_dir), name, _password(password_stdin))
    except ValueError as exc:
        fail(str(exc), 2)
    except UserFileError as exc:
        fail(str(exc), 1)
    typer.echo(f"password of {name} changed")
