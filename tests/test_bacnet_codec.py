"""The driver's own RPM-ACK decoder against answers encoded by bacpypes3 (the reference)."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from bacpypes3.apdu import ReadPropertyACK, ReadPropertyMultipleACK
from bacpypes3.basetypes import (
    ErrorType,
    ReadAccessResult,
    ReadAccessResultElement,
    ReadAccessResultElementChoice,
)
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.constructeddata import ArrayOf, SequenceOf
from bacpypes3.primitivedata import (
    Boolean,
    CharacterString,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectIdentifier,
    Real,
    Unsigned,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.drivers.bacnet.codec import NON_NUMERIC, RawError, decode_rp_ack, decode_rpm_ack


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


# (bacpypes3 value, what the decoder must return)
VALUES = st.one_of(
    st.floats(width=32, allow_nan=False).map(lambda x: (Real(x), f32(x))),
    st.floats(allow_nan=False).map(lambda x: (Double(x), x)),
    st.integers(0, 2**32 - 1).map(lambda n: (Unsigned(n), float(n))),
    st.integers(-(2**31), 2**31 - 1).map(lambda n: (Integer(n), float(n))),
    st.integers(0, 2**16).map(lambda n: (Enumerated(n), float(n))),
    st.booleans().map(lambda b: (Boolean(b), float(b))),
    st.just((Null(()), None)),
    st.text(max_size=300).map(lambda t: (CharacterString(t), NON_NUMERIC)),
    st.lists(st.floats(width=32, allow_nan=False), min_size=0, max_size=3).map(
        lambda xs: (ArrayOf(Real)(xs), NON_NUMERIC if len(xs) != 1 else f32(xs[0]))
    ),
)
ERRORS = st.sampled_from(
    [
        RawError("object", "unknown-object"),
        RawError("property", "unknown-property"),
        RawError("property", "invalid-array-index"),
    ]
)
ENTRY = st.tuples(
    st.sampled_from(["analog-input", "analog-value", "binary-output", "multi-state-value", 600]),
    st.integers(0, 4194302),
    st.sampled_from([85, 87, 77, 512, 4194303]),
    st.none() | st.integers(0, 2**32 - 1),
    VALUES | ERRORS,
)


def encode_ack(entries: list[tuple[Any, int, int, int | None, Any]]) -> bytes:
    results: list[ReadAccessResult] = []
    for otype, inst, prop, index, value in entries:
        if isinstance(value, RawError):
            choice = ReadAccessResultElementChoice(
                propertyAccessError=ErrorType(
                    errorClass=value.error_class, errorCode=value.error_code
                )
            )
        else:
            choice = ReadAccessResultElementChoice(propertyValue=AnyValue(value[0]))
        element = ReadAccessResultElement(propertyIdentifier=prop, readResult=choice)
        if index is not None:
            element.propertyArrayIndex = index
        objid = ObjectIdentifier((otype, inst))
        if results and results[-1].objectIdentifier == objid:
            results[-1].listOfResults.append(element)
        else:
            results.append(ReadAccessResult(objectIdentifier=objid, listOfResults=[element]))
    ack = ReadPropertyMultipleACK(listOfReadAccessResults=SequenceOf(ReadAccessResult)(results))
    return bytes(ack.encode().pduData)


@settings(max_examples=100, deadline=None)
@given(st.lists(ENTRY, min_size=1, max_size=12, unique_by=lambda e: e[:4]))
def test_decoder_agrees_with_bacpypes3_encoding(entries: list[Any]) -> None:
    decoded = decode_rpm_ack(encode_ack(entries))
    assert len(decoded) == len(entries)
    for otype, inst, prop, index, value in entries:
        key_type = otype if isinstance(otype, int) else int(ObjectIdentifier((otype, 0))[0])
        got = decoded[(key_type, inst, prop, index)]
        if isinstance(value, RawError):
            assert got == value
        elif isinstance(value[1], float) and math.isnan(value[1]):
            assert math.isnan(got)
        else:
            assert got == value[1]


@settings(max_examples=100, deadline=None)
@given(VALUES, st.none() | st.integers(0, 2**32 - 1))
def test_read_property_decoder_agrees_with_bacpypes3(value: Any, index: int | None) -> None:
    ack = ReadPropertyACK(
        objectIdentifier=ObjectIdentifier(("analog-value", 7)),
        propertyIdentifier=85,
        propertyValue=AnyValue(value[0]),
    )
    if index is not None:
        ack.propertyArrayIndex = index
    assert decode_rp_ack(bytes(ack.encode().pduData)) == value[1]


@pytest.mark.parametrize("cut", [1, 5, 9])
def test_truncated_answer_raises(cut: int) -> None:
    data = encode_ack([("analog-input", 1, 85, None, (Real(1.5), 1.5))] * 1)
    with pytest.raises((ValueError, IndexError, struct.error)):
        decode_rpm_ack(data[:-cut])
