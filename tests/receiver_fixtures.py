"""Fixtures: a real PostgreSQL and a real receiver on a free loopback port.

Use in a test module (registers the fixtures as a plugin; no F811 noise from ruff)::

    pytest_plugins = ("tests.receiver_fixtures",)
    from tests.receiver_fixtures import ReceiverHandle  # for type hints, helpers

- ``pg_admin_dsn`` (session, sync): DSN of a server where we may CREATE DATABASE:
  ``$OUTPOST_TEST_DSN`` when set, else ONE embedded PostgreSQL per test session (durability
  off: fsync, synchronous_commit, full_page_writes; tests only). Starting it costs ~1.5 s once.
- ``receiver_dsn`` (function, async): a fresh empty database for this test, dropped after it.
  Each test has its own database, so tests never see each other's rows.
- ``receiver`` (function, async): a :class:`ReceiverHandle`, the receiver app served by uvicorn
  in this process on ``127.0.0.1:<free port>``, migrated, on ``receiver_dsn``.
- ``receiver_factory`` (function, async): ``await receiver_factory(max_rows=5, ...)`` for a
  receiver with other :class:`ReceiverSettings`; each call gets its own database.
- ``receiver_process`` (function): ``ReceiverProcess`` factory, ``receiver_process()`` returns a
  receiver run as a child process (``python -m outpost.cloud.receiver serve``) on ``receiver_dsn``'s
  database, for tests that SIGKILL the receiver itself.

A handle's ``stop()``/``start()`` stop and restart the HTTP server on the SAME port (the agent's
configured URL stays valid); the database and its rows stay.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio

from outpost.cloud.receiver import users
from outpost.cloud.receiver.embedded import EmbeddedPostgres
from outpost.cloud.receiver.server import ReceiverServer
from outpost.cloud.receiver.settings import ReceiverSettings
from outpost.cloud.receiver.storage import Storage

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
PASSWORD = "correct horse battery"


def dsn_with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReceiverHandle(ReceiverServer):
    """A receiver served in-process (``cloud.receiver.server.ReceiverServer``) plus helpers
    for tests. ``url`` has no trailing slash."""

    @property
    def dsn(self) -> str:
        return self.settings.dsn

    @property
    def admin_token(self) -> str:
        return self.settings.admin_token

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.admin_token}"}

    # --- helpers for tests ----------------------------------------------------------------

    async def enrollment_token(self, gateway_id: str, ttl_s: float = 3600.0) -> str:
        async with httpx.AsyncClient(base_url=self.url, headers=self.admin_headers) as c:
            r = await c.post(
                f"/api/v1/gateways/{gateway_id}/enrollment-tokens", json={"ttl_s": ttl_s}
            )
            r.raise_for_status()
            return r.json()["enrollment_token"]

    async def enroll(self, gateway_id: str) -> str:
        """Enroll ``gateway_id`` through the real exchange; returns its gateway token."""
        token = await self.enrollment_token(gateway_id)
        async with httpx.AsyncClient(base_url=self.url) as c:
            r = await c.post(
                "/api/v1/enroll", json={"gateway_id": gateway_id, "enrollment_token": token}
            )
            r.raise_for_status()
            return r.json()["gateway_token"]

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def count(self, table: str) -> int:
        rows = await self.fetch(f"SELECT count(*) AS n FROM {table}")  # table names are ours
        return int(rows[0]["n"])

    async def readings(self, gateway_id: str) -> list[tuple[str, int, float | None, int]]:
        """Every stored reading of the gateway as (point_id, ts_ms, value, quality), sorted:
        compare with the agent buffer's rows (values as ``outpost.cloud.wire.wire_value``)."""
        rows = await self.fetch(
            """SELECT p.point_id,
                      (extract(epoch FROM r.time) * 1000)::bigint AS ts_ms,
                      r.value, r.quality
               FROM readings r JOIN points p ON p.key = r.point_key
               WHERE p.gateway_id = $1 ORDER BY 1, 2""",
            gateway_id,
        )
        return [(r["point_id"], r["ts_ms"], r["value"], r["quality"]) for r in rows]

    async def add_user(
        self, name: str, role: str, password: str = PASSWORD, sites: list[str] | None = None
    ) -> None:
        """A dashboard user, created directly in the database (as `outpost cloud user add`)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await users.add_user(conn, name, role, password, sites)
        finally:
            await conn.close()

    async def login(self, client: httpx.AsyncClient, name: str, password: str = PASSWORD) -> str:
        """Log ``client`` in (its cookie jar keeps the session); returns the CSRF token."""
        r = await client.post(
            self.url + "/login",
            data={"username": name, "password": password},
            headers={"Accept": "application/json"},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["csrf_token"])

    async def audit_rows(self, action: str | None = None) -> list[asyncpg.Record]:
        return await self.fetch(
            "SELECT * FROM audit WHERE $1::text IS NULL OR action = $1 ORDER BY id", action
        )

    async def event_ids(self, gateway_id: str) -> list[int]:
        rows = await self.fetch(
            "SELECT event_id FROM events WHERE gateway_id = $1 ORDER BY event_id", gateway_id
        )
        return [r["event_id"] for r in rows]


@dataclass
class ReceiverProcess:
    """The receiver as a child process (``python -m outpost.cloud.receiver serve --dsn ...``)."""

    dsn: str
    port: int
    admin_token: str = ADMIN_TOKEN
    data_dir: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [
            sys.executable,
            "-m",
            "outpost.cloud.receiver",
            "serve",
            "--bind",
            f"127.0.0.1:{self.port}",
            *self.extra_args,
        ]
        if self.dsn:
            args += ["--dsn", self.dsn]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        env = {
            **os.environ,
            "OUTPOST_RECEIVER_ADMIN_TOKEN": self.admin_token,
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"receiver exited with {self.proc.returncode} (log: {self.log_path})"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"receiver not ready within {timeout} s (log: {self.log_path})")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown (the database keeps what was committed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    env = os.environ.get("OUTPOST_TEST_DSN")
    if env:
        yield env
        return
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-<user> to 0700 whenever a
    # session starts, and the server runs as an unprivileged user when we are root.
    base = Path(tempfile.mkdtemp(prefix="outpost-test-pg-"))
    base.chmod(0o755)
    pg = EmbeddedPostgres(base / "pg", fast=True)
    try:
        yield pg.start()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _create_database(admin_dsn: str) -> str:
    name = f"outpost_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
    finally:
        await conn.close()
    return name


async def _drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def receiver_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    name = await _create_database(pg_admin_dsn)
    try:
        yield dsn_with_database(pg_admin_dsn, name)
    finally:
        await _drop_database(pg_admin_dsn, name)


ReceiverFactory = Callable[..., Awaitable[ReceiverHandle]]


@pytest_asyncio.fixture
async def receiver_factory(pg_admin_dsn: str) -> AsyncIterator[ReceiverFactory]:
    handles: list[ReceiverHandle] = []
    databases: list[str] = []

    async def make(*, dsn: str | None = None, **overrides: Any) -> ReceiverHandle:
        if dsn is None:
            name = await _create_database(pg_admin_dsn)
            databases.append(name)
            dsn = dsn_with_database(pg_admin_dsn, name)
        settings = replace(
            ReceiverSettings(dsn=dsn, admin_token=ADMIN_TOKEN, pool_min=1, pool_max=4),
            **overrides,
        )
        handle = ReceiverHandle(settings, port=free_port())
        handles.append(handle)
        await handle.start()
        return handle

    try:
        yield make
    finally:
        for h in handles:
            await h.stop()
        for name in databases:
            await _drop_database(pg_admin_dsn, name)


@pytest_asyncio.fixture
async def receiver(receiver_factory: ReceiverFactory) -> ReceiverHandle:
    return await receiver_factory()


@pytest.fixture
def receiver_process(receiver_dsn: str, tmp_path: Path) -> Iterator[Callable[..., ReceiverProcess]]:
    procs: list[ReceiverProcess] = []

    def make(*extra_args: str, start: bool = True) -> ReceiverProcess:
        p = ReceiverProcess(
            dsn=receiver_dsn,
            port=free_port(),
            extra_args=list(extra_args),
            log_path=tmp_path / f"receiver-{len(procs)}.log",
        )
        procs.append(p)
        if start:
            p.start()
        return p

    try:
        yield make
    finally:
        for p in procs:
            p.kill()


async def open_storage(dsn: str) -> Storage:
    """A Storage on ``dsn`` (migrations applied) for direct checks; close it after use."""
    return await Storage.open(dsn, min_size=1, max_size=2)


def ttl(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
