"""Bits every CLI module shares: the config option, one-line errors, the daemon client."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

from outpost.agent.api.client import AgentAccessDenied, AgentClient, AgentNotRunning, ApiError
from outpost.agent.core.config import AgentConfig, ConfigError, load_config

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="OUTPOST_CONFIG",
        help="Agent config file (default: $OUTPOST_CONFIG, else ./agent.toml).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"outpost: {message}", err=True)
    raise typer.Exit(code)


def config_or_exit(path: Path | None, *, check_files: bool = True) -> AgentConfig:
    try:
        return load_config(path, check_files=check_files)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"{exc.source}: {problem}", err=True)
        raise typer.Exit(2) from None


def client_for(path: Path | None) -> AgentClient:
    cfg = config_or_exit(path, check_files=False)
    return AgentClient(cfg.api.socket)


def call_agent(path: Path | None, method: str, route: str, **kwargs: Any) -> Any:
    """Call the running daemon; 'no agent running' and API refusals become one line + exit 1."""
    client = client_for(path)
    try:
        return client.request(method, route, **kwargs)
    except (AgentNotRunning, AgentAccessDenied) as exc:
        fail(str(exc))
    except ApiError as exc:
        fail(exc.message)


def console() -> Console:
    """A rich console that never truncates ids when piped (scripts, `| grep`, CI logs)."""
    from rich.console import Console

    con = Console()
    if not con.is_terminal:
        con = Console(width=max(con.width, 200))
    return con


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
