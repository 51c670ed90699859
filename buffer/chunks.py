"""Columnar chunks: the storage unit of the columnar buffer (issue 14), the default layout.

A chunk holds the readings of one group commit as packed, compressed columns instead of one
SQLite row per reading. This module is the codec; :mod:`.columnar` the ``chunks`` table and
:mod:`.columnar_store` the :class:`ColumnarBuffer` that follows this plan, behind the seams
the buffer already has:

- **writer** (:mod:`.writer`): ``_insert_readings`` stores one ``chunks`` row per commit
  (``first_seq`` INTEGER PRIMARY KEY, ``n``, ``min_ts``, ``max_ts``, ``codec``, ``blob``)
  instead of ``n`` rows plus a ``blocks`` row; seq numbers keep their meaning (contiguous,
  strictly increasing per reading: reading i of a chunk is ``first_seq + i``), ``meta.last_seq``
  is persisted in the same transaction as today, so kill -9 safety is unchanged.
- **sync** (:mod:`.sync`): ``read_unsynced``/``read_latest`` select the chunks overlapping the
  wanted seq window (a range scan on ``first_seq``), decode them and cut the window out
  (:func:`slice_rows`); range acks, islands and the cursor are seq ranges already and do not
  change. The uplink's wire body could later carry the decoded columns without per-reading
  re-encoding.
- **maintenance** (:mod:`.maintenance`): eviction and retention delete whole chunks, synced
  first; an unsynced chunk partly below the cursor is kept whole until all of it is handled
  (the counts stay per reading: ``n`` is in the row).
- **history** (:mod:`.history`): ``blocks`` already indexes one row per commit by time; the
  chunk row carries the same min/max, so the scan decodes only the chunks in the window.
- **migration**: a row-format file is converted in place at open, before the writer and
  the readers start, 50,000 readings per transaction (kill-safe, resumed at the next open);
  each contiguous seq run becomes a chunk, so eviction gaps stay gaps.

Codec v1 (``CODEC_V1``): four columns, each a plain array (timestamps int64 epoch ms, point
keys uint32, values float64 with NaN for "no value", quality uint8), the multi-byte ones
byte-shuffled (byte 0 of every element, then byte 1, ...: the high bytes of timestamps,
keys and similar floats become long runs), concatenated and compressed with zstd. No Python
loop per reading except the seconds→milliseconds conversion the row format does as well;
``bench/buffer_chunks.py`` prints bytes per reading and encode/decode rates.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import zstandard

CODEC_V1 = 1
_HEADER = struct.Struct("<BI")  # codec version, reading count
_ZSTD_LEVEL = 3


class ChunkError(ValueError):
    """A chunk blob that this codec cannot read (unknown version, truncated, inconsistent)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One commit's readings: ``first_seq``..``first_seq + n - 1``, time range in epoch ms."""

    first_seq: int
    n: int
    min_ts_ms: int
    max_ts_ms: int
    blob: bytes

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.n - 1


@dataclass(slots=True)
class Columns:
    """Decoded columns, aligned by index (reading i has seq ``first_seq + i``)."""

    first_seq: int
    ts_ms: array[int]
    keys: array[int]
    values: array[float]
    quality: array[int]

    def __len__(self) -> int:
        return len(self.keys)


def _shuffle(raw: bytes, width: int) -> bytes:
    view = memoryview(raw)
    return b"".join(bytes(view[i::width]) for i in range(width))


def _unshuffle(data: memoryview, width: int, n: int) -> bytes:
    out = bytearray(n * width)
    for i in range(width):
        out[i::width] = data[i * n : (i + 1) * n]
    return bytes(out)


def encode_chunk(
    first_seq: int,
    ts_ms: Sequence[int],
    keys: Sequence[int],
    values: Sequence[float],
    quality: Sequence[int],
) -> Chunk:
    """Pack one commit's readings (columns aligned by index, ``values`` NaN for none)."""
    n = len(keys)
    if not (len(ts_ms) == len(values) == len(quality) == n):
        raise ValueError(
            f"encode_chunk: columns differ in length (ts={len(ts_ms)}, keys={n}, "
            f"values={len(values)}, quality={len(quality)})"
        )
    if n == 0:
        raise ValueError("encode_chunk: a chunk holds at least one reading")
    ts_col = array("q", ts_ms)
    key_col = array("I", keys)
    val_col = array("d", values)
    q_col = array("B", quality)
    raw = b"".join(
        (
            _shuffle(ts_col.tobytes(), 8),
            _shuffle(key_col.tobytes(), 4),
            _shuffle(val_col.tobytes(), 8),
            q_col.tobytes(),
        )
    )
    blob = _HEADER.pack(CODEC_V1, n) + zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)
    return Chunk(first_seq, n, min(ts_col), max(ts_col), blob)


def decode_chunk(chunk: Chunk) -> Columns:
    blob = chunk.blob
    if len(blob) < _HEADER.size:
        raise ChunkError(f"chunk at seq {chunk.first_seq}: {len(blob)} bytes, no header")
    version, n = _HEADER.unpack_from(blob)
    if version != CODEC_V1:
        raise ChunkError(f"chunk at seq {chunk.first_seq}: unknown codec version {version}")
    if n != chunk.n:
        raise ChunkError(f"chunk at seq {chunk.first_seq}: holds {n} readings, row says {chunk.n}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob[_HEADER.size :])
    except zstandard.ZstdError as exc:
        raise ChunkError(f"chunk at seq {chunk.first_seq}: {exc}") from None
    if len(raw) != n * 21:
        raise ChunkError(f"chunk at seq {chunk.first_seq}: {len(raw)} bytes for {n} readings")
    view = memoryview(raw)
    ts_col = array("q")
    ts_col.frombytes(_unshuffle(view[: 8 * n], 8, n))
    key_col = array("I")
    key_col.frombytes(_unshuffle(view[8 * n : 12 * n], 4, n))
    val_col = array("d")
    val_col.frombytes(_unshuffle(view[12 * n : 20 * n], 8, n))
    q_col = array("B")
    q_col.frombytes(view[20 * n :])
    return Columns(chunk.first_seq, ts_col, key_col, val_col, q_col)


def slice_rows(cols: Columns, lo_seq: int, hi_seq: int) -> Columns:
    """The readings with ``lo_seq <= seq <= hi_seq`` (array slices: no per-reading work)."""
    a = max(0, lo_seq - cols.first_seq)
    b = max(a, min(len(cols), hi_seq - cols.first_seq + 1))
    return Columns(
        cols.first_seq + a,
        cols.ts_ms[a:b],
        cols.keys[a:b],
        cols.values[a:b],
        cols.quality[a:b],
    )
