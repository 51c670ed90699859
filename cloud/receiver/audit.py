"""The audit log: who did what, when, from which address, with what outcome.

Call :func:`record` for every login, failed login, logout, command issued, user change,
enrollment and revocation, on the same connection as the change when there is one (so the row
commits with it)::

    await audit.record(conn, principal, "command.ack", f"{gateway}/{alarm}", "ok",
                       client_address(request), {"note": note})
"""

from __future__ import annotations

import base64
import binascii
import getpass
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import asyncpg

from .users import Executor

CLI_KIND = "cli"


@runtime_checkable
class Actor(Protocol):
    """Who acted: ``auth.Principal`` fits (kept structural so auth can import this module)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class AuditRow:
    id: int
    ts: datetime
    actor: str
    auth_kind: str
    action: str
    target: str
    outcome: str
    address: str
    detail: dict[str, Any]


async def record(
    conn: Executor,
    principal: Actor | str | None,
    action: str,
    target: str = "",
    outcome: str = "ok",
    address: str = "",
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Append one audit row; returns its id. ``principal`` is the caller, or a bare name (a
    login attempt, the local CLI), or None (nobody identified)."""
    actor, kind = (
        (principal.name, str(principal.kind))
        if isinstance(principal, Actor)
        else (principal or "", "")
    )
    row_id = await conn.fetchval(
        "INSERT INTO audit (actor, auth_kind, action, target, outcome, address, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING id",
        actor,
        kind,
        action,
        target,
        outcome,
        address,
        json.dumps(dict(detail or {}), default=str),
    )
    assert isinstance(row_id, int)
    return row_id


def os_user() -> str:
    """The local account running a CLI command (the actor of its audit rows)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def record_cli(
    conn: Executor,
    os_user: str,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
    outcome: str = "ok",
) -> None:
    """A change made with ``outpost cloud ...`` on the database directly (address "local")."""
    await conn.execute(
        "INSERT INTO audit (actor, auth_kind, action, target, outcome, address, detail) "
        "VALUES ($1, $2, $3, $4, $5, 'local', $6::jsonb)",
        os_user,
        CLI_KIND,
        action,
        target,
        outcome,
        json.dumps(dict(detail or {}), default=str),
    )


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"a:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id after which the next page starts; ValueError for a cursor we did not make."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("bad cursor") from None
    kind, _, value = text.partition(":")
    if kind != "a" or not value.isdigit():
        raise ValueError("bad cursor")
    return int(value)


async def page(
    conn: Executor,
    *,
    limit: int,
    before_id: int | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> list[AuditRow]:
    """Newest first; ``before_id`` continues after the last row of the previous page."""
    rows = await conn.fetch(
        """SELECT id, ts, actor, auth_kind, action, target, outcome, address, detail
           FROM audit
           WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR actor = $2)
                 AND ($3::text IS NULL OR action = $3 OR action LIKE $3 || '.%')
           ORDER BY id DESC LIMIT $4""",
        before_id,
        actor,
        action,
        limit,
    )
    return [_row(r) for r in rows]


def _row(r: asyncpg.Record) -> AuditRow:
    detail = r["detail"]
    return AuditRow(
        id=r["id"],
        ts=r["ts"],
        actor=r["actor"],
        auth_kind=r["auth_kind"],
        action=r["action"],
        target=r["target"],
        outcome=r["outcome"],
        address=r["address"],
        detail=json.loads(detail) if isinstance(detail, str) else dict(detail),
    )
