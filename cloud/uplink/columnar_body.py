"""The binary columnar ingest body (``application/vnd.outpost.columnar.v1``), agent side.

Builds the body ``outpost.cloud.wire`` specifies from the buffer's columns as read
(:class:`~outpost.buffer.models.ReadingColumns`: the chunks' arrays, cut to the batch) with the
standard library only: numpy would cost the agent +13.7 MB RSS, and the agent must stay small
(the receiver's decoder keeps numpy). Every per-reading step is a C-level pass (``array``
conversions, ``operator.itemgetter`` gathers, ``map`` over builtins, strided ``bytes`` slices
for the byte shuffle); the only Python code per reading is the value classification of a value
not seen recently (a bounded cache keyed on the float's bits: a site's registers revisit the
same few values). ``tests/test_columnar_encoder.py`` proves the output byte-identical to the
numpy reference encoder this replaced, and decodes it with the receiver's decoder.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import chain, compress, groupby, repeat
from operator import eq, is_, itemgetter, lshift, lt, mul, not_, rshift, sub, xor
from typing import Any

from outpost.buffer.models import ReadingColumns
from outpost.cloud.wire import (
    COLUMNAR_HEADER,
    COLUMNAR_MAGIC,
    COLUMNAR_VERSION,
    FLAG_TS_I64,
)

_I32 = 2**31 - 1

#: value kinds: 0 float64 bits, 1..5 decimal (value == m * 10.0**-(kind-1)), 6 float32
_RAW, _F32 = 0, 6
_SCALES = (1.0, 0.1, 0.01, 0.001, 0.0001)
_POWERS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
_M_MAX = 2**53
_M_MAX_F = float(_M_MAX)
# float64 bit fields
_EXP = 0x7FF0000000000000
_FRAC = 0x000FFFFFFFFFFFFF
_NEG_ZERO = 0x8000000000000000
_NAN = 0x7FF8000000000000  # numpy's and CPython's NaN: what an infinity is sent as
_LITTLE = sys.byteorder == "little"
_KIND = itemgetter(0)
_PAYLOAD = itemgetter(1)
# bytes.translate tables turning the kinds column into 0/1 masks for itertools.compress
_IS_DEC = bytes(1 if 1 <= i <= 5 else 0 for i in range(256))
_IS_F32 = bytes(1 if i == _F32 else 0 for i in range(256))
_IS_RAW = bytes(1 if i == _RAW else 0 for i in range(256))
#: Value classifications kept between batches (≈ 115 bytes each: ≈ 1.9 MB; a batch with more
#: distinct values holds them until the next batch starts).
_CACHE_MAX = 16384

if array("i").itemsize != 4 or array("I").itemsize != 4 or array("H").itemsize != 2:
    raise ImportError("columnar_body needs 2-byte 'H' and 4-byte 'i'/'I' array items")


def classify_into(cache: dict[int, tuple[int, int]], misses: list[int]) -> None:
    """Add (kind, payload) for each float64 in ``misses`` (given as its bits) to ``cache``:
    the smallest decimal scale that reproduces it exactly (payload m), else float32 (payload
    its bits), else raw (payload the float64 bits; an infinity as NaN, which JSON cannot
    carry either). One C-level ``map`` pass per step over the values still open, not a Python
    function per value."""
    finite: list[int] = []
    for b in misses:  # the rare special values one by one, everything else in bulk
        if b & _EXP == _EXP:  # NaN or infinity
            cache[b] = (_RAW, b if b & _FRAC else _NAN)
        elif b == _NEG_ZERO:  # -0.0 == 0.0 but is not 0 * scale: it stays a float
            cache[b] = (_F32, 0x80000000)
        else:
            finite.append(b)
    floats = array("d")
    floats.frombytes(array("Q", finite).tobytes())
    values = floats.tolist()
    # Beyond 2**53 no m qualifies at any scale: straight to the float32 test.
    small = list(map(lt, map(abs, values), repeat(_M_MAX_F)))
    rest_bits = list(compress(finite, map(not_, small)))
    rest_values = list(compress(values, map(not_, small)))
    open_bits = list(compress(finite, small))
    open_values = list(compress(values, small))
    for k in range(5):
        if not open_values:
            break
        m = list(map(round, map(mul, open_values, repeat(_POWERS[k]))))  # half to even
        ok = list(map(eq, map(mul, m, repeat(_SCALES[k])), open_values))
        hit = list(compress(m, ok))
        if hit and max(max(hit), -min(hit)) >= _M_MAX:
            ok = [o and -_M_MAX < x < _M_MAX for o, x in zip(ok, m, strict=True)]
            hit = list(compress(m, ok))
        cache.update(zip(compress(open_bits, ok), zip(repeat(k + 1), hit), strict=False))
        miss = list(map(not_, ok))
        open_bits = list(compress(open_bits, miss))
        open_values = list(compress(open_values, miss))
    open_bits += rest_bits
    open_values += rest_values
    # float32: the C cast numpy's astype does (out of range -> inf, which differs)
    as_f32 = array("f", open_values)
    f32_bits = array("I")
    f32_bits.frombytes(as_f32.tobytes())
    ok = list(map(eq, as_f32, open_values))
    cache.update(
        zip(compress(open_bits, ok), zip(repeat(_F32), compress(f32_bits, ok)), strict=False)
    )
    raw = list(compress(open_bits, map(not_, ok)))
    cache.update(zip(raw, zip(repeat(_RAW), raw), strict=False))


class ColumnarEncoder:
    """Encodes batches, remembering value classifications between them (one per uplink)."""

    def __init__(self) -> None:
        self._kinds: dict[int, tuple[int, int]] = {}

    def encode(
        self,
        gateway_id: str,
        first_seq: int,
        last_seq: int,
        cols: ReadingColumns,
        extras: dict[str, Any] | None = None,
    ) -> bytes:
        if len(self._kinds) > _CACHE_MAX:
            # full of values from older batches: start over, the site's values drift
            self._kinds = {}
        return _encode(self._kinds, gateway_id, first_seq, last_seq, cols, extras)


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
    return _encode({}, gateway_id, first_seq, last_seq, cols, extras)


def _encode(
    kinds_of: dict[int, tuple[int, int]],
    gateway_id: str,
    first_seq: int,
    last_seq: int,
    cols: ReadingColumns,
    extras: dict[str, Any] | None,
) -> bytes:
    n = len(cols)
    gather, sorted_keys = _grouped(cols.keys, n)
    uniq: list[int] = []
    counts = array("I")
    for key, group in groupby(sorted_keys):  # per point, not per reading
        uniq.append(key)
        counts.append(len(list(group)))
    ids = cols.names_for(uniq)
    ts = array("q", gather(cols.ts_ms))
    ts0 = ts[0] if n else 0
    flags, delta_col = _deltas(ts, ts0)
    bits = array("Q")
    bits.frombytes(memoryview(cols.value).cast("B"))
    found = list(map(kinds_of.get, bits))
    if None in found:  # values not seen before: classified in bulk, then looked up again
        classify_into(kinds_of, list(set(compress(bits, map(is_, found, repeat(None))))))
        found = list(map(kinds_of.__getitem__, bits))
    classified = gather(found)
    kinds = bytes(map(_KIND, classified))
    payload = list(map(_PAYLOAD, classified))
    dec = list(compress(payload, kinds.translate(_IS_DEC)))
    dm = list(map(sub, dec, chain((0,), dec)))
    zigzag = _zigzag(dm)
    f32 = list(compress(payload, kinds.translate(_IS_F32)))
    raw = list(compress(payload, kinds.translate(_IS_RAW)))
    quality = bytes(gather(cols.quality))
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
            _shuffled(counts),
            delta_col,
            kinds,
            zigzag,
            _shuffled(array("I", map(xor, f32, chain((0,), f32)))),
            _shuffled(array("Q", map(xor, raw, chain((0,), raw)))),
            quality,
            js,
        )
    )


def _grouped(
    keys: array[int], n: int
) -> tuple[Callable[[Sequence[Any]], Sequence[Any]], Sequence[int]]:
    """A function taking a column (aligned with ``keys``) to the body's order (grouped by key,
    ascending, buffer order within a key: a stable sort by key), and the keys in that order."""
    if n == 0:
        return (lambda col: col[:0]), []
    order: Sequence[int]
    sorted_keys: Sequence[int]
    if _LITTLE and n <= 0x10000 and max(keys) <= 0xFFFF:
        # Sort u32 values key << 16 | index, built and taken apart by strided byte copies:
        # ints below 2**30 compare on CPython's fast path, and no key function runs.
        packed = bytearray(4 * n)
        index = array("I", range(n)).tobytes()
        key_bytes = (keys if keys.itemsize == 4 else array("I", keys)).tobytes()
        packed[0::4], packed[1::4] = index[0::4], index[1::4]
        packed[2::4], packed[3::4] = key_bytes[0::4], key_bytes[1::4]
        combined = array("I")
        combined.frombytes(packed)
        data = array("I", sorted(combined)).tobytes()
        low, high = bytearray(2 * n), bytearray(2 * n)
        low[0::2], low[1::2] = data[0::4], data[1::4]
        high[0::2], high[1::2] = data[2::4], data[3::4]
        order_h, keys_h = array("H"), array("H")
        order_h.frombytes(low)
        keys_h.frombytes(high)
        order, sorted_keys = order_h, keys_h
    else:
        order = sorted(range(n), key=keys.__getitem__)
        sorted_keys = [keys[i] for i in order]
    if n == 1:
        return (lambda col: col[:1]), sorted_keys
    return itemgetter(*order), sorted_keys


_FLIP_SIGN = bytes(i ^ 0x80 for i in range(256))
_SIGN_FILL = bytes(0 if i < 0x80 else 0xFF for i in range(256))
_BELOW_40 = bytes(range(0x40))
_LANE_BIAS = bytes(7) + b"\x80"  # 2**63 in one little-endian lane
_LANE_I32_MIN = b"\x00\x00\x00\x80\xff\xff\xff\xff"


def _deltas(ts: array[int], ts0: int) -> tuple[int, bytes]:
    """The header flags and the shuffled ts-delta column (i32, or i64 with FLAG_TS_I64) of
    the ordered timestamps. Timestamps within 0..2**62 (every real clock) take the whole
    column as one big integer: lane i minus lane i-1 plus 2**63 is a 64-bit lane subtraction
    that cannot borrow across lanes, so one subtraction does every delta."""
    n = len(ts)
    data = ts.tobytes()
    if n and _LITTLE and not data[7::8].translate(None, _BELOW_40):
        whole = int.from_bytes(data, "little")
        mask = (1 << (64 * n)) - 1
        prev = ((whole << 64) | ts0) & mask
        bias = int.from_bytes(_LANE_BIAS * n, "little")
        lanes = bytearray((whole + bias - prev).to_bytes(8 * n, "little"))
        lanes[7::8] = lanes[7::8].translate(_FLIP_SIGN)  # biased -> two's complement int64
        sign = lanes[3::8].translate(_SIGN_FILL)
        fits = all(lanes[j::8] == sign for j in (4, 5, 6, 7))
        if fits:  # -2**31 fits in i32 but the format sends it as i64 (abs > 2**31 - 1)
            at = lanes.find(_LANE_I32_MIN)
            while at >= 0 and fits:
                fits = at % 8 != 0
                at = lanes.find(_LANE_I32_MIN, at + 1)
        if fits:
            return 0, b"".join([lanes[j::8] for j in range(4)])
        return FLAG_TS_I64, b"".join([lanes[j::8] for j in range(8)])
    deltas = array("q", map(sub, ts, chain((ts0,), ts)))
    if n and max(max(deltas), -min(deltas)) > _I32:
        return FLAG_TS_I64, _shuffled(deltas)
    return 0, _shuffled(array("i", deltas))


_LANE_NO_BIT0 = b"\xfe" + b"\xff" * 7


def _zigzag(dm: list[int]) -> bytes:
    """The shuffled u64 zigzag column ``(d << 1) ^ (d >> 63)`` of the mantissa differences
    (abs(d) < 2**54). Little-endian hosts take the whole column as one big integer: one shift
    and one XOR with the lanes' sign masks (each lane's top byte, spread over its 8 bytes)."""
    n = len(dm)
    if not n or not _LITTLE:
        return _shuffled(
            array("Q", map(xor, map(lshift, dm, repeat(1)), map(rshift, dm, repeat(63))))
        )
    data = array("q", dm).tobytes()
    signs = bytearray(8 * n)
    fill = data[7::8].translate(_SIGN_FILL)
    for j in range(8):
        signs[j::8] = fill
    whole = int.from_bytes(data, "little")
    shifted = (whole << 1) & int.from_bytes(_LANE_NO_BIT0 * n, "little")
    lanes = (shifted ^ int.from_bytes(signs, "little")).to_bytes(8 * n, "little")
    return b"".join([lanes[j::8] for j in range(8)])


def _shuffled(col: array[Any]) -> bytes:
    """Byte i of every (little-endian) element together: a transpose of the n x width byte
    matrix, as strided slices."""
    width = col.itemsize
    if not _LITTLE and width > 1:
        col = array(col.typecode, col)
        col.byteswap()
    data = col.tobytes()
    if width == 1:
        return data
    return b"".join([data[i::width] for i in range(width)])
