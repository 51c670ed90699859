"""Ingest bodies as numpy columns: the binary columnar decoder and the readings COPY body.

Both ingest content types end here as a :class:`ColumnBatch`: the binary body
(``application/vnd.outpost.columnar.v1``, format in ``outpost.cloud.wire`` and
``docs/wire-format.md``) is decoded by :func:`decode_columnar` with array operations only
(byte un-shuffle by a transpose, timestamps by a cumulative sum, every rule by a vector
comparison), a JSON body's validated :class:`~outpost.cloud.wire.IngestBatch` by
:meth:`ColumnBatch.from_batch`. :func:`copy_binary` turns the columns into PostgreSQL's binary
COPY format through one structured array (no Python code per reading).

Validation is as strict as the JSON path: the same id, seq, timestamp, index and text rules,
every length checked against the header before a column is read, the JSON section (events,
point metadata, schedule version) through the same pydantic models. A malformed body raises
:class:`ColumnarError` whose message names the field (the receiver answers 422).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from outpost.cloud.wire import (
    COLUMNAR_HEADER,
    COLUMNAR_MAGIC,
    COLUMNAR_VERSION,
    FLAG_TS_I64,
    FLAGS_KNOWN,
    ID_PATTERN,
    INT64_MAX,
    POINT_ID_MAX,
    TS_MAX_MS,
    TS_MIN_MS,
    IngestBatch,
    IngestExtras,
    PointMeta,
    WireEvent,
)

_ID_RE = re.compile(ID_PATTERN)
_PG_EPOCH_MS = 946_684_800_000


class ColumnarError(ValueError):
    """A binary body that is malformed or breaks a rule; the message names the field."""


@dataclass(slots=True)
class Columns:
    """Readings aligned by index: ``point[i]`` indexes ``point_ids``, ``value`` NaN = none."""

    point_ids: list[str]
    point: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.point)


@dataclass(slots=True)
class ColumnBatch:
    """A validated ingest body of either content type, readings as columns."""

    gateway_id: str
    first_seq: int
    last_seq: int
    readings: Columns
    events: list[WireEvent]
    points: list[PointMeta]
    schedule_version: str | None = None

    @classmethod
    def from_batch(cls, batch: IngestBatch) -> ColumnBatch:
        r = batch.readings
        return cls(
            batch.gateway_id,
            batch.first_seq,
            batch.last_seq,
            Columns(
                list(r.point_ids),
                np.asarray(r.point, dtype=np.int64),
                np.asarray(r.timestamps_ms(), dtype=np.int64),
                np.asarray([np.nan if v is None else v for v in r.value], dtype=np.float64),
                np.asarray(r.quality, dtype=np.uint8),
            ),
            batch.events,
            batch.points,
            batch.schedule_version,
        )


def _unshuffle(data: memoryview, dtype: str, n: int) -> npt.NDArray[Any]:
    """Column of ``n`` little-endian ``dtype`` items stored byte-shuffled (byte 0 of every
    item, then byte 1, ...)."""
    width = np.dtype(dtype).itemsize
    raw = np.frombuffer(data, dtype=np.uint8, count=n * width)
    return np.ascontiguousarray(raw.reshape(width, n).T).view(dtype).reshape(n)


def decode_columnar(data: bytes) -> ColumnBatch:
    """Parse and validate a binary columnar body (already decompressed within the limits).

    Raises :class:`ColumnarError`, or ``pydantic.ValidationError`` for the JSON section.
    """
    hsize = COLUMNAR_HEADER.size
    if len(data) < hsize:
        raise ColumnarError(f"body: {len(data)} bytes, shorter than the {hsize}-byte header")
    (magic, version, flags, _reserved, first_seq, last_seq, n, n_ids, ts0, gw_len, ids_len,
     js_len) = COLUMNAR_HEADER.unpack_from(data)  # fmt: skip
    if magic != COLUMNAR_MAGIC:
        raise ColumnarError(f"body: magic {magic!r}, expected {COLUMNAR_MAGIC!r}")
    if version != COLUMNAR_VERSION:
        raise ColumnarError(
            f"body: format version {version}, this receiver reads version {COLUMNAR_VERSION}"
        )
    if flags & ~FLAGS_KNOWN:
        raise ColumnarError(f"body: unknown flags 0x{flags:02x}")
    if first_seq > INT64_MAX or last_seq > INT64_MAX:
        raise ColumnarError("first_seq/last_seq: outside the 64-bit range")
    if last_seq < first_seq:
        raise ColumnarError(f"last_seq {last_seq} < first_seq {first_seq}")
    ts_t = "<i8" if flags & FLAG_TS_I64 else "<i4"
    ts_w = np.dtype(ts_t).itemsize
    # the fixed part first; the value columns' sizes follow from the kinds
    want = hsize + gw_len + ids_len + 4 * n_ids + n * (ts_w + 2) + js_len
    if len(data) < want:
        raise ColumnarError(
            f"body: {len(data)} bytes, the header announces {want} "
            f"({n} readings, {n_ids} point ids)"
        )
    view = memoryview(data)
    pos = hsize
    try:
        gateway_id = bytes(view[pos : pos + gw_len]).decode()
        pos += gw_len
        ids_text = bytes(view[pos : pos + ids_len]).decode()
    except UnicodeDecodeError:
        raise ColumnarError("gateway_id/point_ids: not valid UTF-8") from None
    pos += ids_len
    if len(gateway_id) > 128 or not _ID_RE.fullmatch(gateway_id):
        raise ColumnarError(f"gateway_id: invalid gateway id {gateway_id!r}")
    point_ids = ids_text.split("\n") if n_ids else []
    if (ids_len and not n_ids) or len(point_ids) != n_ids:
        raise ColumnarError(f"point_ids: {len(point_ids)} ids, the header announces {n_ids}")
    if len(set(point_ids)) != n_ids:
        raise ColumnarError("readings.point_ids contains duplicates")
    for pid in point_ids:
        if len(pid) > POINT_ID_MAX or not _ID_RE.fullmatch(pid):
            raise ColumnarError(f"readings.point_ids: invalid point id {pid!r}")
    counts = _unshuffle(view[pos:], "<u4", n_ids).astype(np.int64)
    pos += 4 * n_ids
    if int(counts.sum()) != n:
        raise ColumnarError(f"readings.counts: sum {int(counts.sum())}, the header announces {n}")
    point = np.repeat(np.arange(n_ids, dtype=np.int64), counts)
    deltas = _unshuffle(view[pos:], ts_t, n).astype(np.int64)
    pos += n * ts_w
    kinds = np.frombuffer(view[pos:], dtype=np.uint8, count=n)
    pos += n
    if n and int(kinds.max()) > _F32:
        raise ColumnarError(f"readings.kind: unknown value kind {int(kinds.max())}")
    dec = (kinds >= 1) & (kinds <= 5)
    n_dec, n_f32 = int(dec.sum()), int((kinds == _F32).sum())
    n_raw = n - n_dec - n_f32
    want += 8 * n_dec + 4 * n_f32 + 8 * n_raw
    if len(data) != want:
        raise ColumnarError(
            f"body: {len(data)} bytes, the header and value kinds announce {want} "
            f"({n} readings, {n_ids} point ids)"
        )
    value = np.empty(n, dtype=np.float64)
    zigzag = _unshuffle(view[pos:], "<u8", n_dec)
    pos += 8 * n_dec
    m = np.cumsum(((zigzag >> 1) ^ (0 - (zigzag & 1))).view(np.int64))
    if n_dec and int(np.abs(m).max()) >= _M_MAX:
        raise ColumnarError("readings.value: decimal mantissa beyond 2**53")
    value[dec] = m * _SCALES[kinds[dec].astype(np.intp) - 1]
    f32 = _unshuffle(view[pos:], "<u4", n_f32)
    pos += 4 * n_f32
    value[kinds == _F32] = np.bitwise_xor.accumulate(f32).view(np.float32) if n_f32 else 0.0
    raw = _unshuffle(view[pos:], "<u8", n_raw)
    pos += 8 * n_raw
    value[kinds == 0] = np.bitwise_xor.accumulate(raw).view(np.float64) if n_raw else 0.0
    quality = np.frombuffer(view[pos:], dtype=np.uint8, count=n).copy()
    pos += n
    if n:
        # Bounded before summing, so the cumulative sum cannot wrap around int64.
        if (
            not TS_MIN_MS <= ts0 <= TS_MAX_MS
            or int(deltas.min()) < -TS_MAX_MS
            or int(deltas.max()) > TS_MAX_MS
        ):
            raise ColumnarError("readings.ts: timestamp outside 2000-01-01..2100-01-01")
        ts_ms = ts0 + np.cumsum(deltas)
        if int(ts_ms.min()) < TS_MIN_MS or int(ts_ms.max()) > TS_MAX_MS:
            raise ColumnarError("readings.ts: timestamp outside 2000-01-01..2100-01-01")
        if bool(np.isinf(value).any()):
            raise ColumnarError("readings.value: infinite value (no value is NaN)")
    else:
        ts_ms = np.zeros(0, dtype=np.int64)
    extras = IngestExtras.model_validate_json(bytes(view[pos : pos + js_len]) or b"{}")
    return ColumnBatch(
        gateway_id,
        first_seq,
        last_seq,
        Columns(point_ids, point, ts_ms, value, quality),
        extras.events,
        extras.points,
        extras.schedule_version,
    )


_F32 = 6  # value kinds, see outpost.cloud.uplink.columnar_body / docs/wire-format.md
_SCALES = np.array([1.0, 0.1, 0.01, 0.001, 0.0001])
_M_MAX = 2**53

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
# One tuple per reading: field count, then (length, big-endian data) for time (int8, us since
# 2000-01-01), point_key (int4), value (float8; length -1 and no data for NULL), quality (int2).
_ROW = np.dtype(
    [("nf", ">i2"), ("l1", ">i4"), ("t", ">i8"), ("l2", ">i4"), ("k", ">i4"),
     ("l3", ">i4"), ("v", ">f8"), ("l4", ">i4"), ("q", ">i2")]
)  # fmt: skip
_ROW_NULL = np.dtype(
    [("nf", ">i2"), ("l1", ">i4"), ("t", ">i8"), ("l2", ">i4"), ("k", ">i4"),
     ("l3", ">i4"), ("l4", ">i4"), ("q", ">i2")]
)  # fmt: skip


def _tuples(
    dtype: np.dtype[Any],
    us: npt.NDArray[np.int64],
    keys: npt.NDArray[Any],
    value: npt.NDArray[np.float64] | None,
    quality: npt.NDArray[np.uint8],
) -> bytes:
    rows = np.empty(len(us), dtype=dtype)
    rows["nf"], rows["l1"], rows["t"], rows["l2"], rows["k"] = 4, 8, us, 4, keys
    if value is None:
        rows["l3"] = -1
    else:
        rows["l3"], rows["v"] = 8, value
    rows["l4"], rows["q"] = 2, quality
    return rows.tobytes()


def copy_binary(
    ts_ms: npt.NDArray[np.int64],
    keys: npt.NDArray[Any],
    value: npt.NDArray[np.float64],
    quality: npt.NDArray[np.uint8],
) -> bytes:
    """The readings COPY body (columns time, point_key, value, quality) in PostgreSQL's binary
    format; NaN values go as NULL."""
    us = (ts_ms - _PG_EPOCH_MS) * 1000
    null = np.isnan(value)
    if not null.any():
        return _COPY_HEADER + _tuples(_ROW, us, keys, value, quality) + _COPY_TRAILER
    keep = ~null
    return b"".join(
        (
            _COPY_HEADER,
            _tuples(_ROW, us[keep], keys[keep], value[keep], quality[keep]),
            _tuples(_ROW_NULL, us[null], keys[null], None, quality[null]),
            _COPY_TRAILER,
        )
    )


def values_or_none(value: npt.NDArray[np.float64]) -> list[float | None]:
    """The value column as the row-wise SQL and the live payloads take it."""
    return [None if v != v else v for v in value.tolist()]


class NanAsNone(Sequence[float | None]):
    """The value column as the live payloads read it (None for no value), converted only
    where read: they take the newest reading of each point."""

    def __init__(self, values: npt.NDArray[np.float64]) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, i: int) -> float | None: ...

    @overload
    def __getitem__(self, i: slice) -> list[float | None]: ...

    def __getitem__(self, i: int | slice) -> float | list[float | None] | None:
        if isinstance(i, slice):
            return values_or_none(self._values[i])
        v = float(self._values[i])
        return None if v != v else v
