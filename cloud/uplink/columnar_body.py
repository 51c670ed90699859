"""The binary columnar ingest body (``application/vnd.outpost.columnar.v1``), agent side.

Builds the body ``outpost.cloud.wire`` specifies from the buffer's columns as read
(:class:`~outpost.buffer.models.ReadingColumns`: the chunks' arrays, cut to the batch) with
numpy array operations: one stable sort by point key, a diff and a XOR, byte shuffles by a
transpose. No Python code runs per reading (the point-id dictionary is per distinct point).

numpy is imported on the first call, in the uplink's worker thread: an agent without
``[cloud]`` never loads it, and the poll path never touches it.
"""

from __future__ import annotations

import json
from typing import Any

from outpost.buffer.models import ReadingColumns
from outpost.cloud.wire import (
    COLUMNAR_HEADER,
    COLUMNAR_MAGIC,
    COLUMNAR_VERSION,
    FLAG_TS_I64,
)

_I32 = 2**31 - 1


def encode_columnar(
    gateway_id: str,
    first_seq: int,
    last_seq: int,
    cols: ReadingColumns,
    extras: dict[str, Any] | None = None,
) -> bytes:
    """The uncompressed body for readings ``cols`` (the batch's range ``first_seq..last_seq``)
    and the JSON section ``extras`` (events, points, schedule_version); compress it with the
    session's Content-Encoding like a JSON body."""
    import numpy as np  # the uplink's worker thread only; see the module docstring

    n = len(cols)
    keys = np.frombuffer(cols.keys, dtype=np.dtype(cols.keys.typecode))
    order = np.argsort(keys, kind="stable")
    uniq, counts = np.unique(keys[order], return_counts=True)
    ids = cols.names_for(uniq.tolist())
    ts = np.frombuffer(cols.ts_ms, dtype=np.int64)[order]
    ts0 = int(ts[0]) if n else 0
    deltas = np.diff(ts, prepend=ts0)
    flags = 0
    if n and int(np.abs(deltas).max()) > _I32:
        flags |= FLAG_TS_I64
    else:
        deltas = deltas.astype("<i4")
    values = np.frombuffer(cols.value, dtype=np.float64)[order]
    inf = np.isinf(values)
    if inf.any():  # JSON cannot carry them either: no value, quality as it is
        values = np.where(inf, np.nan, values)
    kinds, value_cols = _values(np, values)
    quality = np.frombuffer(cols.quality, dtype=np.uint8)[order]
    gw = gateway_id.encode()
    id_bytes = "\n".join(ids).encode()
    js = json.dumps(extras or {}, separators=(",", ":"), ensure_ascii=False).encode()
    head = COLUMNAR_HEADER.pack(
        COLUMNAR_MAGIC,
        COLUMNAR_VERSION,
        flags,
        0,
        first_seq,
        last_seq,
        n,
        len(ids),
        ts0,
        len(gw),
        len(id_bytes),
        len(js),
    )
    return b"".join(
        (
            head,
            gw,
            id_bytes,
            _shuffled(counts.astype("<u4")),
            _shuffled(deltas),
            kinds.tobytes(),
            *value_cols,
            quality.tobytes(),
            js,
        )
    )


#: value kinds: 0 float64 bits, 1..5 decimal (value == m * 10.0**-(kind-1)), 6 float32
_RAW, _F32 = 0, 6
_SCALES = (1.0, 0.1, 0.01, 0.001, 0.0001)
_M_MAX = 2**53


def _values(np: Any, v: Any) -> tuple[Any, list[bytes]]:
    """The value kinds (u8 per reading) and the three value columns of the body."""
    n = len(v)
    kinds = np.zeros(n, dtype=np.uint8)
    m = np.zeros(n, dtype=np.int64)
    todo = ~np.isnan(v)
    with np.errstate(invalid="ignore", over="ignore"):
        for k, scale in enumerate(_SCALES):
            if not todo.any():
                break
            cand = np.rint(v * (10.0**k))
            ok = todo & (np.abs(cand) < _M_MAX) & (cand * scale == v)
            # -0.0 == 0.0 but is not 0 * scale: it stays a float
            ok &= ~((v == 0) & np.signbit(v))
            kinds[ok] = k + 1
            m[ok] = cand[ok]
            todo &= ~ok
        f32 = todo & (v.astype(np.float32).astype(np.float64) == v)
    kinds[f32] = _F32
    dec = m[(kinds >= 1) & (kinds <= 5)]
    dm = np.diff(dec, prepend=np.int64(0))
    zigzag = ((dm << 1) ^ (dm >> 63)).astype("<u8")
    fl = v[f32].astype(np.float32).view(np.uint32)
    raw = v[kinds == _RAW].view(np.uint64)
    return kinds, [
        _shuffled(zigzag),
        _shuffled(_xor_prev(np, fl).astype("<u4")),
        _shuffled(_xor_prev(np, raw).astype("<u8")),
    ]


def _xor_prev(np: Any, bits: Any) -> Any:
    """Each element XOR the one before it (the first XOR 0)."""
    if not len(bits):
        return bits
    return bits ^ np.concatenate((np.zeros(1, dtype=bits.dtype), bits[:-1]))


def _shuffled(col: Any) -> bytes:
    """Byte i of every element together (a transpose of the n x width byte matrix)."""
    width = col.dtype.itemsize
    return bytes(col.view("u1").reshape(len(col), width).T.tobytes())
