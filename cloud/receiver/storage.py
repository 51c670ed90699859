"""The receiver's database access: enrollment, ingest, heartbeats, commands and reads.

One ``Storage`` per process wraps an asyncpg pool. Ingest is the hot path: one transaction per
batch, readings inserted from four arrays through ``unnest`` (one round trip for 5,000 rows),
duplicates dropped by ``ON CONFLICT DO NOTHING`` on (point_key, time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg
import numpy as np
import structlog

from outpost.cloud.wire import Heartbeat, IngestAck, IngestBatch, PointMeta

from . import live
from .ingest_columns import ColumnBatch, NanAsNone, copy_binary, values_or_none
from .migrate import (
    AggregateRefresher,
    migrate,
    migrations_pending,
    prune_readings,
    retention_setting,
    set_retention,
    setup_timescaledb,
    try_timescaledb,
)

log = structlog.get_logger(__name__)

Resolution = Literal["raw", "1m", "5m", "1h", "1d"]
BUCKETS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
_POINT_CACHE_MAX = 500_000
_LAST_SEEN_EVERY_S = 5.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def auto_resolution(span: timedelta) -> Resolution:
    if span < timedelta(hours=2):
        return "raw"
    if span < timedelta(hours=12):
        return "1m"
    if span < timedelta(days=7):
        return "5m"
    if span < timedelta(days=90):
        return "1h"
    return "1d"


def bucket_range(start: datetime, end: datetime, width: timedelta) -> tuple[datetime, datetime]:
    """[start, end) widened to whole buckets aligned on 2000-01-01T00:00Z (date_bin's and
    time_bucket's common origin for these widths)."""
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    try:
        first = origin + ((start - origin) // width) * width
    except OverflowError:  # before year 1: nothing is stored there anyway
        first = start
    try:
        last = origin + -((origin - end) // width) * width
    except OverflowError:  # the bucket holding 9999-12-31 would end past the calendar
        last = end
    return first, last


class EnrollError(Exception):
    pass


@dataclass(frozen=True)
class GatewayAuth:
    gateway_id: str
    revoked: bool


@dataclass(frozen=True)
class EnrollmentToken:
    token: str
    gateway_id: str
    expires_at: datetime


class Storage:
    def __init__(self, pool: asyncpg.Pool, *, timescaledb: bool) -> None:
        self.pool = pool
        self.timescaledb = timescaledb
        self._point_keys: dict[tuple[str, str], int] = {}
        self._closing = False
        self._last_seen_written: dict[str, float] = {}
        self._refresher = AggregateRefresher(pool) if timescaledb else None
        self._maintenance: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        retention_days: int | None = None,
        use_timescaledb: bool = True,
    ) -> Storage:
        """``retention_days`` given (``serve --retention-days``; <= 0 keeps forever) sets the
        database's retention; None leaves whatever it is (enroll, revoke, a second receiver)."""
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            timescale = use_timescaledb and await try_timescaledb(conn)
            if timescale:
                await setup_timescaledb(conn)
            if retention_days is not None:
                await set_retention(
                    conn, retention_days, set_by="serve --retention-days", timescaledb=timescale
                )
        finally:
            await conn.close()
        log.info("receiver.storage", timescaledb=timescale)
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection
        )
        assert pool is not None
        return cls(pool, timescaledb=timescale)

    async def close(self) -> None:
        self._closing = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        if self._refresher is not None:
            await self._refresher.close()
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except TimeoutError:  # a connection stuck on a vanished server
            self.pool.terminate()

    async def ready(self) -> tuple[bool, str]:
        try:
            async with self.pool.acquire(timeout=2.0) as conn:
                pending = await migrations_pending(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            return False, f"database unreachable: {exc.__class__.__name__}: {exc}"
        if pending:
            return False, f"migrations not applied: {pending}"
        return True, "ok"

    # --- retention ----------------------------------------------------------------------------

    async def retention(self) -> tuple[bool, int | None]:
        """(ever set, days or None for keep-forever): the database's own setting."""
        async with self.pool.acquire() as conn:
            return await retention_setting(conn)

    async def set_retention(self, days: int | None, *, set_by: str) -> None:
        async with self.pool.acquire() as conn:
            await set_retention(conn, days, set_by=set_by, timescaledb=self.timescaledb)

    async def prune(self) -> int:
        """Plain PostgreSQL: delete readings beyond the retention now (TimescaleDB's policies
        do it there: 0). Returns the rows deleted."""
        if self.timescaledb:
            return 0
        async with self.pool.acquire() as conn:
            _, days = await retention_setting(conn)
            if days is None:
                return 0
            deleted = await prune_readings(conn, days)
        if deleted:
            log.info("receiver.pruned", rows=deleted, retention_days=days)
        return deleted

    def start_maintenance(self, every_s: float) -> None:
        """Enforce retention every ``every_s`` in the background (the row is re-read each
        round, so `outpost cloud retention` takes effect without a restart)."""

        async def loop() -> None:
            while True:
                try:
                    await self.prune()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("receiver.prune_failed", error=str(exc))
                await asyncio.sleep(every_s)

        self._maintenance = asyncio.get_running_loop().create_task(loop())

    # --- enrollment and auth ----------------------------------------------------------------

    async def create_enrollment_token(self, gateway_id: str, ttl: timedelta) -> EnrollmentToken:
        token = new_token()
        expires = datetime.now(UTC) + ttl
        await self.pool.execute(
            "INSERT INTO enrollment_tokens (token_hash, gateway_id, expires_at) "
            "VALUES ($1, $2, $3)",
            hash_token(token),
            gateway_id,
            expires,
        )
        log.info("receiver.enrollment_token", gateway=gateway_id, expires_at=expires.isoformat())
        return EnrollmentToken(token, gateway_id, expires)

    async def enroll(self, gateway_id: str, enrollment_token: str) -> str:
        """Exchange an enrollment token for a new gateway token (returned in clear).

        Retry-safe: the answer can be lost on the wire after the commit. While the token is
        still valid, the gateway has not been revoked or enrolled by another token since, and
        the token issued last time was never used (no contact from the gateway since), the
        same enrollment token is honoured again: a fresh gateway token replaces the lost one,
        which stops working. Once the gateway has been heard with its token, the enrollment
        token is spent for good.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT e.gateway_id, e.expires_at, e.used_at, g.enrolled_at, g.revoked_at, "
                "g.last_seen FROM enrollment_tokens e LEFT JOIN gateways g "
                "ON g.id = e.gateway_id WHERE e.token_hash = $1 FOR UPDATE OF e",
                hash_token(enrollment_token),
            )
            if row is None or row["gateway_id"] != gateway_id:
                raise EnrollError("unknown enrollment token for this gateway")
            if row["expires_at"] <= datetime.now(UTC):
                raise EnrollError("enrollment token expired")
            if row["used_at"] is not None:
                # used_at and enrolled_at are both the enrolling transaction's now()
                retry = (
                    row["enrolled_at"] == row["used_at"]
                    and row["revoked_at"] is None
                    and (row["last_seen"] is None or row["last_seen"] < row["used_at"])
                )
                if not retry:
                    raise EnrollError("enrollment token already used")
                log.info("receiver.enroll_retry", gateway=gateway_id)
            token = new_token()
            await conn.execute(
                "UPDATE enrollment_tokens SET used_at = now() WHERE token_hash = $1",
                hash_token(enrollment_token),
            )
            await conn.execute(
                """INSERT INTO gateways (id, token_hash, enrolled_at, revoked_at)
                   VALUES ($1, $2, now(), NULL)
                   ON CONFLICT (id) DO UPDATE
                   SET token_hash = EXCLUDED.token_hash, enrolled_at = now(), revoked_at = NULL""",
                gateway_id,
                hash_token(token),
            )
        log.info("receiver.enrolled", gateway=gateway_id)
        return token

    async def revoke(self, gateway_id: str) -> bool:
        """Revoke the gateway's token and its unused enrollment tokens; False if unknown."""
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE gateways SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                gateway_id,
            )
            await conn.execute(
                # used ones too: a spent token must not re-enroll a revoked gateway
                "UPDATE enrollment_tokens SET expires_at = least(expires_at, now()) "
                "WHERE gateway_id = $1",
                gateway_id,
            )
            known = await conn.fetchval("SELECT 1 FROM gateways WHERE id = $1", gateway_id)
        log.info("receiver.revoked", gateway=gateway_id, changed=_count(status))
        return known is not None

    async def authenticate(self, token: str) -> GatewayAuth | None:
        row = await self.pool.fetchrow(
            "SELECT id, revoked_at FROM gateways WHERE token_hash = $1", hash_token(token)
        )
        if row is None:
            return None
        return GatewayAuth(row["id"], row["revoked_at"] is not None)

    # --- ingest -----------------------------------------------------------------------------

    async def ingest(self, batch: IngestBatch | ColumnBatch) -> IngestAck:
        """Store one batch (a JSON body's :class:`IngestBatch` or a binary body's
        :class:`ColumnBatch`, both validated) idempotently, in one transaction."""
        cols = batch if isinstance(batch, ColumnBatch) else ColumnBatch.from_batch(batch)
        for attempt in range(4):
            try:
                return await self._ingest_once(cols)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                # concurrent replays of overlapping batches can deadlock on the unique index
                if attempt == 3:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _ingest_once(self, batch: ColumnBatch) -> IngestAck:
        gw = batch.gateway_id
        r = batch.readings
        ts_ms = r.ts_ms
        new_keys: dict[str, int] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            if batch.points:
                await _upsert_points(conn, gw, batch.points)
            keys = await self._keys_for(conn, gw, r.point_ids, new_keys)
            inserted = 0
            if len(r):
                point_keys = np.asarray(keys, dtype=np.int32)[r.point]
                # Optimistic: almost every batch is new, and COPY (bulk heap inserts) costs
                # ~40 % less than INSERT ... ON CONFLICT (speculative insertion per row). A
                # replay or overlap raises a unique violation; the savepoint undoes the COPY
                # and the batch is inserted again skipping the rows that exist. The COPY body
                # is built from the columns in one structured array (copy_binary).
                try:
                    async with conn.transaction():
                        await conn.copy_to_table(
                            "readings",
                            source=io.BytesIO(copy_binary(ts_ms, point_keys, r.value, r.quality)),
                            columns=_READING_COLUMNS,
                            format="binary",
                        )
                    inserted = len(r)
                except asyncpg.UniqueViolationError:
                    status = await conn.execute(
                        _INSERT_READINGS_SKIP_EXISTING,
                        point_keys.tolist(),
                        ts_ms.tolist(),
                        values_or_none(r.value),
                        r.quality.tolist(),
                    )
                    inserted = _count(status)
            events_inserted = 0
            if batch.events:
                ev = batch.events
                status = await conn.execute(
                    """INSERT INTO events (gateway_id, event_id, ts, kind, source, actor, detail)
                       SELECT $1, u.i, TIMESTAMPTZ 'epoch' + u.t * INTERVAL '1 millisecond',
                              u.k, u.s, u.a, u.d::jsonb
                       FROM unnest($2::int8[], $3::int8[], $4::text[], $5::text[], $6::text[],
                                   $7::text[]) AS u(i, t, k, s, a, d)
                       ON CONFLICT DO NOTHING""",
                    gw,
                    [e.id for e in ev],
                    [e.ts for e in ev],
                    [e.kind for e in ev],
                    [e.source for e in ev],
                    [e.actor for e in ev],
                    [json.dumps(e.detail) for e in ev],
                )
                events_inserted = _count(status)
            # Live dashboards (live.py): NOTIFY in this transaction is sent on commit only, and
            # reaches every receiver process's SSE clients; one round trip per batch.
            notes = []
            if inserted:
                # the newest reading of each point only (what the payloads carry), found by
                # array operations: the last occurrence of each point index
                rev = len(r) - 1 - np.unique(r.point[::-1], return_index=True)[1]
                notes = live.reading_payloads(
                    gw,
                    r.point_ids,
                    r.point[rev].tolist(),
                    ts_ms[rev].tolist(),
                    NanAsNone(r.value[rev]),
                    r.quality[rev].tolist(),
                )
            if events_inserted:
                n_alarm = sum(1 for e in batch.events if live.is_alarm_event(e.kind))
                if n_alarm:
                    notes.append(live.alarm_payload(gw, n_alarm))
            if notes:
                await conn.execute(live.NOTIFY_MANY_SQL, notes)
            duplicate = len(r) - inserted
            await conn.execute(
                "INSERT INTO ingest_log (gateway_id, first_seq, last_seq, inserted, duplicate, "
                "events) VALUES ($1, $2, $3, $4, $5, $6)",
                gw,
                batch.first_seq,
                batch.last_seq,
                inserted,
                duplicate,
                events_inserted,
            )
        # after commit: keys of rolled-back point rows must never enter the cache
        if len(self._point_keys) + len(new_keys) > _POINT_CACHE_MAX:
            self._point_keys.clear()
        for pid, key in new_keys.items():
            self._point_keys[(gw, pid)] = key
        if self._refresher is not None and inserted:
            # late history below the aggregates' watermark: refreshed in the background
            self._refresher.note(int(ts_ms.min()), int(ts_ms.max()))
        # Outside the batch transaction (no gateway row lock held while inserting) and at
        # most every few seconds per gateway: a separate commit per batch costs an fsync.
        now = time.monotonic()
        if now - self._last_seen_written.get(gw, -1e9) >= _LAST_SEEN_EVERY_S:
            self._last_seen_written[gw] = now
            await self.pool.execute("UPDATE gateways SET last_seen = now() WHERE id = $1", gw)
        return IngestAck(
            gateway_id=gw,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            readings_inserted=inserted,
            readings_duplicate=duplicate,
            events_inserted=events_inserted,
        )

    async def _keys_for(
        self,
        conn: asyncpg.Connection,
        gw: str,
        point_ids: Sequence[str],
        new_keys: dict[str, int],
    ) -> list[int]:
        cache = self._point_keys
        missing = [p for p in point_ids if (gw, p) not in cache]
        if missing:
            await conn.execute(
                "INSERT INTO points (gateway_id, point_id) SELECT $1, unnest($2::text[]) "
                "ON CONFLICT DO NOTHING",
                gw,
                missing,
            )
            rows = await conn.fetch(
                "SELECT point_id, key FROM points WHERE gateway_id = $1 "
                "AND point_id = ANY($2::text[])",
                gw,
                missing,
            )
            new_keys.update({r["point_id"]: r["key"] for r in rows})
        return [new_keys[p] if p in new_keys else cache[(gw, p)] for p in point_ids]

    # --- heartbeat and commands -------------------------------------------------------------

    async def heartbeat(self, hb: Heartbeat) -> None:
        # the NOTIFY (live.py: fleet pages refresh the row) rides on the same statement
        await self.pool.execute(
            "WITH u AS (UPDATE gateways SET last_heartbeat = $2::jsonb, last_seen = now() "
            "WHERE id = $1 RETURNING id) SELECT pg_notify($3, $4) FROM u",
            hb.gateway_id,
            hb.model_dump_json(),
            live.CHANNEL,
            live.heartbeat_payload(hb.gateway_id),
        )

    async def gateways(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(_GATEWAY_SELECT + " ORDER BY g.id")

    async def gateway(self, gateway_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(_GATEWAY_SELECT + " WHERE g.id = $1", gateway_id)

    async def points(self, gateway_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT * FROM points WHERE gateway_id = $1 ORDER BY point_id", gateway_id
        )

    async def point_key(self, gateway_id: str, point_id: str) -> int | None:
        return await self.pool.fetchval(
            "SELECT key FROM points WHERE gateway_id = $1 AND point_id = $2",
            gateway_id,
            point_id,
        )

    async def raw_readings(
        self, key: int, start: datetime, end: datetime, limit: int
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT time, value, quality FROM readings WHERE point_key = $1 "
            "AND time >= $2 AND time < $3 ORDER BY time LIMIT $4",
            key,
            start,
            end,
            limit,
        )

    async def aggregated_readings(
        self, key: int, start: datetime, end: datetime, resolution: str, limit: int
    ) -> list[asyncpg.Record]:
        """Buckets of non-bad readings with a value: min/max/avg/count/last per bucket.

        Buckets are whole (the range is widened to bucket boundaries, UTC-aligned), so the
        plain and the TimescaleDB paths, which pre-aggregates whole minutes and hours, agree.
        """
        start, end = bucket_range(start, end, BUCKETS[resolution])
        if self.timescaledb:
            source = "readings_1m" if resolution in ("1m", "5m") else "readings_1h"
            return await self.pool.fetch(
                f"""SELECT time_bucket($5::interval, bucket) AS time,
                           min(v_min) AS min, max(v_max) AS max,
                           sum(v_sum) / nullif(sum(v_count), 0) AS avg,
                           sum(v_count)::bigint AS count, last(v_last, bucket) AS last
                    FROM {source}
                    WHERE point_key = $1 AND bucket >= $2 AND bucket < $3
                    GROUP BY 1 ORDER BY 1 LIMIT $4""",
                key,
                start,
                end,
                limit,
                BUCKETS[resolution],
            )
        return await self.pool.fetch(
            """SELECT date_bin($5::interval, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS time,
                      min(value) AS min, max(value) AS max, avg(value) AS avg,
                      count(*) AS count, (array_agg(value ORDER BY time DESC))[1] AS last
               FROM readings
               WHERE point_key = $1 AND time >= $2 AND time < $3
                     AND quality < 128 AND value IS NOT NULL
               GROUP BY 1 ORDER BY 1 LIMIT $4""",
            key,
            start,
            end,
            limit,
            BUCKETS[resolution],
        )

    async def events(
        self, gateway: str | None, start: datetime, end: datetime, kind: str | None, limit: int
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT gateway_id, event_id, ts, kind, source, actor, detail FROM events
               WHERE ts >= $1 AND ts < $2 AND ($3::text IS NULL OR gateway_id = $3)
                     AND ($4::text IS NULL OR kind = $4)
               ORDER BY ts, gateway_id, event_id LIMIT $5""",
            start,
            end,
            gateway,
            kind,
            limit,
        )


_READING_COLUMNS = ("time", "point_key", "value", "quality")
# timestamptz parameters may be epoch-ms ints (see _encode_timestamptz)
_INSERT_READINGS_SKIP_EXISTING = """INSERT INTO readings (time, point_key, value, quality)
    SELECT u.t, u.k, u.v, u.q
    FROM unnest($1::int4[], $2::timestamptz[], $3::float8[], $4::int2[]) AS u(k, t, v, q)
    ON CONFLICT DO NOTHING"""

_GATEWAY_SELECT = """SELECT g.id, g.enrolled_at, g.revoked_at, g.last_seen, g.last_heartbeat,
    (SELECT count(*) FROM points p WHERE p.gateway_id = g.id) AS points
    FROM gateways g"""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=str, decoder=str, schema="pg_catalog")
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        format="tuple",
        encoder=_encode_timestamptz,
        decoder=_decode_timestamptz,
    )


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_MS = 946_684_800_000
_US = timedelta(microseconds=1)


def _encode_timestamptz(value: datetime | int) -> tuple[int]:
    """timestamptz parameters: datetimes as usual, or epoch-ms ints straight from the wire
    (no datetime object per reading on the ingest path). Wire format: us since 2000-01-01."""
    if isinstance(value, int):
        return ((value - _PG_EPOCH_MS) * 1000,)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return ((value - _PG_EPOCH) // _US,)


def _decode_timestamptz(value: tuple[int]) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=value[0])


async def _upsert_points(conn: asyncpg.Connection, gw: str, points: list[PointMeta]) -> None:
    await conn.executemany(
        """INSERT INTO points (gateway_id, point_id, device, units, description, data_type, tags,
                               limits, writable, schedule_version, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, now())
           ON CONFLICT (gateway_id, point_id) DO UPDATE SET
               device = EXCLUDED.device, units = EXCLUDED.units,
               description = EXCLUDED.description, data_type = EXCLUDED.data_type,
               tags = EXCLUDED.tags, limits = EXCLUDED.limits, writable = EXCLUDED.writable,
               schedule_version = EXCLUDED.schedule_version, updated_at = now()""",
        [
            (
                gw,
                p.point_id,
                p.device,
                p.units,
                p.description,
                p.data_type,
                json.dumps(p.tags),
                json.dumps(p.limits()),
                p.writable,
                p.schedule_version,
            )
            for p in points
        ],
    )


def _count(status: str) -> int:
    # "INSERT 0 17" / "UPDATE 3"
    return int(status.rsplit(" ", 1)[-1])
