"""The fast v1/v2c GET codec, checked against pysnmp's own (pyasn1) encoder and decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api, rfc1902, rfc1905

from outpost.drivers.snmp import ber


def reference_response(version: int, request_id: int, varbinds: list[tuple[str, object]]) -> bytes:
    """A Response message encoded by pysnmp, the reference implementation."""
    proto = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C if version else api.SNMP_VERSION_1]
    pdu = proto.GetResponsePDU()
    proto.apiPDU.set_defaults(pdu)
    proto.apiPDU.set_request_id(pdu, request_id)
    proto.apiPDU.set_varbinds(pdu, [(rfc1902.ObjectName(o), v) for o, v in varbinds])
    msg = proto.Message()
    proto.apiMessage.set_defaults(msg)
    proto.apiMessage.set_community(msg, "public")
    proto.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


def test_oid_encoding_matches_pysnmp() -> None:
    for oid in (
        "1.3.6.1.2.1.1.3.0",
        "1.3.6.1.4.1.99999.1.2.1.3.24",
        "2.999.3",
        "1.3.6.1.4.1.4294967295",
    ):
        assert ber.encode_oid(oid) == bytes(encoder.encode(rfc1902.ObjectName(oid)))


def test_get_request_decodes_with_pysnmp() -> None:
    oids = ["1.3.6.1.2.1.1.3.0"] + [f"1.3.6.1.2.1.2.2.1.10.{i}" for i in range(1, 40)]
    blob = b"".join(ber.encode_varbind(o) for o in oids)
    msg = ber.encode_get(1, b"s3cret", 0x7FFFFFF0, blob)  # long-form lengths, big request-id
    proto = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    decoded, rest = decoder.decode(msg, asn1Spec=proto.Message())
    assert rest == b""
    assert str(proto.apiMessage.get_community(decoded)) == "s3cret"
    pdu = proto.apiMessage.get_pdu(decoded)
    assert pdu.tagSet == rfc1905.GetRequestPDU.tagSet
    assert int(proto.apiPDU.get_request_id(pdu)) == 0x7FFFFFF0
    assert [str(n) for n, _ in proto.apiPDU.get_varbinds(pdu)] == oids


def test_response_values_decode_like_pysnmp() -> None:
    varbinds: list[tuple[str, object]] = [
        ("1.3.6.1.2.1.1.3.0", rfc1902.TimeTicks(123456)),
        ("1.3.6.1.2.1.2.2.1.10.1", rfc1902.Counter32(4294967295)),
        ("1.3.6.1.2.1.31.1.1.1.6.1", rfc1902.Counter64(2**64 - 1)),
        ("1.3.6.1.4.1.1.1", rfc1902.Integer32(-2147483648)),
        ("1.3.6.1.4.1.1.2", rfc1902.Gauge32(230)),
        ("1.3.6.1.4.1.1.3", rfc1902.OctetString(" 24.5 ")),
        ("1.3.6.1.4.1.1.4", rfc1902.OctetString("sim-pdu")),
        ("1.3.6.1.4.1.1.5", rfc1905.noSuchInstance),
        ("1.3.6.1.4.1.1.6", rfc1902.IpAddress("10.0.0.1")),
    ] + [(f"1.3.6.1.4.1.2.{i}", rfc1902.Integer32(i)) for i in range(30)]
    resp = ber.decode_response(reference_response(1, 42, varbinds))
    assert (resp.request_id, resp.error_status, resp.error_index) == (42, 0, 0)
    assert resp.oids == [ber.encode_oid(o) for o, _ in varbinds]
    numbers = [ber.number_of(t, v) for t, v in zip(resp.tags, resp.values, strict=True)]
    assert numbers[:9] == [
        123456.0,
        4294967295.0,
        float(2**64 - 1),
        -2147483648.0,
        230.0,
        24.5,
        None,
        None,
        None,
    ]
    assert resp.tags[7] in ber.MISSING_TAGS
    assert numbers[9:] == [float(i) for i in range(30)]


@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_integer_round_trip(signed: int, unsigned: int, big: int) -> None:
    data = reference_response(
        1,
        7,
        [
            ("1.3.6.1.1", rfc1902.Integer32(signed)),
            ("1.3.6.1.2", rfc1902.Gauge32(unsigned)),
            ("1.3.6.1.3", rfc1902.Counter64(big)),
        ],
    )
    resp = ber.decode_response(data)
    got = [ber.number_of(t, v) for t, v in zip(resp.tags, resp.values, strict=True)]
    assert got == [float(signed), float(unsigned), float(big)]


def test_error_status_and_v1() -> None:
    proto = api.PROTOCOL_MODULES[api.SNMP_VERSION_1]
    pdu = proto.GetResponsePDU()
    proto.apiPDU.set_defaults(pdu)
    proto.apiPDU.set_request_id(pdu, 9)
    proto.apiPDU.set_error_status(pdu, 2)
    proto.apiPDU.set_error_index(pdu, 3)
    proto.apiPDU.set_varbinds(pdu, [("1.3.6.1.1.0", rfc1902.Integer32(1))])
    msg = proto.Message()
    proto.apiMessage.set_defaults(msg)
    proto.apiMessage.set_community(msg, "public")
    proto.apiMessage.set_pdu(msg, pdu)
    resp = ber.decode_response(bytes(encoder.encode(msg)))
    assert (resp.request_id, resp.error_status, resp.error_index) == (9, 2, 3)


def test_malformed_responses_raise_ber_error() -> None:
    good = reference_response(1, 5, [("1.3.6.1.2.1.1.3.0", rfc1902.TimeTicks(1))])
    for bad in (good[:-3], good[:10], b"", b"\x04\x00", good.replace(b"\xa2", b"\xa0", 1)):
        with pytest.raises(ber.BerError):
            ber.decode_response(bad)
