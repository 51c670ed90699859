"""Read a buffer file directly: statistics and exports for the CLI.

Read-only connections inside one read transaction: in WAL mode that is a consistent snapshot
and never blocks the running agent's writer (a very long export only delays WAL checkpoints).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from outpost.buffer import columnar, schema
from outpost.buffer.models import BufferStats
from outpost.point_schedules.quality import QUALITY_LABEL

Format = Literal["csv", "jsonl"]

READING_COLUMNS = ("seq", "ts", "point_id", "value", "quality")
EVENT_COLUMNS = ("id", "ts", "kind", "source", "actor", "detail")
_FETCH = 10_000


@contextlib.contextmanager
def open_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an existing Outpost buffer, or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no buffer file at {path}")
    problem = schema.header_problem(path)
    if problem is None and path.stat().st_size == 0:
        problem = "empty file"
    if problem is not None:
        raise schema.BufferFileError(f"{path}: {problem}")
    try:
        conn = schema.connect(path, readonly=True, cache_mb=32)
    except sqlite3.Error as exc:
        # e.g. no permission to open the -shm/-wal next to it (run as the agent's user).
        raise schema.BufferFileError(f"{path}: cannot open: {exc}") from None
    try:
        try:
            problem = schema.check_database(conn, quick_check=False)
            if problem is None and conn.execute("PRAGMA application_id").fetchone()[0] != (
                schema.APPLICATION_ID
            ):
                problem = "not an Outpost buffer"
        except sqlite3.Error as exc:
            problem = f"cannot read: {exc}"
        if problem is not None:
            raise schema.BufferFileError(f"{path}: {problem}")
        yield conn
    finally:
        conn.close()


def file_stats(path: Path) -> BufferStats:
    with open_readonly(path) as conn:
        if columnar.present(conn):
            return schema.collect_stats(conn, Path(path), counts=columnar.reading_counts)
        return schema.collect_stats(conn, Path(path))


def iso_ms(ms: int) -> str:
    """Epoch milliseconds -> ``2026-11-24T13:59:44.123Z``."""
    sec, frac = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:03d}Z"


class _IsoCache:
    """Formats timestamps, reusing the date-time part within one second (exports are long runs
    of nearby timestamps; ``strftime`` per row would dominate)."""

    __slots__ = ("prefix", "sec")

    def __init__(self) -> None:
        self.sec = -(2**62)
        self.prefix = ""

    def __call__(self, ms: int) -> str:
        sec, frac = divmod(ms, 1000)
        if sec != self.sec:
            self.sec = sec
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        return f"{self.prefix}{frac:03d}Z"


def _to_ms(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def _seq_bounds(conn: sqlite3.Connection, lo_ms: int | None, hi_ms: int | None) -> tuple[int, int]:
    """Seq range that can hold readings in [lo_ms, hi_ms), from the commit blocks."""
    lo_seq, hi_seq = 0, 2**62
    if lo_ms is not None:
        row = conn.execute(
            "SELECT min(first_seq) FROM blocks WHERE max_ts >= ?", (lo_ms,)
        ).fetchone()
        lo_seq = row[0] if row[0] is not None else 2**62
    if hi_ms is not None:
        row = conn.execute("SELECT max(last_seq) FROM blocks WHERE min_ts < ?", (hi_ms,)).fetchone()
        hi_seq = row[0] if row[0] is not None else -1
    # Rows written before any block existed (none in schema v1) would be missed; blocks cover
    # every committed batch.
    return lo_seq, hi_seq


def _csv_cell(text: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([text])
    return buf.getvalue()


def export_readings(
    path: Path,
    out: TextIO,
    fmt: Format,
    since: datetime | None,
    until: datetime | None,
    point: str | None,
) -> int:
    """Write readings with ``since <= ts < until`` (UTC; naive = UTC) in seq order.

    CSV columns / JSON keys exactly ``seq,ts,point_id,value,quality``; ts ISO 8601 UTC with
    milliseconds and ``Z``; quality as its label (``good``, ``bad:comm_failure``); a reading
    without a value has an empty cell / ``null``. Returns the number of rows written.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown format {fmt!r} (expected csv or jsonl)")
    lo_ms, hi_ms = _to_ms(since), _to_ms(until)
    with open_readonly(path) as conn, schema.transaction(conn, "DEFERRED"):
        names = schema.point_names(conn)
        where = ["seq BETWEEN ? AND ?"]
        lo_seq, hi_seq = _seq_bounds(conn, lo_ms, hi_ms)
        args: list[Any] = [lo_seq, hi_seq]
        if lo_ms is not None:
            where.append("ts >= ?")
            args.append(lo_ms)
        if hi_ms is not None:
            where.append("ts < ?")
            args.append(hi_ms)
        key: int | None = None
        if point is not None:
            row = conn.execute("SELECT key FROM points WHERE point_id = ?", (point,)).fetchone()
            if row is None:
                _header(out, fmt, READING_COLUMNS)
                return 0
            key = int(row[0])
            where.append("point = ?")
            args.append(key)
        if columnar.present(conn):
            return _write_readings(
                _chunk_rows(conn, lo_seq, hi_seq, lo_ms, hi_ms, key), out, fmt, names
            )
        cur = conn.execute(
            "SELECT seq, ts, point, value, quality FROM readings WHERE "
            + " AND ".join(where)
            + " ORDER BY seq",
            args,
        )
        return _write_readings(iter(lambda: cur.fetchmany(_FETCH), []), out, fmt, names)


def _chunk_rows(
    conn: sqlite3.Connection,
    lo_seq: int,
    hi_seq: int,
    lo_ms: int | None,
    hi_ms: int | None,
    key: int | None,
) -> Iterator[list[tuple[Any, ...]]]:
    """The columnar layout's readings as the row query would give them, chunk by chunk."""
    lo_t = -(2**62) if lo_ms is None else lo_ms
    hi_t = 2**62 if hi_ms is None else hi_ms
    pos = lo_seq - 1
    while pos < hi_seq:
        parts = columnar.read_range(conn, pos, hi_seq, _FETCH)
        if not parts:
            return
        for p in parts:
            first = p.first_seq
            yield [
                (first + i, t, k, None if math.isnan(v) else v, q)
                for i, (t, k, v, q) in enumerate(
                    zip(p.ts_ms, p.keys, p.values, p.quality, strict=True)
                )
                if lo_t <= t < hi_t and (key is None or k == key)
            ]
            pos = first + len(p) - 1


def _header(out: TextIO, fmt: Format, columns: tuple[str, ...]) -> None:
    if fmt == "csv":
        out.write(",".join(columns) + "\n")


def _write_readings(
    batches: Iterator[list[tuple[Any, ...]]], out: TextIO, fmt: Format, names: list[str | None]
) -> int:
    iso = _IsoCache()
    labels = QUALITY_LABEL
    size = len(names)

    def name(k: int) -> str:
        n = names[k] if 0 <= k < size else None
        return n if n is not None else f"#{k}"

    _header(out, fmt, READING_COLUMNS)
    count = 0
    if fmt == "csv":
        # Lines built directly (the csv module costs ~2x): only the point id can need quoting,
        # and it is quoted once per point.
        cells: dict[int, str] = {}
        for rows in batches:
            lines = []
            for seq, ts, k, v, q in rows:
                pid = cells.get(k)
                if pid is None:
                    pid = cells[k] = _csv_cell(name(k))
                val = "" if v is None or not math.isfinite(v) else repr(v)
                lines.append(f"{seq},{iso(ts)},{pid},{val},{labels.get(q) or q}\n")
            out.write("".join(lines))
            count += len(rows)
    else:
        dumps = json.dumps
        quoted: dict[int, str] = {}
        qlabels = {q: dumps(lbl) for q, lbl in labels.items()}
        for rows in batches:
            lines = []
            for seq, ts, k, v, q in rows:
                pid = quoted.get(k)
                if pid is None:
                    pid = quoted[k] = dumps(name(k))
                val = "null" if v is None or not math.isfinite(v) else repr(v)
                ql = qlabels.get(q) or dumps(str(q))
                lines.append(
                    f'{{"seq":{seq},"ts":"{iso(ts)}","point_id":{pid},"value":{val},'
                    f'"quality":{ql}}}\n'
                )
            out.write("".join(lines))
            count += len(rows)
    return count


def export_events(
    path: Path, out: TextIO, fmt: Format, since: datetime | None, until: datetime | None
) -> int:
    """Write events with ``since <= ts < until``: ``id,ts,kind,source,actor,detail`` (detail is
    the JSON object; in CSV as JSON text)."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown format {fmt!r} (expected csv or jsonl)")
    lo_ms, hi_ms = _to_ms(since), _to_ms(until)
    where, args = ["1"], []
    if lo_ms is not None:
        where.append("ts >= ?")
        args.append(lo_ms)
    if hi_ms is not None:
        where.append("ts < ?")
        args.append(hi_ms)
    count = 0
    with open_readonly(path) as conn, schema.transaction(conn, "DEFERRED"):
        cur = conn.execute(
            "SELECT id, ts, kind, source, actor, detail FROM events WHERE "
            + " AND ".join(where)
            + " ORDER BY id",
            args,
        )
        _header(out, fmt, EVENT_COLUMNS)
        w = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        while rows := cur.fetchmany(_FETCH):
            for eid, ts, kind, source, actor, detail in rows:
                if w is not None:
                    w.writerow((eid, iso_ms(ts), kind, source, actor or "", detail))
                else:
                    out.write(
                        json.dumps(
                            {
                                "id": eid,
                                "ts": iso_ms(ts),
                                "kind": kind,
                                "source": source,
                                "actor": actor,
                                "detail": json.loads(detail),
                            },
                            separators=(",", ":"),
                        )
                        + "\n"
                    )
            count += len(rows)
    return count
