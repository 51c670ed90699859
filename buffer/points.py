"""Point keys: each reading stores a small integer key instead of its point id.

Registration is idempotent (``INSERT OR IGNORE``) and keys are never reused, so a key queued
in memory stays valid through commits, eviction and runtime recovery (which copies the keys
into the fresh file). Readers turn keys back into ids through an in-memory list indexed by
key, the fastest lookup on the drain path; an unknown key reloads it once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from outpost.buffer import schema
from outpost.buffer.files import BufferFiles
from outpost.buffer.models import ReadingRows
from outpost.buffer.schema import transaction


class PointNames:
    def __init__(self, files: BufferFiles) -> None:
        self._files = files
        self._names: list[str | None] = []
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            self._names = schema.point_names(self._files.sync())

    def snapshot(self) -> list[str | None]:
        return list(self._names)

    def register(self, point_ids: Sequence[str]) -> list[int]:
        """Idempotent registration: point_id -> small integer key stored in each reading."""
        conn = self._files.sync()
        with self._files.sync_lock, transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO points(point_id) VALUES (?)", [(p,) for p in point_ids]
            )
            # the caller keeps these id strings for its lifetime: hold the same objects
            names = schema.point_names(conn, share=point_ids)
        known = {pid: key for key, pid in enumerate(names) if pid is not None}
        with self._lock:
            self._names = names
        return [known[p] for p in point_ids]

    def names_for(self, keys: Sequence[int]) -> list[str]:
        names = self._names
        try:
            out = [names[k] for k in keys]
            if None not in out:
                return out  # type: ignore[return-value]  # no None in it: checked above
        except IndexError:
            pass
        with self._lock:
            conn = self._files.query()
            with self._files.query_lock:
                self._names = names = schema.point_names(conn, share=names)
        size = len(names)
        return [n if k < size and (n := names[k]) is not None else f"#{k}" for k in keys]

    def rows(self, rows: list[tuple[Any, ...]]) -> ReadingRows:
        """``(seq, ts seconds, key, value, quality)`` tuples as :class:`ReadingRows`."""
        if not rows:
            return ReadingRows()
        # One list comprehension per column: cheaper than zip(*rows) + list() (measured).
        seq = [r[0] for r in rows]
        ts = [r[1] for r in rows]
        keys = [r[2] for r in rows]
        values = [r[3] for r in rows]
        quality = [r[4] for r in rows]
        return ReadingRows(
            seq=seq, ts=ts, point_id=self.names_for(keys), value=values, quality=quality
        )
