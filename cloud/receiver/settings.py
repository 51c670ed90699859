"""Receiver settings: a plain frozen dataclass built by the CLI (flags and environment)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from outpost.cloud.wire import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DECOMPRESSED_BYTES

DEFAULT_BIND = "127.0.0.1:8720"
DEFAULT_DATA_DIR = Path("var/receiver")
ADMIN_TOKEN_ENV = "OUTPOST_RECEIVER_ADMIN_TOKEN"
DSN_ENV = "OUTPOST_RECEIVER_DSN"


@dataclass(frozen=True)
class ReceiverSettings:
    dsn: str
    admin_token: str
    #: compressed request body limit (413 beyond)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: decompressed request body limit (413 beyond): guards against compression bombs
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    #: most rows one readings/events query answers (the response says when it truncated)
    max_rows: int = 10_000
    #: ``serve --retention-days``: sets the database's retention at start (<= 0: keep
    #: forever); None leaves the database's setting as it is
    retention_days: int | None = None
    #: how often the plain-PostgreSQL path deletes readings beyond the retention
    retention_check_s: float = 3600.0
    #: long-poll wait for GET /commands when the agent does not ask for less
    command_wait_s: float = 25.0
    pool_min: int = 2
    pool_max: int = 10
    #: seconds since last_seen under which a gateway is "online", then "stale", then "offline"
    online_s: float = 90.0
    stale_s: float = 600.0
    use_timescaledb: bool = True
    #: a session ends after this long without a request, and in any case after session_max_s
    session_idle_s: float = 8 * 3600.0
    session_max_s: float = 7 * 86_400.0
    #: failed logins counted over this window; past the limits, logins are refused (429)
    login_window_s: float = 900.0
    login_max_per_user: int = 5
    login_max_per_ip: int = 20


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--bind must be HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


def load_admin_token(data_dir: Path) -> tuple[str, Path | None]:
    """The admin token from the environment, else from DATA_DIR/admin.token (created 0600 with
    a fresh random token when missing). Returns (token, file it came from or None)."""
    env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if env:
        return env, None
    path = data_dir / "admin.token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, path
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token, path
