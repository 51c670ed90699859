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
loop per reading: typed arrays are used as they are, shuffles are strided bytes slices, and
seconds become milliseconds once per run of equal timestamps, found forward from each run's
start because a commit's polls interleave (:func:`seconds_to_ms`; one by one only where
timestamps do not come in runs). ``bench/buffer_chunks.py`` prints bytes per
reading and encode/decode rates, ``bench/buffer.py`` the writer's append rate.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def _lanes(raw: bytes, width: int) -> list[bytes]:
    """Byte shuffle: byte 0 of every ``width``-byte element, then byte 1, ... (a strided bytes
    slice is a C loop, ~0.5 ns per byte)."""
    return [raw[i::width] for i in range(width)]


def _unshuffle(data: memoryview, width: int, n: int) -> bytes:
    out = bytearray(n * width)
    for i in range(width):
        out[i::width] = data[i * n : (i + 1) * n]
    return bytes(out)


def _key_lanes(keys: Sequence[int]) -> list[bytes]:
    """The keys as shuffled uint32 lanes. From int64 arrays (what the pipeline hands over) these
    are the low four lanes of the int64 bytes once the high four are shown to be zero, with no
    per-key conversion; anything else goes through ``array("I")``, which refuses (OverflowError)
    a key that does not fit."""
    n = len(keys)
    if (
        isinstance(keys, array)
        and keys.itemsize == 8
        and keys.typecode in "qQ"
        and sys.byteorder == "little"
    ):
        lanes = _lanes(keys.tobytes(), 8)
        if all(lane.count(0) == n for lane in lanes[4:]):
            return lanes[:4]
    return _lanes(array("I", keys).tobytes(), 4)


def _typed(col: Sequence[Any], typecode: str) -> array[Any]:
    if isinstance(col, array) and col.typecode == typecode:
        return col
    return array(typecode, col)


#: Below this many equal timestamps in a row, :func:`seconds_to_ms` converts one by one.
_MIN_RUN = 16
#: One-by-one spans start this long and double (to ``_MAX_SPAN``) while no run turns up, so
#: run-free input pays the run search rarely and a short run costs little of the next long one.
_MIN_SPAN = 32
_MAX_SPAN = 1024


def seconds_to_ms(ts: Sequence[float]) -> tuple[array[int], int, int]:
    """``round(t * 1000)`` of every timestamp (epoch seconds -> ms), with the min and the max.

    Readings of one device request share their timestamp (125 registers a request), so a
    commit's timestamps are runs of equal values, but not in order: each poll's batch is
    ordered, the batches of many devices interleave. Runs are therefore found forward from
    where they start, never by searching the whole commit: the lengths of the last two runs
    are tried first (a device's requests repeat: 125, 75, 125, ...), else a galloping search
    for the first different value. A run is then checked exactly with one C-level comparison
    of the raw bytes (element k equal to element k + 1 throughout), converted once and
    repeated; whatever fails the check, or runs shorter than ``_MIN_RUN``, is converted one by
    one. Exact for any input. A NaN or infinite timestamp raises ValueError/OverflowError like
    ``round`` does (the writer drops that batch).
    """
    col = ts if isinstance(ts, array) and ts.typecode == "d" else array("d", ts)
    n = len(col)
    if n == 0:
        raise ValueError("seconds_to_ms: no timestamps")
    raw = col.tobytes()
    out: array[int] = array("q")
    lo = hi = round(col[0] * 1000.0)
    i = 0
    last = before = 0  # the lengths of the last two runs
    span = _MIN_SPAN
    while i < n:
        t = col[i]
        for guess in (last, before):
            j = i + guess
            if guess and j <= n and col[j - 1] == t and (j == n or col[j] != t):
                break
        else:
            # Gallop: col[a - 1] == t, and the run ends in [a, b] if the run is contiguous
            # (the byte check below decides; the probes only place its end).
            k = 1
            while i + 2 * k <= n and col[i + 2 * k - 1] == t:
                k *= 2
            a, b = i + k, min(n, i + 2 * k - 1)
            while a < b:
                mid = (a + b) // 2
                if col[mid] == t:
                    a = mid + 1
                else:
                    b = mid
            j = a
        size = j - i
        if size >= _MIN_RUN and raw[8 * i : 8 * j - 8] == raw[8 * i + 8 : 8 * j]:
            m = round(t * 1000.0)
            out += array("q", (m,)) * size
            if m < lo:
                lo = m
            elif m > hi:
                hi = m
            last, before = size, last
            span = _MIN_SPAN
            i = j
            continue
        part = [round(x * 1000.0) for x in col[i : i + max(size, span)]]
        out.fromlist(part)
        lo, hi = min(lo, min(part)), max(hi, max(part))
        i += len(part)
        span = min(2 * span, _MAX_SPAN)
    return out, lo, hi


def encode_chunk(
    first_seq: int,
    ts_ms: Sequence[int],
    keys: Sequence[int],
    values: Sequence[float],
    quality: Sequence[int],
    *,
    ts_range: tuple[int, int] | None = None,
) -> Chunk:
    """Pack one commit's readings (columns aligned by index, ``values`` NaN for none).

    Typed arrays (``ts_ms`` int64 "q", ``values`` "d", ``quality`` "B", ``keys`` "I" or
    int64) are used as they are, without a per-reading conversion; ``ts_range`` is
    (min, max) of ``ts_ms`` if the caller knows it already."""
    n = len(keys)
    if not (len(ts_ms) == len(values) == len(quality) == n):
        raise ValueError(
            f"encode_chunk: columns differ in length (ts={len(ts_ms)}, keys={n}, "
            f"values={len(values)}, quality={len(quality)})"
        )
    if n == 0:
        raise ValueError("encode_chunk: a chunk holds at least one reading")
    ts_col = _typed(ts_ms, "q")
    parts = _lanes(ts_col.tobytes(), 8)
    parts += _key_lanes(keys)
    parts += _lanes(_typed(values, "d").tobytes(), 8)
    parts.append(_typed(quality, "B").tobytes())
    raw = b"".join(parts)
    blob = _HEADER.pack(CODEC_V1, n) + zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)
    lo, hi = ts_range if ts_range is not None else (min(ts_col), max(ts_col))
    return Chunk(first_seq, n, lo, hi, blob)


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
