"""The agent's numpy-free columnar encoder writes the documented format byte for byte.

The reference is the numpy encoder it replaced (kept here, in the test only: the agent must
not load numpy), written from docs/wire-format.md: one stable argsort by point key, a diff,
value kinds by vector comparisons, XORs, byte shuffles by a transpose. Both must produce the
same bytes for any columns, and the receiver's decoder must give back every reading bit for
bit (infinities as "no value", as documented).
"""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import sys
from array import array
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.buffer.models import ReadingColumns
from outpost.cloud.receiver.ingest_columns import decode_columnar
from outpost.cloud.uplink.columnar_body import ColumnarEncoder, encode_columnar
from outpost.cloud.wire import (
    COLUMNAR_HEADER,
    COLUMNAR_MAGIC,
    COLUMNAR_VERSION,
    FLAG_TS_I64,
    TS_MIN_MS,
)

GW = "gw-enc"
T0 = 1_790_000_000_000


# --- the numpy reference encoder ---------------------------------------------------------


def reference(
    gateway_id: str,
    first_seq: int,
    last_seq: int,
    cols: ReadingColumns,
    extras: dict[str, Any] | None = None,
) -> bytes:
    n = len(cols)
    keys = np.frombuffer(cols.keys, dtype=np.dtype(cols.keys.typecode))
    order = np.argsort(keys, kind="stable")
    uniq, counts = np.unique(keys[order], return_counts=True)
    ids = cols.names_for(uniq.tolist())
    ts = np.frombuffer(cols.ts_ms, dtype=np.int64)[order]
    ts0 = int(ts[0]) if n else 0
    deltas = np.diff(ts, prepend=ts0)
    flags = 0
    if n and int(np.abs(deltas).max()) > 2**31 - 1:
        flags |= FLAG_TS_I64
    else:
        deltas = deltas.astype("<i4")
    values = np.frombuffer(cols.value, dtype=np.float64)[order]
    inf = np.isinf(values)
    if inf.any():
        values = np.where(inf, np.nan, values)
    kinds, value_cols = _ref_values(values)
    quality = np.frombuffer(cols.quality, dtype=np.uint8)[order]
    gw = gateway_id.encode()
    id_bytes = "\n".join(ids).encode()
    js = json.dumps(extras or {}, separators=(",", ":"), ensure_ascii=False).encode()
    head = COLUMNAR_HEADER.pack(
        COLUMNAR_MAGIC, COLUMNAR_VERSION, flags, 0, first_seq, last_seq, n, len(ids), ts0,
        len(gw), len(id_bytes), len(js),
    )  # fmt: skip
    return b"".join(
        (head, gw, id_bytes, _ref_shuffled(counts.astype("<u4")), _ref_shuffled(deltas),
         kinds.tobytes(), *value_cols, quality.tobytes(), js)
    )  # fmt: skip


def _ref_values(v: Any) -> tuple[Any, list[bytes]]:
    n = len(v)
    kinds = np.zeros(n, dtype=np.uint8)
    m = np.zeros(n, dtype=np.int64)
    todo = ~np.isnan(v)
    with np.errstate(invalid="ignore", over="ignore"):
        for k, scale in enumerate((1.0, 0.1, 0.01, 0.001, 0.0001)):
            cand = np.rint(v * (10.0**k))
            ok = todo & (np.abs(cand) < 2**53) & (cand * scale == v)
            ok &= ~((v == 0) & np.signbit(v))
            kinds[ok] = k + 1
            m[ok] = cand[ok]
            todo &= ~ok
        f32 = todo & (v.astype(np.float32).astype(np.float64) == v)
    kinds[f32] = 6
    dec = m[(kinds >= 1) & (kinds <= 5)]
    dm = np.diff(dec, prepend=np.int64(0))
    zigzag = ((dm << 1) ^ (dm >> 63)).astype("<u8")
    fl = v[f32].astype(np.float32).view(np.uint32)
    raw = v[kinds == 0].view(np.uint64)
    return kinds, [
        _ref_shuffled(zigzag),
        _ref_shuffled(_ref_xor_prev(fl).astype("<u4")),
        _ref_shuffled(_ref_xor_prev(raw).astype("<u8")),
    ]


def _ref_xor_prev(bits: Any) -> Any:
    if not len(bits):
        return bits
    return bits ^ np.concatenate((np.zeros(1, dtype=bits.dtype), bits[:-1]))


def _ref_shuffled(col: Any) -> bytes:
    width = col.dtype.itemsize
    return bytes(col.view("u1").reshape(len(col), width).T.tobytes())


# --- helpers ------------------------------------------------------------------------------


def _cols(
    keys: list[int], ts: list[int], values: list[float], quality: list[int]
) -> ReadingColumns:
    return ReadingColumns(
        array("q", range(1, len(keys) + 1)),
        array("q", ts),
        array("I", keys),
        array("d", values),
        array("B", quality),
        lambda ks: [f"dev-{k}.p" for k in ks],
    )


def _bits(v: float) -> bytes:
    """Bit-exact (-0.0 is not 0.0); NaN and the infinities are "no value" (empty)."""
    return b"" if v != v or math.isinf(v) else struct.pack("<d", v)


def _check(cols: ReadingColumns, extras: dict[str, Any] | None = None) -> bytes:
    """Same bytes as the reference, fresh and through a warm encoder; the receiver's decoder
    gives back every reading."""
    last = max(len(cols), 1)
    want = reference(GW, 1, last, cols, extras)
    assert encode_columnar(GW, 1, last, cols, extras) == want
    encoder = ColumnarEncoder()
    assert encoder.encode(GW, 1, last, cols, extras) == want
    assert encoder.encode(GW, 1, last, cols, extras) == want  # classifications cached
    batch = decode_columnar(want)
    r = batch.readings
    got = sorted(
        (r.point_ids[p], t, _bits(v), q)
        for p, t, v, q in zip(
            r.point.tolist(), r.ts_ms.tolist(), r.value.tolist(), r.quality.tolist(), strict=True
        )
    )
    ids = cols.names_for(list(cols.keys))
    assert got == sorted(
        zip(ids, cols.ts_ms.tolist(), map(_bits, cols.value), cols.quality.tolist(), strict=True)
    )
    return want


# Every spelling of the value kinds and their edges: integers, each decimal scale, halves
# (rounding to even), -0.0, float32 values and its range edge, subnormals, beyond 2**53, NaN
# with a payload, the infinities.
EDGES = [
    0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 3.5, 21.5, 23.4, 234 * 0.1, 0.1, 0.01, 0.001, 0.0001,
    0.00001, 1.23456, 12345.6789, -98.76, 1e15 + 0.5, 2.0**53 - 1, 2.0**53, -(2.0**53), 1e300,
    -1e300, 5e-324, 1e-310, 1 / 3, 1 / 7, float(np.float32(1 / 7)), float(np.float32(-1e-40)),
    3.4028234663852886e38, 3.4028235677973366e38, 1e39, float(np.float32(0.1)), 123456789.0,
    9007199254740.993, 900719925474.0993, math.nan, math.inf, -math.inf,
    struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0],
    struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000000))[0],
]  # fmt: skip


# --- tests --------------------------------------------------------------------------------


def test_edge_values_byte_identical() -> None:
    n = len(EDGES)
    keys = [i % 5 for i in range(3 * n)]
    ts = [T0 + 1000 * i - (i % 7) * 3 for i in range(3 * n)]  # some deltas negative
    _check(_cols(keys, ts, EDGES * 3, [i % 256 for i in range(3 * n)]), {"schedule_version": "v"})


def test_empty_single_and_wide_timestamps() -> None:
    _check(_cols([], [], [], []))
    _check(_cols([9], [T0], [21.5], [0]))
    # deltas beyond int32 (the i64 flag), and exactly at its edges
    body = _check(_cols([1, 1, 2, 2], [T0, T0 + 2**31, T0, T0 + 2**31 - 1], [1.0] * 4, [0] * 4))
    assert COLUMNAR_HEADER.unpack_from(body)[2] & FLAG_TS_I64
    body = _check(_cols([1, 1, 2], [T0, T0 + 2**31 - 1, T0], [1.0] * 3, [0] * 3))
    assert not COLUMNAR_HEADER.unpack_from(body)[2] & FLAG_TS_I64
    body = _check(_cols([1, 1], [T0 + 2**31, T0], [1.0] * 2, [0] * 2))  # -2**31: i64
    assert COLUMNAR_HEADER.unpack_from(body)[2] & FLAG_TS_I64
    # timestamps no clock gives (the receiver refuses them) take the encoder's general path
    for ts in ([-5, 10, 7], [2**62 + 5, 2**62 - 5, 3], [-(2**40), 2**40, 0]):
        cols = _cols([2, 1, 2], ts, [1.5, 2.5, 3.5], [0, 0, 0])
        assert encode_columnar(GW, 1, 3, cols) == reference(GW, 1, 3, cols)


def test_site_like_batches_and_both_grouping_paths() -> None:
    """Backfill-bench-shaped data: small keys and <= 65,536 readings take the packed sort,
    large keys or more readings the general one; both are the stable sort by key."""
    rng = random.Random(3)
    f32 = struct.Struct("<f")
    for n, key_base in ((5000, 1), (20000, 70_000), (70_000, 1)):
        regs = [rng.randint(100, 3000) for _ in range(500)]
        keys: list[int] = []
        ts: list[int] = []
        values: list[float] = []
        quality: list[int] = []
        t = T0
        while len(keys) < n:
            t += 5000
            for i in range(500):
                if rng.random() < 0.5 or len(keys) == n:
                    continue
                regs[i] += rng.randint(-3, 3)
                v = (regs[i] * 0.1, f32.unpack(f32.pack(regs[i] / 7.0))[0], float(regs[i]),
                     regs[i] * 0.01)[i % 4]  # fmt: skip
                bad = rng.random() < 0.01
                keys.append(key_base + i * 3)
                ts.append(t + (i // 25) * 4)
                values.append(math.nan if bad else v)
                quality.append(129 if bad else 0)
        _check(_cols(keys, ts, values, quality))


readings = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)),
        st.integers(TS_MIN_MS, TS_MIN_MS + 10**11),
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(width=32),
            st.integers(-(2**60), 2**60).map(float),
            st.integers(-(10**9), 10**9).map(lambda i: i * 0.01),
            st.integers(-(10**9), 10**9).map(lambda i: i / 1000),
            st.sampled_from(EDGES),
        ),
        st.integers(0, 255),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(readings)
def test_any_columns_byte_identical(rows: list[tuple[int, int, float, int]]) -> None:
    _check(_cols(*(list(c) for c in zip(*rows, strict=True))) if rows else _cols([], [], [], []))


def test_the_agent_side_does_not_load_numpy() -> None:
    code = (
        "import sys\n"
        "from array import array\n"
        "from outpost.buffer.models import ReadingColumns\n"
        "from outpost.cloud.uplink import Uplink\n"
        "from outpost.cloud.uplink.columnar_body import encode_columnar\n"
        "cols = ReadingColumns(array('q', [1]), array('q', [1790000000000]), array('I', [1]),\n"
        "                      array('d', [21.5]), array('B', [0]), lambda ks: ['dev-1.p'])\n"
        "encode_columnar('gw', 1, 1, cols)\n"
        "print('numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
