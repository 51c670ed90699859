"""Just enough BER to GET over SNMP v1/v2c fast, and a shared UDP endpoint to send it on.

Why: pysnmp encodes and decodes through pyasn1's generic codec, about 250 µs of CPU per
value, which caps a gateway at a few thousand SNMP points per CPU-second. A v1/v2c GET is a
fixed shape (message → PDU → varbinds), so requests are assembled from varbinds encoded once
at prepare time and responses are walked in one pass over the bytes. SET, v3 (USM security)
and walks keep using pysnmp: they are rare, or need its security machinery.

Message layout (RFC 1157 / RFC 3416), all definite lengths:
``30 len { 02 version, 04 community, A0|A2 len { 02 request-id, 02 error-status,
02 error-index, 30 len { 30 len { 06 oid, value } ... } } }``
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GET",
    "TAG_COUNTER32",
    "TAG_COUNTER64",
    "TAG_GAUGE32",
    "TAG_INTEGER",
    "TAG_OCTET_STRING",
    "TAG_TIMETICKS",
    "BerError",
    "FastUdp",
    "Response",
    "decode_response",
    "encode_get",
    "encode_oid",
    "encode_varbind",
    "number_of",
]

GET = 0xA0
RESPONSE = 0xA2
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_IPADDRESS = 0x40
TAG_COUNTER32 = 0x41
TAG_GAUGE32 = 0x42
TAG_TIMETICKS = 0x43
TAG_OPAQUE = 0x44
TAG_COUNTER64 = 0x46
TAG_UINTEGER32 = 0x47
NO_SUCH_OBJECT = 0x80
NO_SUCH_INSTANCE = 0x81
END_OF_MIB_VIEW = 0x82
MISSING_TAGS = frozenset((NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW))
_UNSIGNED_TAGS = frozenset(
    (TAG_COUNTER32, TAG_GAUGE32, TAG_TIMETICKS, TAG_COUNTER64, TAG_UINTEGER32)
)


class BerError(ValueError):
    """The bytes are not a well-formed SNMP response."""


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def _integer(value: int) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)  # room for the sign bit
    return _tlv(TAG_INTEGER, value.to_bytes(size, "big", signed=True))


def encode_oid(oid: str) -> bytes:
    """``1.3.6.1.2.1.1.3.0`` → the OID's TLV."""
    arcs = [int(a) for a in oid.strip(".").split(".")]
    if len(arcs) < 2:
        raise ValueError(f"OID needs at least two arcs: {oid}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return _tlv(TAG_OID, bytes(out))


def encode_varbind(oid: str) -> bytes:
    """A request varbind ``{oid, NULL}``, encoded once per point at prepare time."""
    return _tlv(0x30, encode_oid(oid) + b"\x05\x00")


def encode_get(version: int, community: bytes, request_id: int, varbinds: bytes) -> bytes:
    """A whole GET message; ``varbinds`` is the concatenation of ``encode_varbind`` results."""
    pdu = _integer(request_id) + b"\x02\x01\x00\x02\x01\x00" + _tlv(0x30, varbinds)
    return _tlv(0x30, _integer(version) + _tlv(TAG_OCTET_STRING, community) + _tlv(GET, pdu))


@dataclass(slots=True)
class Response:
    request_id: int
    error_status: int
    error_index: int
    oids: list[bytes] = field(default_factory=list)  # OID TLVs, comparable to encode_oid()
    tags: list[int] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)


def decode_response(data: bytes) -> Response:
    """Walk a v1/v2c Response message. Raises ``BerError`` on anything malformed."""
    try:
        return _decode(data)
    except (IndexError, ValueError) as exc:
        raise BerError(str(exc) or "truncated message") from None


def _decode(data: bytes) -> Response:
    def header(i: int, expect: int | None) -> tuple[int, int, int]:
        tag = data[i]
        if expect is not None and tag != expect:
            raise BerError(f"expected tag {expect:#x} at {i}, found {tag:#x}")
        b = data[i + 1]
        if b < 0x80:
            return tag, b, i + 2
        n = b & 0x7F
        return tag, int.from_bytes(data[i + 2 : i + 2 + n], "big"), i + 2 + n

    _, _, i = header(0, 0x30)
    _, n, i = header(i, TAG_INTEGER)  # version
    i += n
    _, n, i = header(i, TAG_OCTET_STRING)  # community
    i += n
    _, _, i = header(i, RESPONSE)
    _, n, i = header(i, TAG_INTEGER)
    request_id = int.from_bytes(data[i : i + n], "big", signed=True)
    i += n
    _, n, i = header(i, TAG_INTEGER)
    status = int.from_bytes(data[i : i + n], "big", signed=True)
    i += n
    _, n, i = header(i, TAG_INTEGER)
    index = int.from_bytes(data[i : i + n], "big", signed=True)
    i += n
    _, n, i = header(i, 0x30)
    end = i + n
    if end > len(data):
        raise BerError("varbind list longer than the message")
    resp = Response(request_id, status, index)
    oids, tags, values = resp.oids, resp.tags, resp.values
    while i < end:
        _, n, i = header(i, 0x30)
        start = i
        _, n, i = header(i, TAG_OID)
        oids.append(data[start : i + n])
        i += n
        tag, n, i = header(i, None)
        tags.append(tag)
        values.append(data[i : i + n])
        i += n
    return resp


def number_of(tag: int, raw: bytes) -> float | None:
    """A varbind value as a number; None for missing values, text and other types."""
    if tag == TAG_INTEGER:
        return float(int.from_bytes(raw, "big", signed=True))
    if tag in _UNSIGNED_TAGS:
        return float(int.from_bytes(raw, "big"))
    if tag == TAG_OCTET_STRING:
        try:
            return float(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return None
    return None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: FastUdp) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: no way to tell which request; timeouts cover it.
        pass


class FastUdp:
    """One UDP socket for every v1/v2c device of a runtime; responses are matched to their
    request by request-id and source address."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        self._pending: dict[int, tuple[tuple[str, int], asyncio.Future[Response]]] = {}
        self._ids = itertools.count(1)
        self.stray = 0  # datagrams that matched no request (late answers, foreign packets)

    def next_id(self) -> int:
        return next(self._ids) & 0x7FFFFFFF

    async def _open(self) -> asyncio.DatagramTransport:
        if self._transport is not None:
            return self._transport
        async with self._opening:
            if self._transport is None:
                loop = asyncio.get_running_loop()
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), local_addr=("0.0.0.0", 0)
                )
                self._transport = transport
        return self._transport

    async def request(
        self, addr: tuple[str, int], request_id: int, message: bytes, wait: float, retries: int
    ) -> Response | None:
        """Send, wait ``wait`` seconds for the answer, resend ``retries`` times; None when no
        answer came."""
        transport = await self._open()
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (addr, future)
        try:
            for _ in range(retries + 1):
                transport.sendto(message, addr)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), wait)
                except TimeoutError:
                    continue
            return None
        finally:
            self._pending.pop(request_id, None)
            if not future.done():
                future.cancel()

    def _received(self, data: bytes, addr: Any) -> None:
        try:
            response = decode_response(data)
        except BerError:
            self.stray += 1
            return
        entry = self._pending.get(response.request_id)
        if entry is None or (entry[0][0], entry[0][1]) != (addr[0], addr[1]):
            self.stray += 1
            return
        if not entry[1].done():
            entry[1].set_result(response)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for _, future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
