"""Prometheus metrics of one running agent (``GET /metrics``).

One :class:`AgentMetrics` per ``Runtime``; prometheus_client and the collector
(``core.metrics_export``) are imported at the first scrape, with a registry of the agent's own.
Nearly everything is read at scrape time from the counters the runtime keeps anyway (scheduler
job stats, pipeline stats, device health, buffer stats, uplink and command-channel status,
alarm counts, mode) by ``metrics_export.AgentCollector``, so the hot path pays nothing for it. The one
metric fed as it happens is the poll-duration histogram: one ``observe`` per poll of a device
(:meth:`AgentMetrics.timed_poll` wraps the scheduler's job action), never per point.

Served on the local API socket and on ``[api] bind``; ``promtool check metrics`` is clean on
the output (tests/test_metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import secrets
import socket
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from outpost.agent.core.metrics_export import AgentCollector, MetricsSource

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Modbus on a LAN answers in milliseconds, BACnet/SNMP over a routed link in up to seconds,
# a timed-out device at its timeout × (retries + 1).
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class PollDurations:
    """One device's poll-duration histogram in plain numbers: observing costs a bisect and two
    additions, and prometheus_client is needed only to render it (``metrics_export``)."""

    __slots__ = ("counts", "created", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0.0] * (buckets + 1)
        self.total = 0.0
        self.created = time.time()


class AgentMetrics:
    def __init__(self, source: MetricsSource) -> None:
        self._source = source
        self._polls: dict[str, PollDurations] = {}
        self._registry: CollectorRegistry | None = None
        self._collector: AgentCollector | None = None
        self._lock = asyncio.Lock()

    def timed_poll(
        self, device: str, action: Callable[[], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """``action`` with its duration observed once per poll (also when it raises)."""
        series = self._polls.get(device)
        if series is None:
            series = self._polls[device] = PollDurations(len(POLL_BUCKETS))
        counts = series.counts

        async def timed() -> None:
            t0 = time.perf_counter()
            try:
                await action()
            finally:
                elapsed = time.perf_counter() - t0
                counts[bisect_left(POLL_BUCKETS, elapsed)] += 1
                series.total += elapsed

        return timed

    async def render(self) -> bytes:
        """The exposition text. Buffer statistics need SQLite: fetched off the loop first,
        then everything else is read on the loop, where the runtime's objects live."""
        from outpost.agent.core.metrics_export import AgentCollector, build_registry, exposition

        async with self._lock:
            if self._registry is None or self._collector is None:
                self._collector = AgentCollector(self._source)
                self._registry = build_registry(
                    self._collector,
                    "outpost_poll_duration_seconds",
                    "Duration of one poll of a device's point group (request to decoded values).",
                    POLL_BUCKETS,
                    self._polls,
                )
            self._collector.buffer = await self._source.buffer_stats()
            try:
                return exposition(self._registry)
            finally:
                self._collector.buffer = None

    async def endpoint(self, request: Request) -> Response:
        """Starlette endpoint for ``GET /metrics``."""
        return Response(await self.render(), media_type=CONTENT_TYPE)


# ---------------------------------------------------------------------- [api] bind


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling (the runtime owns SIGTERM/SIGINT/SIGHUP)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def metrics_http_app(metrics: AgentMetrics, token: str | None) -> Starlette:
    """``GET /metrics`` alone; with ``token``, only for ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode() if token else None

    async def endpoint(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return PlainTextResponse(
                    "bearer token required\n", 401, headers={"WWW-Authenticate": "Bearer"}
                )
        return await metrics.endpoint(request)

    return Starlette(routes=[Route("/metrics", endpoint, methods=["GET"])])


def bind_token(bind: str, token_env: str | None) -> str | None:
    """The bearer token ``/metrics`` on ``[api] bind`` requires (None: open).

    Loopback: none (like every exporter on the box). Elsewhere: the ``token_env`` variable's
    value; if ``token_env`` is set but the variable is missing, a random token nobody has,
    so a misconfiguration refuses everyone instead of serving openly. No ``token_env``:
    open, with a warning."""
    if _is_loopback(bind.rpartition(":")[0]):
        return None
    token = os.environ.get(token_env) if token_env else None
    if token_env and not token:
        log.error("metrics_http.token_missing", env=token_env, bind=bind)
        return secrets.token_urlsafe(32)
    if token is None:
        log.warning("metrics_http.unauthenticated", bind=bind)
    return token


async def serve_metrics_http(
    metrics: AgentMetrics, bind: str, *, token_env: str | None, retry_s: float = 30.0
) -> None:
    """Serve ``/metrics`` on ``[api] bind`` until cancelled.

    Auth: on a loopback address, none (like every exporter on the box); elsewhere the
    ``[api] token_env`` bearer token when one is configured (Prometheus: ``authorization:
    {credentials_file: …}``). A port in use is logged once and retried, never fatal: the
    agent's job is polling, not this listener."""
    host, _, port = bind.rpartition(":")
    token = bind_token(bind, token_env)
    app = metrics_http_app(metrics, token)
    warned = False
    while True:
        try:
            sock = socket.create_server((host.strip("[]"), int(port)), reuse_port=False)
        except OSError as exc:
            if not warned:
                log.warning("metrics_http.bind_failed", bind=bind, error=str(exc), retry_s=retry_s)
                warned = True
            await asyncio.sleep(retry_s)
            continue
        break
    server = QuietServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    log.info("metrics_http.listening", bind=bind, auth=token is not None)
    try:
        await server.serve(sockets=[sock])
    except asyncio.CancelledError:
        server.should_exit = True
        raise
    finally:
        sock.close()
