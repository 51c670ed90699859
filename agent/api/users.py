"""Local users of the status page: who may log in on ``[api] bind``, and with which role.

The file is ``data_dir/page-users.json``, mode 0600, owned by the agent's user::

    {"version": 1,
     "users": {"alice": {"role": "operator",
                         "hash": "$argon2id$v=19$m=65536,t=3,p=4$…",
                         "created": "2026-12-04T19:00:00Z",
                         "changed": "2026-12-04T19:00:00Z"}}}

Passwords are argon2id hashes (argon2-cffi defaults); nothing else secret is stored. Roles:
``viewer`` reads everything the page shows; ``operator`` also acknowledges, shelves, and does
what the local control API allows. The agent re-reads the file when it changes, so ``outpost
user add/remove/passwd`` take effect without a restart (removing a user ends their sessions).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

USERS_FILE = "page-users.json"
FILE_MODE = 0o600
ROLES: tuple[str, ...] = ("viewer", "operator")
Role = Literal["viewer", "operator"]
NAME_PATTERN = r"^[a-z_][a-z0-9_.-]{0,31}$"
MIN_PASSWORD = 8
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})


class UserFileError(Exception):
    """The users file cannot be read or written; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    hash: str
    created: str
    changed: str


def users_path(data_dir: Path) -> Path:
    return data_dir / USERS_FILE


def is_loopback_bind(bind: str) -> bool:
    """``127.0.0.1:8710``, ``[::1]:8710`` and ``localhost:8710`` are the machine itself;
    every other address (``127.0.0.2`` included) is treated as the LAN."""
    host = bind.rpartition(":")[0].strip()
    return host in LOOPBACK_HOSTS


def lan_bind_problem(bind: str | None, path: Path) -> str | None:
    """Why the status page must not start on ``bind`` (None: it may). Off the loopback
    address it needs local users, so nobody on the LAN acts without logging in."""
    if bind is None or is_loopback_bind(bind):
        return None
    try:
        users = load_users(path)
    except UserFileError as exc:
        return f"[api] bind = {bind!r} needs local users, but {exc}"
    if users:
        return None
    return (
        f"[api] bind = {bind!r} is not a loopback address and no local users exist: add one "
        f"with `outpost user add NAME --role operator` (stored in {path}), or bind 127.0.0.1"
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_users(path: Path) -> dict[str, User]:
    """Every user of the file (an absent file: none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UserFileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text)
        entries = data["users"]
        if not isinstance(entries, dict):
            raise TypeError("users is not an object")
        users = {}
        for name, entry in entries.items():
            if not isinstance(entry["hash"], str):
                raise ValueError(f"user {name!r}: hash is not text")
            users[name] = User(
                name,
                check_role(entry["role"]),
                entry["hash"],
                str(entry.get("created", "")),
                str(entry.get("changed", "")),
            )
        return users
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserFileError(f"{path}: not a users file ({exc})") from None


def save_users(path: Path, users: dict[str, User]) -> None:
    """Atomic replace, mode 0600; run as root, the file goes to the data dir's owner (the
    agent's user), who must be able to read it."""
    body = {
        "version": 1,
        "users": {
            u.name: {"role": u.role, "hash": u.hash, "created": u.created, "changed": u.changed}
            for u in sorted(users.values(), key=lambda u: u.name)
        },
    }
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        if os.geteuid() == 0:
            owner = path.parent.stat()
            os.fchown(fd, owner.st_uid, owner.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UserFileError(f"{path}: cannot write ({exc.strerror})") from None


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(
            f"user name {name!r}: lower-case letters, digits, '_', '.', '-', at most 32, "
            "starting with a letter or '_'"
        )


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")


def hash_password(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def verify_password(user: User, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return PasswordHasher().verify(user.hash, password)
    except (VerificationError, InvalidHashError):
        return False


class UserStore:
    """The users file as the page reads it: re-read when it is replaced or changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}

    def users(self) -> dict[str, User]:
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            try:
                self._users = load_users(self.path) if stamp is not None else {}
            except UserFileError:
                self._users = {}  # unreadable: nobody logs in (fail closed)
            self._stamp = stamp
        return self._users

    def get(self, name: str) -> User | None:
        return self.users().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.get(name)
        if user is None:
            # spend the same time as a real check, so a name cannot be probed by timing
            verify_password(_DUMMY, password)
            return None
        return user if verify_password(user, password) else None


_DUMMY = User(
    "-",
    "viewer",
    # a real hash of a password nobody has: verifying against it costs what a real check costs
    "$argon2id$v=19$m=65536,t=3,p=4$GWC0tpocHsGw2l4b/ZeAsg$L0Hav0uqD989DLTa+WlyMLA360tI7H/teJApRpUQKqY",
    "",
    "",
)


def check_role(role: str) -> Role:
    if role == "viewer":
        return "viewer"
    if role == "operator":
        return "operator"
    raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def add_user(path: Path, name: str, role: str, password: str) -> User:
    check_name(name)
    checked = check_role(role)
    check_password(password)
    users = load_users(path)
    if name in users:
        raise ValueError(f"user {name!r} exists already (change the password with passwd)")
    now = _now()
    user = User(name, checked, hash_password(password), now, now)
    users[name] = user
    save_users(path, users)
    return user


def remove_user(path: Path, name: str) -> None:
    users = load_users(path)
    if users.pop(name, None) is None:
        raise ValueError(f"no user {name!r}")
    save_users(path, users)


def set_password(path: Path, name: str, password: str) -> None:
    check_password(password)
    users = load_users(path)
    user = users.get(name)
    if user is None:
        raise ValueError(f"no user {name!r}")
    users[name] = User(name, user.role, hash_password(password), user.created, _now())
    save_users(path, users)


def describe(users: dict[str, User]) -> list[dict[str, Any]]:
    return [
        {"name": u.name, "role": u.role, "created": u.created, "changed": u.changed}
        for u in sorted(users.values(), key=lambda u: u.name)
    ]
