"""The ``chunks`` table: readings stored as columnar chunks (issue 14, the default layout).

What :mod:`.writer`, :mod:`.sync` and :mod:`.maintenance` will call once the columnar buffer
replaces the row table (see :mod:`.chunks` for the plan and the codec). Each function runs
inside the caller's transaction on the caller's connection, like the row-format SQL today.

Guarantees this layer keeps, so the seams above keep theirs:

- Reading i of a chunk has seq ``first_seq + i``; chunks never overlap and are written in
  seq order, so ``first_seq`` (the INTEGER PRIMARY KEY) orders them and a seq window maps to
  a range scan plus one slice at each end.
- A read returns exactly the readings with ``lo < seq <= hi`` (oldest first, or the newest
  first for live-first), at most ``limit`` of them, decoding only the chunks that overlap.
- Eviction removes whole chunks only, and reports how many readings went, so the size bound
  and retention keep counting per reading.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from outpost.buffer.chunks import Chunk, Columns, decode_chunk, encode_chunk, slice_rows

DDL = """
CREATE TABLE IF NOT EXISTS chunks (
    first_seq INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL,
    blob BLOB NOT NULL
) STRICT
"""


def create(conn: sqlite3.Connection) -> None:
    conn.execute(DDL)


def insert(
    conn: sqlite3.Connection,
    first_seq: int,
    ts_ms: Sequence[int],
    keys: Sequence[int],
    values: Sequence[float],
    quality: Sequence[int],
    *,
    ts_range: tuple[int, int] | None = None,
) -> int:
    """Store one commit's readings as a chunk; returns the last seq. ``ts_range``: (min, max)
    of ``ts_ms`` if the caller has it (see :func:`~.chunks.encode_chunk`)."""
    chunk = encode_chunk(first_seq, ts_ms, keys, values, quality, ts_range=ts_range)
    conn.execute(
        "INSERT INTO chunks(first_seq, n, min_ts, max_ts, blob) VALUES (?, ?, ?, ?, ?)",
        (chunk.first_seq, chunk.n, chunk.min_ts_ms, chunk.max_ts_ms, chunk.blob),
    )
    return chunk.last_seq


def read_range(
    conn: sqlite3.Connection,
    lo: int,
    hi: int | None,
    limit: int,
    *,
    newest: bool = False,
    cache: dict[int, Columns] | None = None,
) -> list[Columns]:
    """Readings with ``lo < seq <= hi`` (``hi`` None: no upper end), at most ``limit``, as
    column slices in seq order; ``newest`` takes them from the top end of the window.

    ``cache`` keeps the last decoded chunks by ``first_seq`` (a chunk never changes once
    written; the uplink reads a 50,000-reading chunk in windows of 5,000)."""
    top = 2**62 if hi is None else hi
    order = "DESC" if newest else ""
    # The chunk holding lo+1 starts at or below it: the first one found from there upward.
    start = conn.execute(
        "SELECT max(first_seq) FROM chunks WHERE first_seq <= ?", (lo + 1,)
    ).fetchone()[0]
    floor = lo + 1 if start is None else start
    out: list[Columns] = []
    left = limit
    for first, n, blob in conn.execute(
        f"SELECT first_seq, n, blob FROM chunks WHERE first_seq >= ? AND first_seq <= ? "
        f"ORDER BY first_seq {order}",
        (floor, top),
    ):
        if left <= 0:
            break
        if first + n - 1 <= lo:
            continue
        cols = cache.get(first) if cache is not None else None
        if cols is None:
            cols = decode_chunk(Chunk(first, n, 0, 0, blob))
            if cache is not None:
                if len(cache) >= 4:
                    cache.pop(next(iter(cache)))
                cache[first] = cols
        part = slice_rows(cols, lo + 1, top)
        if len(part) > left:
            a = len(part) - left if newest else 0
            part = slice_rows(part, part.first_seq + a, part.first_seq + a + left - 1)
        out.append(part)
        left -= len(part)
    if newest:
        out.reverse()
    return out


def delete_through(conn: sqlite3.Connection, hi: int) -> int:
    """Delete every chunk that lies wholly at or below ``hi``; returns the readings removed."""
    n = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM chunks WHERE first_seq + n - 1 <= ?", (hi,)
    ).fetchone()[0]
    conn.execute("DELETE FROM chunks WHERE first_seq + n - 1 <= ?", (hi,))
    return int(n)


def count_above(conn: sqlite3.Connection, seq: int) -> int:
    """Readings with seq above ``seq`` (whole chunks summed, the straddling one cut)."""
    whole = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM chunks WHERE first_seq > ?", (seq,)
    ).fetchone()[0]
    part = conn.execute(
        "SELECT first_seq, n FROM chunks WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1",
        (seq,),
    ).fetchone()
    straddle = max(0, part[0] + part[1] - 1 - seq) if part else 0
    return int(whole) + straddle


def count_between(conn: sqlite3.Connection, lo: int, hi: int) -> int:
    """Readings stored with ``lo < seq <= hi``."""
    return count_above(conn, lo) - count_above(conn, hi)


def first_above(conn: sqlite3.Connection, seq: int) -> tuple[int, int] | None:
    """(seq, ts ms) of the first stored reading above ``seq``, or None."""
    parts = read_range(conn, seq, None, 1)
    if not parts:
        return None
    return parts[0].first_seq, parts[0].ts_ms[0]


def reading_counts(conn: sqlite3.Connection, cur: int) -> tuple[int, int, int | None]:
    """:data:`~outpost.buffer.schema.ReadingCounts` of the columnar layout."""
    rows = count_above(conn, -1)
    unsynced = count_above(conn, cur)
    for f, la in conn.execute(
        "SELECT first_seq, last_seq FROM synced_ranges WHERE last_seq > ?", (cur,)
    ):
        unsynced -= count_between(conn, max(f, cur + 1) - 1, la)
    first = first_above(conn, cur)
    return rows, unsynced, first[1] if first else None


def present(conn: sqlite3.Connection) -> bool:
    """Is this a columnar-layout file (the row layout never creates the table)?"""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='chunks'")
    return row.fetchone() is not None
