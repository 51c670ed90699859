"""Modbus register encoding: data types, byte orders, and the two byte views of a block.

Bytes inside a Modbus register travel big-endian. A register block therefore has two useful
byte views, both built once per response:

- RAW: the block as it came off the wire (each register big-endian).
- SWAPPED: the bytes of every register swapped (one ``array('H')`` conversion).

Every (data type, byte order) pair is then a plain struct field in one of the views:

=========  ======  ======  ============================================
order      view    struct  why
=========  ======  ======  ============================================
ABCD       RAW     ``>``   big-endian words, big-endian bytes
DCBA       RAW     ``<``   the whole value is little-endian
CDAB       SWAPPED ``<``   words reversed; swapping bytes per register makes it little-endian
BADC       SWAPPED ``>``   bytes swapped per register; swapping them back makes it big-endian
=========  ======  ======  ============================================

For 64-bit values "CDAB" means "word order reversed" (least significant register first,
pymodbus' ``word_order="little"``), which is what the devices that document CDAB for 64-bit
values do. Single-register types follow the same rule: CDAB equals ABCD, BADC and DCBA swap
the two bytes.
"""

from __future__ import annotations

import struct
import sys
from array import array

from outpost.point_schedules.model import ByteOrder, DataType

RAW = 0
SWAPPED = 1

#: struct code of each type (bool on a register is read as an unsigned register)
STRUCT_CODE: dict[DataType, str] = {
    DataType.BOOL: "H",
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}

#: (view, struct byte-order prefix) of each byte order
LAYOUT: dict[ByteOrder, tuple[int, str]] = {
    ByteOrder.ABCD: (RAW, ">"),
    ByteOrder.DCBA: (RAW, "<"),
    ByteOrder.CDAB: (SWAPPED, "<"),
    ByteOrder.BADC: (SWAPPED, ">"),
}

#: the layouts in which an unsigned 16-bit register reads as its true value
NATURAL_LAYOUTS: tuple[tuple[int, str], ...] = ((RAW, ">"), (SWAPPED, "<"))

FLOAT_TYPES = frozenset({DataType.FLOAT32, DataType.FLOAT64})

INT_RANGE: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}

_LITTLE_HOST = sys.byteorder == "little"


def block_views(registers: list[int], need_raw: bool, need_swapped: bool) -> tuple[bytes, bytes]:
    """The RAW and SWAPPED byte views of a register block (each only when needed)."""
    words = array("H", registers)
    raw = swapped = b""
    # array('H') holds native-order words: on a little-endian host that *is* the swapped view
    if _LITTLE_HOST:
        if need_swapped:
            swapped = words.tobytes()
        if need_raw:
            words.byteswap()
            raw = words.tobytes()
    else:
        if need_raw:
            raw = words.tobytes()
        if need_swapped:
            words.byteswap()
            swapped = words.tobytes()
    return raw, swapped


def views_of_raw(raw: bytes, need_swapped: bool) -> tuple[bytes, bytes]:
    """The RAW and SWAPPED views when the wire bytes are at hand (no register list needed)."""
    if not need_swapped:
        return raw, b""
    words = array("H")
    words.frombytes(raw)
    words.byteswap()  # swaps within each register whatever the host order
    return raw, words.tobytes()


def swap_register_bytes(data: bytes) -> bytes:
    words = array("H", data)
    words.byteswap()
    return words.tobytes()


class EncodeError(ValueError):
    """An engineering value cannot be represented in the point's register type."""


def encode_registers(data_type: DataType, byte_order: ByteOrder, raw_value: float) -> list[int]:
    """Register words (as sent on the wire) that hold ``raw_value`` (scale/offset removed)."""
    code = STRUCT_CODE[data_type]
    if data_type in FLOAT_TYPES:
        number: float | int = float(raw_value)
    else:
        if raw_value != raw_value or raw_value in (float("inf"), float("-inf")):
            raise EncodeError(f"{raw_value} is not a number a {data_type.value} can hold")
        number = round(raw_value)
        if data_type is DataType.BOOL:
            number = 1 if number else 0
        else:
            lo, hi = INT_RANGE[data_type]
            if not lo <= number <= hi:
                raise EncodeError(
                    f"raw value {number} is outside the {data_type.value} range {lo}..{hi}"
                )
    view, prefix = LAYOUT[byte_order]
    try:
        packed = struct.pack(prefix + code, number)
    except (struct.error, OverflowError) as exc:
        raise EncodeError(f"{raw_value} does not fit a {data_type.value}: {exc}") from None
    if view == SWAPPED:
        packed = swap_register_bytes(packed)
    return list(struct.unpack(f">{len(packed) // 2}H", packed))


def decode_registers(data_type: DataType, byte_order: ByteOrder, registers: list[int]) -> float:
    """One value from its registers (slow path: tests, read-modify-write, tools)."""
    raw, swapped = block_views(registers, True, True)
    view, prefix = LAYOUT[byte_order]
    (value,) = struct.unpack(prefix + STRUCT_CODE[data_type], raw if view == RAW else swapped)
    return float(value)
