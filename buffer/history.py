"""Local history: one point's readings over a time window (status page trend, CLI).

Runs on the query connection, so a long scan never delays the uplink. There is no per-point
index (it would halve the append rate); the time window is pruned through ``blocks``, one row
per group commit with its seq range and min/max timestamp, and only those seq ranges are
scanned, newest first, until ``limit`` readings are found.
"""

from __future__ import annotations

from typing import Any

from outpost.buffer.files import BufferFiles
from outpost.buffer.models import ReadingRows
from outpost.buffer.points import PointNames
from outpost.buffer.schema import transaction
from outpost.buffer.sync import SELECT_COLS


class History:
    def __init__(self, files: BufferFiles, names: PointNames) -> None:
        self._files = files
        self._names = names

    def read_after(self, after_seq: int, limit: int, until_seq: int | None = None) -> ReadingRows:
        """Up to ``limit`` readings with ``after_seq < seq <= until_seq``, oldest first,
        whatever the uplink's cursor (a second consumer with its own cursor: Sparkplug)."""
        hi = 2**62 if until_seq is None else until_seq
        conn = self._files.query()
        with self._files.query_lock:
            rows = conn.execute(
                SELECT_COLS + " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after_seq, hi, limit),
            ).fetchall()
        return self._names.rows(rows)

    def history(
        self, point_id: str, since_ts: float, until_ts: float | None = None, limit: int = 10_000
    ) -> ReadingRows:
        """Readings of one point with ``since_ts <= ts <= until_ts`` (epoch seconds), in seq
        order; if more than ``limit`` match, the newest ``limit``."""
        conn = self._files.query()
        lo_ms = round(since_ts * 1000.0)
        hi_ms = round(until_ts * 1000.0) if until_ts is not None else 2**62
        with self._files.query_lock, transaction(conn, "DEFERRED"):
            row = conn.execute("SELECT key FROM points WHERE point_id = ?", (point_id,)).fetchone()
            if row is None:
                return ReadingRows()
            key = row[0]
            spans = _spans(
                conn.execute(
                    "SELECT first_seq, last_seq FROM blocks WHERE max_ts >= ? AND min_ts <= ? "
                    "ORDER BY first_seq DESC",
                    (lo_ms, hi_ms),
                ).fetchall()
            )
            rows: list[tuple[Any, ...]] = []
            for first, last in spans:
                want = limit - len(rows)
                if want <= 0:
                    break
                part = conn.execute(
                    SELECT_COLS + " WHERE seq BETWEEN ? AND ? AND point = ? AND ts BETWEEN ? AND ?"
                    " ORDER BY seq DESC LIMIT ?",
                    (first, last, key, lo_ms, hi_ms, want),
                ).fetchall()
                rows += part
        rows.reverse()
        return self._names.rows(rows)


def _spans(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge adjacent seq ranges (given newest first) into as few scans as possible."""
    out: list[tuple[int, int]] = []
    for first, last in blocks:
        if out and last + 1 >= out[-1][0]:
            out[-1] = (min(first, out[-1][0]), out[-1][1])
        else:
            out.append((first, last))
    return out
