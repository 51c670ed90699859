"""The buffer's SQLite connections and who may use which.

- The writer connection belongs to the writer thread alone (single-writer rule): group commits,
  maintenance, runtime recovery.
- The sync connection serves the uplink (``read_unsynced``, range acks, dead letters), behind
  ``sync_lock``; its calls are blocking and meant for ``asyncio.to_thread``.
- The query connection serves the status page and the CLI (``stats``, ``history``) behind
  ``query_lock``, so a long history scan never delays the uplink.

Runtime recovery replaces all three while holding both locks (see :mod:`.recovery`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from outpost.buffer import schema


class BufferClosedError(RuntimeError):
    pass


class BufferFiles:
    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.writer: sqlite3.Connection | None = None
        self._sync: sqlite3.Connection | None = None
        self._query: sqlite3.Connection | None = None
        self.sync_lock = threading.Lock()
        self.query_lock = threading.Lock()
        self.wal_limit = 8 * 1024 * 1024

    def attach(self, writer: sqlite3.Connection) -> None:
        """Use ``writer`` (already checked and initialised) and open the reader connections."""
        self.tune_writer(writer)
        self.writer = writer
        # Small page caches: SQLite keeps every page it touched up to cache_size, so larger
        # caches only made the RSS climb for minutes (bench/soak.py); append and drain rates
        # were the same with these (bench/buffer.py).
        self._sync = schema.connect(self.path, cache_mb=1)
        self._query = schema.connect(self.path, cache_mb=1)

    def tune_writer(self, conn: sqlite3.Connection) -> None:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        # Keep the WAL small relative to the bound (it counts against it), at most 8 MB
        # (SQLite's default checkpoint point is 4 MB; a bigger WAL slows every read a little).
        wal_limit = max(64 * 1024, min(8 * 1024 * 1024, self.max_bytes // 16))
        self.wal_limit = wal_limit
        conn.execute(f"PRAGMA journal_size_limit = {wal_limit}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(16, wal_limit // page)}")

    def close_all(self) -> None:
        """Close every connection (errors ignored: the file may be the reason we close)."""
        for conn in (self._sync, self._query, self.writer):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._sync = self._query = self.writer = None

    def sync(self) -> sqlite3.Connection:
        if self._sync is None:
            raise BufferClosedError("buffer is not open")
        return self._sync

    def query(self) -> sqlite3.Connection:
        if self._query is None:
            raise BufferClosedError("buffer is not open")
        return self._query

    def used_bytes(self, conn: sqlite3.Connection) -> int:
        """Bytes counted against the bound: live pages (free pages are reused by new rows) plus
        the WAL up to its size limit. A WAL above the limit is transient (one big transaction;
        it is cut back at the next checkpoint) and evicting rows would not shrink it."""
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        wal = schema.file_size(schema.sibling(self.path, "-wal"))
        return int((count - free) * page + min(wal, self.wal_limit))
