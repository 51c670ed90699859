"""Prometheus metrics of the receiver (``GET /metrics``).

One :class:`ReceiverMetrics` per app (its own ``CollectorRegistry``, never the global one).
Ingest is counted as it happens (:meth:`ReceiverMetrics.record_ingest`: a few additions per
batch); the rest is read at scrape time: gateways online/stale/offline (one aggregate query,
the dashboard's thresholds), the asyncpg pool, the live-update (SSE) subscribers.

Who may scrape: a peer on a loopback address without credentials (Prometheus on the same
host, or a reverse proxy on it that sets X-Forwarded-For: uvicorn then reports the real
client); anyone else needs ``Authorization: Bearer`` with the scrape token
(``OUTPOST_RECEIVER_METRICS_TOKEN``: give Prometheus this one, it can read nothing else) or
the admin token. Anything else is a 401.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from outpost.cloud.wire import IngestAck

from .settings import ReceiverSettings

METRICS_TOKEN_ENV = "OUTPOST_RECEIVER_METRICS_TOKEN"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INGEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_GATEWAYS_SQL = """
SELECT
  count(*) FILTER (WHERE revoked_at IS NULL AND enrolled_at IS NOT NULL
                   AND last_seen >= now() - make_interval(secs => $1)) AS online,
  count(*) FILTER (WHERE revoked_at IS NULL AND enrolled_at IS NOT NULL
                   AND last_seen < now() - make_interval(secs => $1)
                   AND last_seen >= now() - make_interval(secs => $2)) AS stale,
  count(*) FILTER (WHERE revoked_at IS NULL AND enrolled_at IS NOT NULL
                   AND (last_seen IS NULL OR last_seen < now() - make_interval(secs => $2)))
    AS offline,
  count(*) FILTER (WHERE revoked_at IS NOT NULL) AS revoked,
  count(*) FILTER (WHERE revoked_at IS NULL AND enrolled_at IS NULL) AS not_enrolled
FROM gateways
"""
_STATUSES = ("online", "stale", "offline", "revoked", "not_enrolled")


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.ingest_batches = Counter(
            "outpost_receiver_ingest_batches",
            "Ingest batches stored and acknowledged (replays included).",
            registry=self.registry,
        )
        self.readings_inserted = Counter(
            "outpost_receiver_readings_inserted",
            "Readings written by ingest.",
            registry=self.registry,
        )
        self.readings_duplicate = Counter(
            "outpost_receiver_readings_duplicate",
            "Readings already stored (a replayed batch after a lost ack).",
            registry=self.registry,
        )
        self.events_inserted = Counter(
            "outpost_receiver_events_inserted", "Events written by ingest.", registry=self.registry
        )
        self.ingest_seconds = Histogram(
            "outpost_receiver_ingest_duration_seconds",
            "Time to read, validate and store one ingest batch.",
            buckets=INGEST_BUCKETS,
            registry=self.registry,
        )

    def record_ingest(self, ack: IngestAck, seconds: float) -> None:
        self.ingest_batches.inc()
        self.readings_inserted.inc(ack.readings_inserted)
        self.readings_duplicate.inc(ack.readings_duplicate)
        self.events_inserted.inc(ack.events_inserted)
        self.ingest_seconds.observe(seconds)

    async def render(self, app_state: Any, settings: ReceiverSettings) -> bytes:
        """Exposition text; the gateway counts come from one query made first (async)."""
        storage = getattr(app_state, "storage", None)
        pool: asyncpg.Pool | None = getattr(storage, "pool", None)
        gateways: dict[str, int] | None = None
        if pool is not None:
            row = await pool.fetchrow(_GATEWAYS_SQL, settings.online_s, settings.stale_s)
            if row is not None:
                gateways = {s: int(row[s]) for s in _STATUSES}
        hub = getattr(app_state, "live_hub", None)
        return generate_latest(self.registry) + _render_state(
            gateways, pool, None if hub is None else int(hub.subscribers)
        )


def _render_state(gateways: dict[str, int] | None, pool: Any, sse_clients: int | None) -> bytes:
    families: list[Metric] = []
    if gateways is not None:
        g = GaugeMetricFamily(
            "outpost_receiver_gateways",
            "Gateways by status (online < online_s since last seen < stale < stale_s < offline).",
            labels=["status"],
        )
        for status in _STATUSES:
            g.add_metric([status], gateways[status])
        families.append(g)
    if pool is not None:
        size = GaugeMetricFamily(
            "outpost_receiver_db_pool_connections",
            "Database pool connections by state.",
            labels=["state"],
        )
        total, idle = pool.get_size(), pool.get_idle_size()
        size.add_metric(["idle"], idle)
        size.add_metric(["in_use"], total - idle)
        families.append(size)
        families.append(
            GaugeMetricFamily(
                "outpost_receiver_db_pool_max_connections",
                "Largest size the database pool may grow to.",
                value=pool.get_max_size(),
            )
        )
    if sse_clients is not None:
        families.append(
            GaugeMetricFamily(
                "outpost_receiver_sse_clients",
                "Browsers subscribed to live updates (Server-Sent Events).",
                value=sse_clients,
            )
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_router(settings: ReceiverSettings, metrics: ReceiverMetrics) -> APIRouter:
    scrape_token = os.environ.get(METRICS_TOKEN_ENV, "").strip()
    accepted = [t.encode() for t in (scrape_token, settings.admin_token) if t]
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        client = request.client.host if request.client is not None else None
        if not _is_loopback(client):
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            given = token.strip().encode()
            ok = scheme.lower() == "bearer" and any(hmac.compare_digest(given, t) for t in accepted)
            if not ok:
                return PlainTextResponse(
                    "bearer token required (scrape token or admin token)\n",
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        body = await metrics.render(request.app.state, settings)
        return Response(body, media_type=CONTENT_TYPE)

    return router
