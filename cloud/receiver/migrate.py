"""Ordered SQL migrations (``migrations/NNNN_name.sql``) and the optional TimescaleDB layer.

Each migration runs in its own transaction and is recorded in ``schema_migrations`` with a
checksum; the whole run holds a PostgreSQL advisory lock, so receivers starting at the same
time apply each migration exactly once. An applied migration whose file changed afterwards
stops start-up: applied migrations are never edited, a new numbered file is added instead.

TimescaleDB is decided once per start: if ``CREATE EXTENSION IF NOT EXISTS timescaledb``
succeeds, ``readings`` becomes a hypertable with compression, an optional retention policy and
1-minute / 1-hour continuous aggregates (all idempotent calls). Otherwise the plain schema
(BRIN on time + the unique btree) serves the same queries through ``date_bin``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

#: pg_advisory_lock key: "outpost" in ASCII, fits in a bigint
ADVISORY_KEY = 0x6F7574706F7374
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


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


async def setup_timescaledb(conn: asyncpg.Connection, retention_days: int | None) -> None:
    """Hypertable, compression, retention and continuous aggregates; every step idempotent."""
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
        await conn.execute("SELECT remove_retention_policy('readings', if_exists => TRUE)")
        if retention_days:
            await conn.execute(
                "SELECT add_retention_policy('readings', make_interval(days => $1))",
                retention_days,
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
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_KEY)
