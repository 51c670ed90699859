"""The buffer file: schema, connection settings, health checks, recovery, statistics.

Shared by the running store (:mod:`outpost.buffer.store`) and the file tools (:mod:`outpost.buffer.inspect`).

Layout choices (measured on SQLite 3.40, see bench/buffer.py):

- ``readings.seq`` is the INTEGER PRIMARY KEY (the rowid): appends go to the right edge of one
  B-tree, the uplink drains by rowid range scans and eviction deletes whole leaf pages from the
  left. There is deliberately no per-point index: it halves the append rate (190k vs 500k rows/s
  measured). Time-range queries (history, export) are pruned through ``blocks``, one row per
  group commit with the seq range and the min/max timestamp in it (a BRIN in miniature).
- ``readings`` is a STRICT table (no measurable cost): a value that is not a number is refused
  at insert instead of being stored as text and breaking the uplink later.
- ``ts`` is INTEGER epoch milliseconds: the contract's precision, 6 bytes per row on disk
  against 8 for a REAL, and exactly what the wire sends (it also rounds to the millisecond).
- ``seq`` is assigned by the single writer from ``meta.last_seq`` (persisted in the same
  transaction), never from max(rowid)+1, so it stays monotonic after every row was evicted.
- WAL with ``synchronous=NORMAL``: a committed transaction is in the WAL file (the OS page
  cache) when COMMIT returns, so it survives ``kill -9`` of the agent. Only power loss or a
  kernel crash can lose the last transactions before the next checkpoint (never corrupting the
  file). ``synchronous=FULL`` would fsync on every group commit; with ~1 commit/s that would be
  affordable, but on SD cards and cheap eMMC an fsync can stall for 100s of ms, and the readings
  of that last second are the ones a power cut makes meaningless anyway.
- ``auto_vacuum=INCREMENTAL``: deleted pages go to the freelist and are reused by new rows
  (the file stays at its high-water mark, bounded by ``max_size_mb``); after retention frees a
  lot, the writer gives pages back to the file system in small steps.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import structlog

from outpost.buffer.models import BufferStats

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
#: PRAGMA application_id of an Outpost buffer ("OPBF"): tells our file from any other SQLite file.
APPLICATION_ID = 0x4F504246
SQLITE_HEADER = b"SQLite format 3\x00"

META_KEYS = (
    "last_seq",  # highest seq ever assigned (committed)
    "synced_through",  # every seq <= this is handled (acked, dead-lettered or evicted)
    "events_synced_through",
    "evicted_synced",
    "evicted_unsynced",
    "evicted_events",  # synced events removed by the size bound
    "evicted_unsynced_events",
    "expired_rows",  # synced rows removed by retention
    "expired_events",
    "rejected_batches",
    "corrupt_recoveries",
    "created_ms",
)

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS points (key INTEGER PRIMARY KEY, point_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    point INTEGER NOT NULL,
    value REAL,
    quality INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS blocks (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS synced_ranges (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    actor TEXT,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL,
    ts INTEGER NOT NULL
);
"""


class BufferFileError(Exception):
    """The file is not a usable Outpost buffer (corrupt, truncated, or something else)."""


def connect(path: Path, *, readonly: bool = False, cache_mb: int = 16) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT ourselves), usable from any thread
    (each user serialises access with its own lock)."""
    if readonly:
        uri = f"file:{path.as_posix()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute(f"PRAGMA cache_size = -{cache_mb * 1024}")
    if not readonly:
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front (no deadlock-prone lock upgrade);
    ``mode="DEFERRED"`` gives a consistent read snapshot."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def header_problem(path: Path) -> str | None:
    """Why the file cannot be a SQLite database (None if it may be one, or is empty/absent)."""
    try:
        with path.open("rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        return None
    if not head:
        return None
    if len(head) < 100 or not head.startswith(SQLITE_HEADER):
        return "not a SQLite database (bad header)"
    return None


def check_database(conn: sqlite3.Connection, *, quick_check: bool) -> str | None:
    """Why an opened file is not a healthy Outpost buffer, or None.

    Errors that say the file is corrupt are the answer; other errors (locked, I/O, permissions)
    propagate.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id != APPLICATION_ID and tables:
            return f"not an Outpost buffer (application_id={app_id}, tables={sorted(tables)})"
        if quick_check:
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
            if rows != [("ok",)]:
                return "quick_check: " + "; ".join(str(r[0]) for r in rows)
        if tables:
            conn.execute("SELECT count(*) FROM meta").fetchone()
            conn.execute("SELECT max(seq) FROM readings").fetchone()
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        return f"{type(exc).__name__}: {exc}"
    return None


def is_corruption(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT / SQLITE_NOTADB mean the file is bad. Locked, busy, I/O errors, a full
    disk or a permission problem do not: moving a healthy file aside for those would be wrong."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (11, 26)
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


def init_schema(
    conn: sqlite3.Connection, *, seq_base: int = 0, event_base: int = 0, corrupt_recoveries: int = 0
) -> None:
    """Create or upgrade the schema. The keyword arguments seed a fresh file only (a
    replacement for a corrupt one continues its seq and event ids and its recovery count)."""
    fresh = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    if fresh:
        # Must precede the first table; the page size as well.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise BufferFileError(f"cannot switch to WAL journal mode (got {mode!r})")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise BufferFileError(
            f"buffer schema version {version} is newer than this agent understands "
            f"({SCHEMA_VERSION}); refusing to touch it"
        )
    with transaction(conn):
        # Statement by statement: executescript() would COMMIT our transaction first.
        for stmt in _DDL.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        now_ms = int(time.time() * 1000)
        seeds = {k: 0 for k in META_KEYS}
        seeds["created_ms"] = now_ms
        if fresh:
            seeds["last_seq"] = seq_base
            seeds["synced_through"] = seq_base
            seeds["corrupt_recoveries"] = corrupt_recoveries
            if event_base:
                conn.execute(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES ('events', ?)", (event_base,)
                )
                seeds["events_synced_through"] = event_base
        conn.executemany(
            "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", list(seeds.items())
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def read_meta(conn: sqlite3.Connection) -> dict[str, int]:
    meta = {k: 0 for k in META_KEYS}
    meta.update(conn.execute("SELECT key, value FROM meta").fetchall())
    return meta


def bump_meta(conn: sqlite3.Connection, key: str, delta: int) -> None:
    conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (delta, key))


def set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def move_aside(path: Path, reason: str) -> tuple[Path, int]:
    """Rename a bad buffer (and its WAL) to ``<name>.corrupt-<UTC timestamp>``; never delete it.

    Returns the new path and the recovery count the fresh file must carry: the old file's own
    counter if it can still be read, at least the number of files moved aside so far.
    """
    previous = 0
    if header_problem(path) is None:
        with contextlib.suppress(Exception):
            conn = sqlite3.connect(f"file:{path.as_posix()}?mode=ro", uri=True)
            try:
                row = conn.execute(
                    "SELECT value FROM meta WHERE key = 'corrupt_recoveries'"
                ).fetchone()
                previous = int(row[0]) if row else 0
            finally:
                conn.close()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = sibling(path, f".corrupt-{stamp}")
    n = 1
    while target.exists():
        target = sibling(path, f".corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    wal = sibling(path, "-wal")
    if wal.exists():
        os.replace(wal, sibling(target, "-wal"))
    with contextlib.suppress(FileNotFoundError):
        sibling(path, "-shm").unlink()
    moved = sum(
        1
        for p in path.parent.glob(path.name + ".corrupt-*")
        if not p.name.endswith(("-wal", "-shm"))
    )
    count = max(previous + 1, moved)
    log.error(
        "buffer.corrupt",
        path=str(path),
        moved_to=str(target),
        reason=reason,
        corrupt_recoveries=count,
    )
    return target, count


def read_old_ids(path: Path) -> tuple[int, int] | None:
    """Best effort: (last seq, last event id) of a file being moved aside, so both continue
    monotonically in its replacement. None if the file cannot tell."""
    if header_problem(path) is not None or not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path.as_posix()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            top = conn.execute("SELECT max(seq) FROM readings").fetchone()
            ev = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        finally:
            conn.close()
    except Exception:
        return None
    seq = max(int(row[0]) if row else 0, int(top[0] or 0) if top else 0)
    return seq, int(ev[0]) if ev else 0


def unsynced_count(conn: sqlite3.Connection, cursor: int) -> int:
    """Rows above the cursor minus those acknowledged out of order. Two rowid range counts
    (~10 M rows/s from cache), so no counter has to be kept right across crashes."""
    above = conn.execute("SELECT count(*) FROM readings WHERE seq > ?", (cursor,)).fetchone()[0]
    acked = conn.execute(
        "SELECT count(*) FROM synced_ranges s JOIN readings r "
        "ON r.seq BETWEEN s.first_seq AND s.last_seq WHERE s.last_seq > ?",
        (cursor,),
    ).fetchone()[0]
    return int(above - acked)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


#: (readings stored, unsynced readings, ts ms of the first reading above the cursor or None)
ReadingCounts = Callable[[sqlite3.Connection, int], tuple[int, int, int | None]]


def row_counts(conn: sqlite3.Connection, cursor: int) -> tuple[int, int, int | None]:
    """:data:`ReadingCounts` of the row layout."""
    rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    first = conn.execute(
        "SELECT ts FROM readings WHERE seq > ? ORDER BY seq LIMIT 1", (cursor,)
    ).fetchone()
    return int(rows), unsynced_count(conn, cursor), first[0] if first else None


def collect_stats(
    conn: sqlite3.Connection,
    path: Path,
    now: float | None = None,
    counts: ReadingCounts = row_counts,
) -> BufferStats:
    """Statistics from one consistent snapshot of the file."""
    now = time.time() if now is None else now
    with transaction(conn, "DEFERRED"):
        meta = read_meta(conn)
        cursor = meta["synced_through"]
        rows, unsynced, first_ms = counts(conn, cursor)
        ev_cursor = meta["events_synced_through"]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        unsynced_events = conn.execute(
            "SELECT count(*) FROM events WHERE id > ?", (ev_cursor,)
        ).fetchone()[0]
        last_event = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    wal = file_size(sibling(path, "-wal"))
    return BufferStats(
        path=str(path),
        rows=int(rows),
        unsynced_rows=unsynced,
        oldest_unsynced_age_s=(
            max(0.0, now - first_ms / 1000.0) if first_ms is not None and unsynced else None
        ),
        size_bytes=int(page_count * page_size + wal),
        free_bytes=int(free * page_size),
        evicted_synced=meta["evicted_synced"],
        evicted_unsynced=meta["evicted_unsynced"],
        evicted_events=meta["evicted_events"],
        evicted_unsynced_events=meta["evicted_unsynced_events"],
        expired_rows=meta["expired_rows"],
        rejected_batches=meta["rejected_batches"],
        corrupt_recoveries=meta["corrupt_recoveries"],
        events=int(events),
        unsynced_events=int(unsynced_events),
        last_seq=meta["last_seq"],
        synced_through=cursor,
        last_event_id=int(last_event[0]) if last_event else 0,
        events_synced_through=ev_cursor,
    )


def point_names(conn: sqlite3.Connection, share: Iterable[str | None] = ()) -> list[str | None]:
    """Key -> point_id as a list indexed by key (the fastest lookup on the drain path).

    ``share``: point ids the process keeps anyway (the loaded schedule's, or the previous
    list): the result holds those very string objects instead of a second copy of each read
    back from SQLite (≈ 60 bytes a point for the agent's lifetime).
    """
    rows = conn.execute("SELECT key, point_id FROM points").fetchall()
    size = max((k for k, _ in rows), default=0) + 1
    names: list[str | None] = [None] * size
    own = {pid: pid for pid in share if pid is not None}
    if own:
        for k, pid in rows:
            names[k] = own.get(pid, pid)
    else:
        for k, pid in rows:
            names[k] = pid
    return names
