"""The columnar chunk codec (issue 14's storage unit): lossless round trip, seq slicing,
refusal of blobs it cannot read."""

from __future__ import annotations

import math
import random
import sqlite3
import struct

import pytest

from outpost.buffer import columnar
from outpost.buffer.chunks import ChunkError, Columns, decode_chunk, encode_chunk, slice_rows


def _sample(n: int, seed: int = 3) -> tuple[list[int], list[int], list[float], list[int]]:
    rng = random.Random(seed)
    t = 1_795_000_000_000
    ts, keys, values, quality = [], [], [], []
    for i in range(n):
        t += rng.choice((0, 0, 0, 4, 5000, -3))  # same poll, next poll, out of order
        ts.append(t)
        keys.append(rng.choice((0, 1, 7, 65_535, 65_536, 2**32 - 1)))
        r = rng.random()
        if r < 0.05:
            values.append(math.nan)
            quality.append(129)
        elif r < 0.1:
            values.append(struct.unpack("<d", rng.randbytes(8))[0])  # any bit pattern
            quality.append(64)
        else:
            values.append(rng.randint(-40_000, 40_000) * 0.1)
            quality.append(0)
        if i == 3:
            values[-1] = -0.0
    return ts, keys, values, quality


def _same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def test_round_trip_is_bit_exact() -> None:
    ts, keys, values, quality = _sample(5000)
    chunk = encode_chunk(1001, ts, keys, values, quality)
    assert (chunk.first_seq, chunk.last_seq, chunk.n) == (1001, 6000, 5000)
    assert (chunk.min_ts_ms, chunk.max_ts_ms) == (min(ts), max(ts))
    cols = decode_chunk(chunk)
    assert len(cols) == 5000 and cols.first_seq == 1001
    assert list(cols.ts_ms) == ts and list(cols.keys) == keys and list(cols.quality) == quality
    assert all(_same_float(a, b) for a, b in zip(cols.values, values, strict=True))
    assert len(chunk.blob) < 5000 * 21  # compressed below the raw columns


def test_slice_by_seq() -> None:
    ts, keys, values, quality = _sample(100)
    cols = decode_chunk(encode_chunk(50, ts, keys, values, quality))
    part = slice_rows(cols, 60, 69)
    assert part.first_seq == 60 and list(part.keys) == keys[10:20]
    assert list(part.ts_ms) == ts[10:20]
    assert len(slice_rows(cols, 0, 49)) == 0 and len(slice_rows(cols, 150, 200)) == 0
    whole = slice_rows(cols, 0, 10**9)
    assert whole.first_seq == 50 and len(whole) == 100


def test_refuses_what_it_cannot_read() -> None:
    ts, keys, values, quality = _sample(10)
    chunk = encode_chunk(1, ts, keys, values, quality)
    with pytest.raises(ChunkError, match="unknown codec version 9"):
        decode_chunk(type(chunk)(1, 10, 0, 0, b"\x09" + chunk.blob[1:]))
    with pytest.raises(ChunkError, match="holds 10 readings, row says 11"):
        decode_chunk(type(chunk)(1, 11, 0, 0, chunk.blob))
    with pytest.raises(ChunkError, match="seq 1"):
        decode_chunk(type(chunk)(1, 10, 0, 0, chunk.blob[:-5]))
    with pytest.raises(ValueError, match="differ in length"):
        encode_chunk(1, ts, keys[:-1], values, quality)
    with pytest.raises(ValueError, match="at least one"):
        encode_chunk(1, [], [], [], [])


# ---------------------------------------------------------------- the chunks table


def _table(sizes: list[int]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    columnar.create(conn)
    seq = 0
    for n in sizes:
        ts, keys, values, quality = _sample(n, seed=seq)
        keys = list(range(seq + 1, seq + n + 1))  # key == seq: easy to check
        assert columnar.insert(conn, seq + 1, ts, keys, values, quality) == seq + n
        seq += n
    return conn


def _seqs(parts: list[Columns]) -> list[int]:
    return [k for p in parts for k in p.keys]


def test_chunks_table_reads_exact_seq_windows() -> None:
    conn = _table([10, 5, 20])  # seqs 1..10, 11..15, 16..35
    assert _seqs(columnar.read_range(conn, 0, None, 100)) == list(range(1, 36))
    assert _seqs(columnar.read_range(conn, 7, None, 6)) == list(range(8, 14))
    assert _seqs(columnar.read_range(conn, 7, 12, 100)) == list(range(8, 13))
    assert _seqs(columnar.read_range(conn, 35, None, 100)) == []
    # live-first: the newest, in seq order, never at or below lo
    assert _seqs(columnar.read_range(conn, 0, None, 7, newest=True)) == list(range(29, 36))
    assert _seqs(columnar.read_range(conn, 12, 15, 10, newest=True)) == [13, 14, 15]
    assert _seqs(columnar.read_range(conn, 30, None, 10, newest=True)) == list(range(31, 36))
    assert columnar.count_above(conn, 0) == 35
    assert columnar.count_above(conn, 12) == 23
    assert columnar.count_above(conn, 35) == 0


def test_chunks_table_evicts_whole_chunks_and_counts_readings() -> None:
    conn = _table([10, 5, 20])
    assert columnar.delete_through(conn, 12) == 10  # 11..15 straddles: kept whole
    assert _seqs(columnar.read_range(conn, 0, None, 100)) == list(range(11, 36))
    assert columnar.delete_through(conn, 15) == 5
    assert columnar.count_above(conn, 0) == 20
