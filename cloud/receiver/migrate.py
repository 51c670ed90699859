"""Ordered SQL migrations (``migrations/NNNN_name.sql``) and the optional TimescaleDB layer.

Each migration runs in its own transaction and is recorded in ``schema_migrations`` with a
checksum; the whole run holds a PostgreSQL advisory lock, so receivers starting at the same
time apply each migration exactly once. An applied migration whose file changed afterwards
stops start-up: applied migrations are never edited, a new numbered file is added instead.

TimescaleDB is decided once per start: if ``CREATE EXTENSION IF NOT EXISTS timescaledb``
succeeds, ``readings`` becomes a hypertable with compression and 1-minute / 1-hour continuous
aggregates (all idempotent calls). Otherwise the plain schema (BRIN on time + the unique btree)
serves the same queries through ``date_bin``. Every TimescaleDB statement lives in this module:
set-up, retention policies and the refresh of aggregates after a backfill.

Retention is a property of the database: the ``receiver_settings`` row ``retention_days``
(absent: keep forever), written only by an explicit act (``outpost cloud retention``, ``serve
--retention-days``). Opening the database for anything else never touches it. TimescaleDB
enforces it with retention policies on the raw hypertable and on both aggregates (so an
aggregate never shows days the raw data no longer has); plain PostgreSQL by deleting old
readings in batches (:func:`prune_readings`, run periodically by the receiver).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

#: pg_advisory_lock key: "outpost" in ASCII, fits in a bigint
ADVISORY_KEY = 0x6F7574706F7374
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
RETENTION_KEY = "retention_days"
#: continuous aggregates: name, bucket width (the read API's 1m/5m use the first, 1h/1d the second)
AGGREGATES = (("readings_1m", timedelta(minutes=1)), ("readings_1h", timedelta(hours=1)))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("outpost.cloud.receiver").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m is None:
            continue
        found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        done = {r["version"]: r for r in rows}
        for mig in load_migrations():
            if mig.version in done:
                if done[mig.version]["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name}.sql changed after it was "
                        "applied; never edit an applied migration, add a new one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1,$2,$3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            applied_now.append(mig.version)
            log.info("receiver.migration", version=mig.version, name=mig.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_KEY)
    return applied_now


async def migrations_pending(conn: asyncpg.Connection) -> list[int]:
    """Versions not yet applied (an empty list means the schema is current)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    wanted = {mig.version for mig in load_migrations()}
    if not exists:
        return sorted(wanted)
    have = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return sorted(wanted - have)


async def try_timescaledb(conn: asyncpg.Connection) -> bool:
    """True when the timescaledb extension is (now) installed in this database."""
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        log.info("receiver.timescaledb_unavailable", reason=str(exc).splitlines()[0])
        return False
    return True


async def setup_timescaledb(conn: asyncpg.Connection) -> None:
    """Hypertable, compression, continuous aggregates and the retention the database's
    settings ask for (left alone when none was ever set); every step idempotent."""
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_KEY)
    try:
        await conn.execute(
            "SELECT create_hypertable('readings', 'time', chunk_time_interval => "
            "INTERVAL '1 day', if_not_exists => TRUE, migrate_data => TRUE)"
        )
        compressed = await conn.fetchval(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'readings'"
        )
        if not compressed:
            await conn.execute(
                "ALTER TABLE readings SET (timescaledb.compress, "
                "timescaledb.compress_segmentby = 'point_key', "
                "timescaledb.compress_orderby = 'time')"
            )
        await conn.execute(
            "SELECT add_compression_policy('readings', INTERVAL '7 days', if_not_exists => TRUE)"
        )
        for name, width in (("readings_1m", "1 minute"), ("readings_1h", "1 hour")):
            # Only non-bad readings with a value count, exactly like the plain path's queries.
            await conn.execute(
                f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {name}
                    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
                    SELECT point_key, time_bucket(INTERVAL '{width}', time) AS bucket,
                           min(value) AS v_min, max(value) AS v_max, sum(value) AS v_sum,
                           count(value) AS v_count, last(value, time) AS v_last
                    FROM readings WHERE quality < 128 AND value IS NOT NULL
                    GROUP BY point_key, bucket WITH NO DATA"""
            )
            # start_offset NULL: backfilled history (an agent draining days of backlog) lands
            # in old buckets; the refresh only re-materialises invalidated ranges, so this
            # stays cheap while keeping old aggregates correct.
            await conn.execute(
                f"""SELECT add_continuous_aggregate_policy('{name}', start_offset => NULL,
                        end_offset => INTERVAL '{width}', schedule_interval => INTERVAL '{width}',
                        if_not_exists => TRUE)"""
            )
        known, days = await retention_setting(conn)
        if known:
            await _timescale_retention(conn, days)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_KEY)


# --- retention -------------------------------------------------------------------------------


async def retention_setting(conn: asyncpg.Connection) -> tuple[bool, int | None]:
    """(set at all, days): ``(False, None)`` when nobody ever set it, ``(True, None)`` for an
    explicit keep-forever."""
    value = await conn.fetchval("SELECT value FROM receiver_settings WHERE key = $1", RETENTION_KEY)
    if value is None:
        return False, None
    return True, (int(value) if value != "off" else None)


async def set_retention(
    conn: asyncpg.Connection, days: int | None, *, set_by: str, timescaledb: bool
) -> None:
    """Record the database's retention (None or <= 0: keep forever) and, on TimescaleDB,
    make the policies match at once. The plain path's pruning reads the row each round."""
    days = days if days and days > 0 else None
    await conn.execute(
        """INSERT INTO receiver_settings (key, value, set_by) VALUES ($1, $2, $3)
           ON CONFLICT (key) DO UPDATE
           SET value = EXCLUDED.value, set_by = EXCLUDED.set_by, updated_at = now()""",
        RETENTION_KEY,
        "off" if days is None else str(days),
        set_by,
    )
    log.info("receiver.retention_set", days=days, set_by=set_by)
    if timescaledb:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_KEY)
        try:
            await _timescale_retention(conn, days)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_KEY)


async def _timescale_retention(conn: asyncpg.Connection, days: int | None) -> None:
    # The aggregates get the raw data's retention: after raw chunks are dropped a 1h/1d
    # answer must not go on showing those days from materialised buckets.
    for relation in ("readings", *(name for name, _ in AGGREGATES)):
        await conn.execute(f"SELECT remove_retention_policy('{relation}', if_exists => TRUE)")
        if days is not None:
            await conn.execute(
                f"SELECT add_retention_policy('{relation}', make_interval(days => $1))", days
            )


async def prune_readings(conn: asyncpg.Connection, days: int, batch: int = 10_000) -> int:
    """Plain PostgreSQL: delete readings older than ``days``, ``batch`` rows per statement
    (short transactions, no long lock on a busy table); returns how many went."""
    total = 0
    while True:
        status = await conn.execute(
            """DELETE FROM readings WHERE ctid = ANY(ARRAY(
                   SELECT ctid FROM readings WHERE time < now() - make_interval(days => $1)
                   LIMIT $2))""",
            days,
            batch,
        )
        n = int(status.split()[-1])
        total += n
        if n < batch:
            return total


# --- continuous aggregates after a backfill ---------------------------------------------------


class AggregateRefresher:
    """TimescaleDB: re-materialise the aggregate windows that late readings landed in.

    Real-time aggregates only add raw rows newer than the last refresh; a reading stored below
    that watermark (what store-and-forward delivers after every outage) stays invisible at
    1m/5m/1h/1d until the policy's next run. ``note()`` is told each ingested batch's time
    span; a reading older than one bucket width (the policies' ``end_offset``) may lie below
    the watermark, so its bucket-aligned window is queued. One background task refreshes the
    union of what was queued, coalescing a drain of many batches into few refreshes, so an
    answer is complete within about a second of the ingest acknowledgement.
    """

    def __init__(self, pool: asyncpg.Pool, *, delay_s: float = 0.2) -> None:
        self._pool = pool
        self._delay_s = delay_s
        self._pending: dict[str, tuple[datetime, datetime]] = {}
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0

    def note(self, first_ms: int, last_ms: int) -> None:
        now = datetime.now(UTC)
        first = datetime.fromtimestamp(first_ms / 1000, UTC)
        last = datetime.fromtimestamp(last_ms / 1000, UTC)
        for name, width in AGGREGATES:
            if first >= now - width:
                continue  # all of it above the watermark: real-time aggregation covers it
            start = _floor(first, width)
            end = _floor(last, width) + width
            queued = self._pending.get(name)
            if queued is not None:
                start, end = min(start, queued[0]), max(end, queued[1])
            self._pending[name] = (start, end)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self._delay_s)  # let a drain's next batches join the window
            pending, self._pending = self._pending, {}
            for name, (start, end) in pending.items():
                try:
                    # CALL refuses to run in a transaction block, and the extended protocol's
                    # implicit one counts: simple query, bounds are our own datetimes
                    await self._pool.execute(
                        f"CALL refresh_continuous_aggregate('{name}', "
                        f"'{start.isoformat()}'::timestamptz, '{end.isoformat()}'::timestamptz)"
                    )
                    self.refreshes += 1
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("receiver.aggregate_refresh_failed", aggregate=name, error=str(exc))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


def _floor(t: datetime, width: timedelta) -> datetime:
    epoch = datetime(2000, 1, 1, tzinfo=UTC)  # time_bucket's origin
    return epoch + ((t - epoch) // width) * width
