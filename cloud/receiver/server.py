"""Running the receiver: database selection (DSN or embedded), uvicorn, admin operations.

``agent/cli_cloud.py`` (``outpost cloud ...``) and ``python -m outpost.cloud.receiver`` both call in
here. Enrollment and revocation work directly on the receiver's database, so they work whether
or not the receiver is running: with the embedded server, the sharing protocol in
``embedded.py`` connects to the running server or starts it just for the command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import structlog
import uvicorn

from . import audit, read_store, users
from .embedded import EmbeddedPostgres
from .settings import (
    DEFAULT_BIND,
    DEFAULT_DATA_DIR,
    DSN_ENV,
    ReceiverSettings,
    load_admin_token,
    parse_bind,
)
from .storage import EnrollmentToken, Storage

log = structlog.get_logger(__name__)

_START_TIMEOUT_S = 30.0
T = TypeVar("T")


@contextmanager
def database(dsn: str | None, data_dir: Path, *, fast: bool = False) -> Iterator[str]:
    """Yield a DSN: the given one (or $OUTPOST_RECEIVER_DSN), else the embedded server in
    DATA_DIR/pg, started if needed and released on exit."""
    dsn = dsn or os.environ.get(DSN_ENV) or None
    if dsn:
        yield dsn
        return
    pg = EmbeddedPostgres(data_dir / "pg", fast=fast)
    url = pg.start()
    try:
        yield url
    finally:
        pg.stop()


#: Request line + headers: the read API takes up to 20,000 characters of point ids in a query,
#: which percent-encoded can be 240 kB; beyond this uvicorn answers 400 and hangs up.
MAX_REQUEST_HEAD_BYTES = 256 * 1024


def serve(
    *,
    dsn: str | None,
    data_dir: Path,
    bind: str = DEFAULT_BIND,
    max_body_bytes: int | None = None,
    max_rows: int | None = None,
    retention_days: int | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Run the receiver until SIGINT/SIGTERM; stops the embedded PostgreSQL on the way out."""
    host, port = parse_bind(bind)
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    token, token_file = load_admin_token(data_dir)
    if token_file is not None:
        print(f"admin token (read API): {token_file}", file=sys.stderr)
    with database(dsn, data_dir) as url:
        from .app import create_app  # the web app only for serving (admin commands start fast)

        settings = ReceiverSettings(dsn=url, admin_token=token, retention_days=retention_days)
        if max_body_bytes:
            settings = replace(
                settings, max_body_bytes=max_body_bytes, max_decompressed_bytes=max_body_bytes
            )
        if max_rows:
            settings = replace(settings, max_rows=max_rows)
        app = create_app(settings)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        log.info(
            "receiver.listening",
            url=f"http://{host}:{port}",
            data_dir=str(data_dir),
            embedded_db=not (dsn or os.environ.get(DSN_ENV)),
        )
        server.run(sockets=[sock] if sock is not None else None)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after its shutdown, which would kill the process
    before the embedded PostgreSQL is stopped; here the signal only asks for shutdown."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class ReceiverServer:
    """The receiver served by uvicorn inside an already running event loop (tests, the demo).

    ``await start()`` returns once it accepts connections; ``await stop()`` shuts it down
    gracefully; ``start()`` again serves on the same port, so a configured URL stays valid.
    Port 0 picks a free port (read ``port`` after the first start).
    """

    def __init__(
        self,
        settings: ReceiverSettings,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        graceful_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self._graceful_s = graceful_s
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        from .app import create_app

        config = uvicorn.Config(
            create_app(self.settings),
            log_config=None,
            access_log=False,
            lifespan="on",
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
            # uvicorn's type says int; whole seconds are precise enough for a shutdown bound
            timeout_graceful_shutdown=max(1, round(self._graceful_s)),
        )
        server = _Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
        while not server.started:
            if self._task.done():
                self._task.result()  # raises the start-up error
                raise RuntimeError("receiver stopped during start-up")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise TimeoutError(f"receiver did not start within {_START_TIMEOUT_S} s")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, self._graceful_s + 15)
        finally:
            self._server = None
            self._task = None


def parse_ttl(text: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d`` (a bare number is seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 15m, 24h, 7d")
    n = float(m.group(1))
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if n <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return timedelta(seconds=n * unit)


def create_enrollment_token(
    gateway_id: str,
    ttl: timedelta,
    *,
    dsn: str | None,
    data_dir: Path,
    site: str | None = None,
) -> EnrollmentToken:
    """``outpost cloud enroll``: a one-time token (audited with the OS user as actor)."""

    async def go(storage: Storage) -> EnrollmentToken:
        return await _enrollment_token(storage, gateway_id, ttl, site)

    return run_with_storage(go, dsn=dsn, data_dir=data_dir)


async def issue_enrollment_token(
    dsn: str, gateway_id: str, ttl: timedelta, site: str | None = None
) -> EnrollmentToken:
    """Async form for callers inside an event loop (e.g. ``outpost demo``)."""
    storage = await Storage.open(dsn, min_size=1, max_size=1)
    try:
        return await _enrollment_token(storage, gateway_id, ttl, site)
    finally:
        await storage.close()


async def _enrollment_token(
    storage: Storage, gateway_id: str, ttl: timedelta, site: str | None
) -> EnrollmentToken:
    tok = await storage.create_enrollment_token(gateway_id, ttl)
    if site is not None:
        await read_store.set_site(storage.pool, gateway_id, site)
    await audit.record_cli(
        storage.pool,
        audit.os_user(),
        "gateway.enrollment_token",
        gateway_id,
        {"expires_at": tok.expires_at.isoformat(), "site": site},
    )
    return tok


async def create_user(
    dsn: str, name: str, role: str, password: str, sites: list[str] | None = None
) -> None:
    """A dashboard user, for callers inside an event loop (``outpost demo`` makes its admin
    with a generated password this way). Raises ``users.UserError`` (e.g. it exists)."""
    storage = await Storage.open(dsn, min_size=1, max_size=1)
    try:
        async with storage.pool.acquire() as conn, conn.transaction():
            await users.add_user(conn, name, role, password, sites)
            await audit.record_cli(
                conn, audit.os_user(), "user.add", name, {"role": role, "sites": sites}
            )
    finally:
        await storage.close()


def run_with_storage(
    fn: Callable[[Storage], Awaitable[T]], *, dsn: str | None, data_dir: Path
) -> T:
    """Run ``fn`` on a Storage (migrated) of the receiver's database, for one-shot admin
    commands; the embedded server is shared with a running receiver or started just for it."""

    async def go(url: str) -> T:
        storage = await Storage.open(url, min_size=1, max_size=1)
        try:
            return await fn(storage)
        finally:
            await storage.close()

    with database(dsn, data_dir.expanduser().resolve()) as url:
        return asyncio.run(go(url))


def revoke_gateway(gateway_id: str, *, dsn: str | None, data_dir: Path) -> bool:
    """``outpost cloud revoke``: False for an unknown gateway (audited either way)."""

    async def go(storage: Storage) -> bool:
        known = await storage.revoke(gateway_id)
        await audit.record_cli(
            storage.pool,
            audit.os_user(),
            "gateway.revoke",
            gateway_id,
            outcome="ok" if known else "not_found",
        )
        return known

    return run_with_storage(go, dsn=dsn, data_dir=data_dir)


def retention_command(
    days: int | None, *, off: bool = False, dsn: str | None, data_dir: Path
) -> tuple[bool, int | None]:
    """``outpost cloud retention [DAYS | --off]``: set the database's retention of readings
    (and of the aggregates, on TimescaleDB), or with neither only report it. Returns (ever
    set, days or None for keep-forever) afterwards; a change is audited."""

    async def go(storage: Storage) -> tuple[bool, int | None]:
        if days is not None or off:
            new = None if off else days
            await storage.set_retention(new, set_by=f"cli:{audit.os_user()}")
            await audit.record_cli(
                storage.pool,
                audit.os_user(),
                "receiver.retention",
                "readings",
                {"days": new},
            )
            await storage.prune()
        return await storage.retention()

    return run_with_storage(go, dsn=dsn, data_dir=data_dir)


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def configure_logging() -> None:
    """Structured logs to stderr (stdout stays clean for `enroll`'s token)."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # sys.stderr looked up per logger, not bound once: a caller that swaps it (typer's
        # CliRunner, a test capturing output) and closes its stand-in leaves logging intact
        logger_factory=_stderr_logger,
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False)
            if sys.stderr.isatty()
            else structlog.processors.JSONRenderer(),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m outpost.cloud.receiver serve|enroll|revoke|retention`` (same as ``outpost cloud ...``;
    ``user ...`` is dispatched by ``__main__`` to ``user_cli``)."""
    parser = argparse.ArgumentParser(prog="python -m outpost.cloud.receiver")
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", default=None)
    common.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p = sub.add_parser("serve", parents=[common])
    p.add_argument("--bind", default=DEFAULT_BIND)
    p.add_argument("--max-body-bytes", type=int, default=None)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument(
        "--retention-days",
        type=int,
        default=None,
        help="set the database's retention of readings (0: keep forever); omitted: unchanged",
    )
    p = sub.add_parser("retention", parents=[common])
    p.add_argument("days", type=int, nargs="?", default=None)
    p.add_argument("--off", action="store_true", help="keep readings forever")
    p = sub.add_parser("enroll", parents=[common])
    p.add_argument("gateway_id")
    p.add_argument("--ttl", default="24h")
    p.add_argument("--site", default=None, help="the gateway's site (for site-scoped users)")
    p = sub.add_parser("revoke", parents=[common])
    p.add_argument("gateway_id")
    args = parser.parse_args(argv)
    configure_logging()
    if args.cmd == "serve":
        serve(
            dsn=args.dsn,
            data_dir=args.data_dir,
            bind=args.bind,
            max_body_bytes=args.max_body_bytes,
            max_rows=args.max_rows,
            retention_days=args.retention_days,
        )
        return 0
    if args.cmd == "enroll":
        tok = create_enrollment_token(
            args.gateway_id,
            parse_ttl(args.ttl),
            dsn=args.dsn,
            data_dir=args.data_dir,
            site=args.site,
        )
        print(
            f"enrollment token for {tok.gateway_id}, valid until "
            f"{tok.expires_at.isoformat(timespec='seconds')}, usable once:",
            file=sys.stderr,
        )
        print(tok.token)
        return 0
    if args.cmd == "retention":
        if args.days is not None and (args.off or args.days <= 0):
            print("give a number of days > 0, or --off", file=sys.stderr)
            return 2
        ever, kept = retention_command(
            args.days, off=args.off, dsn=args.dsn, data_dir=args.data_dir
        )
        if not ever:
            print("retention: never set (readings are kept forever)")
        else:
            print("retention: " + ("off (kept forever)" if kept is None else f"{kept} days"))
        return 0
    known = revoke_gateway(args.gateway_id, dsn=args.dsn, data_dir=args.data_dir)
    if not known:
        print(f"unknown gateway {args.gateway_id}", file=sys.stderr)
        return 1
    print(f"gateway {args.gateway_id} revoked", file=sys.stderr)
    return 0
