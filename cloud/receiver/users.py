"""Dashboard users in the receiver's database: accounts, passwords, personal tokens, sessions
and failed-login counts.

Passwords are argon2id hashes (argon2-cffi); hashing and verifying run in a worker thread so a
login never blocks the event loop. Personal tokens and session ids are 256 random bits stored
as SHA-256 (a slow hash adds nothing for random secrets). Everything is in PostgreSQL, so a
session made through one receiver process is valid on every other one on the same database.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
ROLE_RANK: dict[str, int] = {"viewer": 1, "operator": 2, "admin": 3}
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
# Sites are the free text of `[agent] site` ("Demo data hall"): no control characters, no
# comma (the CLI's --sites list separator), no slash (a site is a URL path segment).
SITE_PATTERN = r"^[^\s,/\x00-\x1f\x7f][^,/\x00-\x1f\x7f]{0,255}$"
_NAME_RE = re.compile(NAME_PATTERN)
_SITE_RE = re.compile(SITE_PATTERN)
MIN_PASSWORD = 8
TOKEN_PREFIX = "opu_"  # tells a personal token apart from a gateway token in logs and greps

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so timing does not reveal user names
    (made on first use: hashing costs tens of milliseconds, not at import)."""
    return _hasher.hash("not-a-real-password")


class Executor(Protocol):
    """An asyncpg connection or pool (both run queries)."""

    async def execute(self, query: str, *args: object) -> str: ...
    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]: ...
    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None: ...
    async def fetchval(self, query: str, *args: object) -> object: ...


class UserError(ValueError):
    """A user operation that cannot be done as asked (unknown user, bad name...)."""


class UserExists(UserError):
    pass


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    sites: tuple[str, ...] | None  # None: every site
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class SessionInfo:
    user: User
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class TokenInfo:
    id: int
    user: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise UserError(
            f"bad user name {name!r}: 1-64 characters, letters, digits, '.', '_', '@', '-', "
            "starting with a letter or digit"
        )
    return name


def check_role(role: str) -> Role:
    if role not in ROLE_RANK:
        raise UserError(f"bad role {role!r}: expected one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]  # checked against ROLE_RANK just above


def check_sites(sites: Sequence[str] | None) -> tuple[str, ...] | None:
    if sites is None:
        return None
    clean = tuple(dict.fromkeys(s.strip() for s in sites if s.strip()))
    for s in clean:
        if not _SITE_RE.fullmatch(s):
            raise UserError(f"bad site {s!r}: letters, digits, '.', '_', ':', '-'")
    if not clean:
        raise UserError("--sites needs at least one site (omit it for every site)")
    return clean


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UserError("password too long: at most 1024 characters")
    return password


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(stored_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return (
                _hasher.verify(stored_hash or _dummy_hash(), password) and stored_hash is not None
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


def _user(row: asyncpg.Record) -> User:
    sites = row["sites"]
    return User(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        sites=tuple(sites) if sites is not None else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


_USER_COLS = "u.id, u.name, u.role, u.sites, u.created_at, u.updated_at"


# --- accounts -----------------------------------------------------------------------------------


async def add_user(
    db: Executor, name: str, role: str, password: str, sites: Sequence[str] | None = None
) -> User:
    check_name(name)
    role_ = check_role(role)
    sites_ = check_sites(sites)
    pw_hash = await hash_password(check_password(password))
    try:
        row = await db.fetchrow(
            f"""INSERT INTO users AS u (name, role, sites, password_hash) VALUES ($1, $2, $3, $4)
                RETURNING {_USER_COLS}""",
            name,
            role_,
            list(sites_) if sites_ is not None else None,
            pw_hash,
        )
    except asyncpg.UniqueViolationError:
        raise UserExists(f"user {name!r} already exists") from None
    assert row is not None
    return _user(row)


async def get_user(db: Executor, name: str) -> User | None:
    row = await db.fetchrow(f"SELECT {_USER_COLS} FROM users u WHERE u.name = $1", name)
    return _user(row) if row is not None else None


async def list_users(db: Executor) -> list[User]:
    return [_user(r) for r in await db.fetch(f"SELECT {_USER_COLS} FROM users u ORDER BY u.name")]


async def remove_user(db: Executor, name: str) -> bool:
    """Delete the user (sessions and tokens go with it); False if unknown."""
    status = await db.execute("DELETE FROM users WHERE name = $1", name)
    return status.endswith(" 1")


async def set_password(db: Executor, name: str, password: str) -> bool:
    """New password; every session of the user ends (a password change is often a reaction
    to a leak). False if the user is unknown."""
    pw_hash = await hash_password(check_password(password))
    uid = await db.fetchval(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE name = $1 RETURNING id",
        name,
        pw_hash,
    )
    if uid is None:
        return False
    await db.execute("DELETE FROM sessions WHERE user_id = $1", uid)
    return True


async def update_user(
    db: Executor,
    name: str,
    *,
    role: str | None = None,
    sites: Sequence[str] | None = None,
    all_sites: bool = False,
) -> User | None:
    """Change role and/or site scope (``all_sites`` lifts the scope). None if unknown."""
    role_ = check_role(role) if role is not None else None
    sites_ = check_sites(sites)
    row = await db.fetchrow(
        f"""UPDATE users AS u SET role = coalesce($2, u.role),
                   sites = CASE WHEN $4 THEN NULL WHEN $3::text[] IS NULL THEN u.sites
                                ELSE $3::text[] END,
                   updated_at = now()
            WHERE u.name = $1 RETURNING {_USER_COLS}""",
        name,
        role_,
        list(sites_) if sites_ is not None else None,
        all_sites,
    )
    return _user(row) if row is not None else None


async def authenticate_password(db: Executor, name: str, password: str) -> User | None:
    row = await db.fetchrow(
        f"SELECT {_USER_COLS}, u.password_hash FROM users u WHERE u.name = $1", name
    )
    ok = await verify_password(row["password_hash"] if row is not None else None, password)
    if not ok or row is None:
        return None
    return _user(row)


# --- personal tokens ----------------------------------------------------------------------------


async def create_token(db: Executor, name: str, label: str = "") -> tuple[TokenInfo, str]:
    """A new personal token for the user: (its info, the token in clear, shown once)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = await db.fetchrow(
        """INSERT INTO user_tokens (user_id, token_hash, label)
           SELECT id, $2, $3 FROM users WHERE name = $1
           RETURNING id, created_at""",
        name,
        sha256(token),
        label,
    )
    if row is None:
        raise UserError(f"unknown user {name!r}")
    return TokenInfo(row["id"], name, label, row["created_at"], None, None), token


async def list_tokens(db: Executor, name: str | None = None) -> list[TokenInfo]:
    rows = await db.fetch(
        """SELECT t.id, u.name, t.label, t.created_at, t.last_used_at, t.revoked_at
           FROM user_tokens t JOIN users u ON u.id = t.user_id
           WHERE $1::text IS NULL OR u.name = $1 ORDER BY t.id""",
        name,
    )
    return [
        TokenInfo(
            r["id"], r["name"], r["label"], r["created_at"], r["last_used_at"], r["revoked_at"]
        )
        for r in rows
    ]


async def revoke_token(db: Executor, name: str, token_id: int | None = None) -> int:
    """Revoke one token of the user (``token_id``) or all of them; returns how many."""
    status = await db.execute(
        """UPDATE user_tokens t SET revoked_at = now() FROM users u
           WHERE u.id = t.user_id AND u.name = $1 AND t.revoked_at IS NULL
                 AND ($2::bigint IS NULL OR t.id = $2)""",
        name,
        token_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def user_for_token(db: Executor, token: str) -> User | None:
    """The user of an active personal token; its last use is written at most once a minute
    (a script polling the API must not cost a write per request)."""
    row = await db.fetchrow(
        f"""SELECT {_USER_COLS}, t.id AS token_id,
                   t.last_used_at IS NULL OR t.last_used_at < now() - INTERVAL '60 seconds'
                       AS touch
            FROM user_tokens t JOIN users u ON u.id = t.user_id
            WHERE t.token_hash = $1 AND t.revoked_at IS NULL""",
        sha256(token),
    )
    if row is None:
        return None
    if row["touch"]:
        await db.execute(
            "UPDATE user_tokens SET last_used_at = now() WHERE id = $1", row["token_id"]
        )
    return _user(row)


# --- sessions -----------------------------------------------------------------------------------


async def create_session(
    db: Executor, user: User, address: str, lifetime: timedelta
) -> tuple[str, SessionInfo]:
    """A new session: (the cookie value, its info)."""
    sid = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + lifetime
    await db.execute(
        "INSERT INTO sessions (id_hash, user_id, csrf_token, address, expires_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        sha256(sid),
        user.id,
        csrf,
        address,
        expires,
    )
    return sid, SessionInfo(user, csrf, expires)


async def session(db: Executor, sid: str, idle: timedelta) -> SessionInfo | None:
    """The live session for the cookie value; None when unknown, expired or idle for longer
    than ``idle``. The idle clock is restarted at most once a minute (not a write per page)."""
    row = await db.fetchrow(
        f"""SELECT {_USER_COLS}, s.csrf_token, s.expires_at,
                   s.last_seen_at < now() - INTERVAL '60 seconds' AS touch
            FROM sessions s JOIN users u ON u.id = s.user_id
            WHERE s.id_hash = $1 AND s.expires_at > now()
                  AND s.last_seen_at > now() - $2::interval""",
        sha256(sid),
        idle,
    )
    if row is None:
        return None
    if row["touch"]:
        await db.execute("UPDATE sessions SET last_seen_at = now() WHERE id_hash = $1", sha256(sid))
    return SessionInfo(_user(row), row["csrf_token"], row["expires_at"])


async def end_session(db: Executor, sid: str) -> None:
    await db.execute("DELETE FROM sessions WHERE id_hash = $1", sha256(sid))


async def purge_expired(db: Executor, failure_window: timedelta) -> None:
    await db.execute("DELETE FROM sessions WHERE expires_at <= now()")
    await db.execute(
        "DELETE FROM login_failures WHERE ts < now() - $1::interval", failure_window * 2
    )


# --- failed-login throttling --------------------------------------------------------------------


async def lock_login(db: Executor, user_key: str, ip_key: str) -> None:
    """Transaction-scoped advisory locks on the user name and the address (always in this
    order, in two lock spaces, so two attempts never wait on each other in a cycle)."""
    await db.execute("SELECT pg_advisory_xact_lock(1, hashtext($1))", user_key)
    await db.execute("SELECT pg_advisory_xact_lock(2, hashtext($1))", ip_key)


async def failures(db: Executor, keys: Sequence[str], window: timedelta) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT key, count(*) AS n FROM login_failures "
        "WHERE key = ANY($1::text[]) AND ts > now() - $2::interval GROUP BY key",
        list(keys),
        window,
    )
    return {r["key"]: r["n"] for r in rows}


async def record_failure(db: Executor, keys: Sequence[str]) -> None:
    await db.execute("INSERT INTO login_failures (key) SELECT unnest($1::text[])", list(keys))


async def clear_failures(db: Executor, key: str) -> None:
    await db.execute("DELETE FROM login_failures WHERE key = $1", key)
