"""BACnet/IP driver (bacpypes3): ReadPropertyMultiple in batches, with fallbacks, and writes.

One bacpypes3 ``Application`` per local address, shared by every device polled through it
(kept in ``DriverContext.resources``): two applications on one UDP port both start, and the
kernel then silently delivers each answer to only one of them.

Reads: the group's distinct (object, property, index) references are read with
ReadPropertyMultiple, ``max_per_request`` references per request, one request at a time (small
controllers handle one transaction at a time). When the device

- rejects RPM as an unrecognized service, the driver switches that device to ReadProperty;
- answers that the request/response is too big (segmentation-not-supported, buffer-overflow,
  apdu-too-long), it halves the batch size, down to 1, then switches to ReadProperty;
- answers the whole RPM with an Error (older devices do this when one object is unknown), that
  batch is read with ReadProperty to find the failing point; the device keeps RPM.

Each decision is remembered for the device and logged once. A property that fails inside an
RPM answer spoils only its point (unknown object/property/index → ``bad:config_error``,
anything else → ``bad:device_error``). A device that does not answer fails the rest of the
group at once with ``bad:comm_failure`` instead of waiting for a timeout per request.

Values: reals and unsigned/signed integers as they are, enumerations (binary PV, states) and
booleans as numbers; a null (e.g. a relinquished priority-array slot) is NaN with quality
``uncertain``. Scale/offset are applied, values outside min/max become
``uncertain:out_of_range``. Each point's timestamp is when its response arrived.

Timeouts: bacpypes3 takes the APDU timeout and retry count from the local device object, so
devices sharing a local application share them: the largest ``timeout`` and ``retries`` among
those devices are used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import struct
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from bacpypes3.apdu import (
    AbortPDU,
    ComplexAckPDU,
    ConfirmedRequestPDU,
    ErrorPDU,
    ErrorRejectAbortNack,
    ReadAccessSpecification,
    ReadPropertyMultipleRequest,
    ReadPropertyRequest,
    RejectPDU,
)
from bacpypes3.app import Application
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.basetypes import ErrorClass, ErrorCode, ErrorType, PropertyReference
from bacpypes3.comm import ServiceAccessPoint
from bacpypes3.constructeddata import SequenceOf
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import (
    Null,
    ObjectIdentifier,
    ObjectType,
    PropertyIdentifier,
)
from pydantic import Field, field_validator, model_validator

from outpost.drivers.base import (
    DeviceConfig,
    Driver,
    DriverContext,
    PointGroup,
    PollResult,
    WriteError,
    bad_result,
)
from outpost.point_schedules.model import BacnetAddress, Point
from outpost.point_schedules.quality import Quality

log = structlog.get_logger(__name__)

BACNET_PORT = 47808

__all__ = [
    "BACNET_PORT",
    "BacnetDeviceConfig",
    "BacnetDriver",
    "BacnetLocalApp",
    "bacnet_error_text",
    "local_app",
    "parse_host_port",
    "to_number",
]

# Error codes that mean the schedule names something the device does not have.
_CONFIG_ERROR_CODES = frozenset(
    {
        "unknown-object",
        "unknown-property",
        "invalid-array-index",
        "property-is-not-an-array",
        "property-is-not-a-list",
    }
)
_TOO_BIG_REASONS = frozenset(
    {"segmentation-not-supported", "buffer-overflow", "apdu-too-long", "window-size-out-of-range"}
)
_NO_RESPONSE_REASONS = frozenset({"no-response", "tsm-timeout", "server-timeout"})
_BINARY_TYPES = frozenset({"binary-input", "binary-output", "binary-value"})
_MULTISTATE_TYPES = frozenset({"multi-state-input", "multi-state-output", "multi-state-value"})
_NAN = float("nan")


# ----------------------------------------------------------------------------------- addresses


def parse_host_port(text: str, default_port: int = BACNET_PORT) -> tuple[str, int | None, int]:
    """``host[/prefix][:port]`` → (host, prefix or None, port). Raises ValueError."""
    s = text.strip()
    if not s:
        raise ValueError("address is empty")
    host, sep, port_text = s.rpartition(":")
    if not sep:
        host, port_text = s, ""
    host, slash, prefix_text = host.partition("/")
    if not host:
        raise ValueError(f"{text!r}: expected host[:port], e.g. 192.168.1.20:47808")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port must be a number 0..65535, got {port_text!r}")
        port = int(port_text)
    prefix: int | None = None
    if slash:
        if not prefix_text.isdigit() or not 0 <= int(prefix_text) <= 32:
            raise ValueError(f"{text!r}: network prefix must be /0../32, got /{prefix_text}")
        prefix = int(prefix_text)
    return host, prefix, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -------------------------------------------------------------------------------------- config


class BacnetDeviceConfig(DeviceConfig):
    """``[devices.<id>]`` with ``protocol = "bacnet"``."""

    protocol: Literal["bacnet"] = "bacnet"
    address: str = Field(description="the device's BACnet/IP address, host[:port]")
    device_instance: int = Field(ge=0, le=4194302)
    local_address: str = Field(
        "0.0.0.0:47808",
        description="the agent's own BACnet/IP endpoint, host[/prefix][:port]; the prefix "
        "sets the broadcast address for Who-Is",
    )
    local_device_instance: int = Field(599999, ge=0, le=4194302)
    max_per_request: int = Field(20, ge=1, le=500, description="references per RPM request")
    write_priority: int = Field(16, ge=1, le=16, description="default BACnet write priority")

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        host, prefix, port = parse_host_port(v)
        if prefix is not None:
            raise ValueError(f"{v!r}: a device address has no /prefix; write host[:port]")
        if port == 0:
            raise ValueError(f"{v!r}: the device port must not be 0")
        return f"{host}:{port}"

    @field_validator("local_address")
    @classmethod
    def _check_local(cls, v: str) -> str:
        host, prefix, port = parse_host_port(v)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{v!r}: the local address must be an IPv4 address") from None
        return f"{host}{'' if prefix is None else f'/{prefix}'}:{port}"

    @model_validator(mode="after")
    def _distinct_endpoints(self) -> BacnetDeviceConfig:
        dev_host, _, dev_port = parse_host_port(self.address)
        loc_host, _, loc_port = parse_host_port(self.local_address)
        # bacpypes3 treats any loopback destination on its own port as itself.
        if dev_port == loc_port and (
            dev_host == loc_host or (_is_loopback(dev_host) and _is_loopback(loc_host))
        ):
            raise ValueError(
                f"address {self.address} and local_address {self.local_address} use the same "
                "port on this machine; give the agent another local port"
            )
        return self


# ------------------------------------------------------------------------------ value helpers


def to_number(value: Any) -> float | None:
    """A BACnet application value as a float; None for null / non-numeric values."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Null) or value is None:
        return None
    choice = getattr(value, "_choice", None)  # PriorityValue and other CHOICEs
    if choice is not None:
        return to_number(getattr(value, choice, None))
    return None


def bacnet_error_text(err: BaseException | ErrorType) -> str:
    """``unknown-object``, ``object: unknown-object``, ``unrecognized-service``…"""
    if isinstance(err, ErrorPDU | ErrorType):
        return f"{err.errorClass}: {err.errorCode}"
    if isinstance(err, RejectPDU | AbortPDU):
        kind = "reject" if isinstance(err, RejectPDU) else "abort"
        return f"{kind}: {err.apduAbortRejectReason}"
    return f"{type(err).__name__}: {err}"


def _error_quality(code: str) -> Quality:
    return Quality.BAD_CONFIG_ERROR if code in _CONFIG_ERROR_CODES else Quality.BAD_DEVICE_ERROR


# ------------------------------------------------------------------------- raw RPM fast path
#
# bacpypes3 decodes an RPM answer into generic constructed objects, which costs a few hundred
# microseconds per value. The poll path only needs numbers, so it sends a pre-encoded request
# and decodes the ACK's tags itself: ~2 µs per value. Anything unusual in an answer (a
# constructed value, a string) is reported per value, never guessed.

_NON_NUMERIC = object()  # a value that is not a single number/boolean/enumeration/null
_MISSING = object()


@dataclass(frozen=True, slots=True)
class RawError:
    """A propertyAccessError inside an RPM answer."""

    error_class: str
    error_code: str


def _tag(data: bytes, i: int) -> tuple[int, bool, int, int, int]:
    """(tag number, is context, lvt, content start, content length) of the tag at ``i``;
    for opening/closing tags the length is 0 and lvt is 6/7."""
    b = data[i]
    num, ctx, lvt = b >> 4, bool(b & 0x08), b & 0x07
    i += 1
    if num == 15:
        num = data[i]
        i += 1
    if ctx and lvt in (6, 7):
        return num, ctx, lvt, i, 0
    if not ctx and num == 1:  # application Boolean: the value is in the LVT
        return num, ctx, lvt, i, 0
    length = lvt
    if lvt == 5:
        length = data[i]
        i += 1
        if length == 254:
            length = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif length == 255:
            length = int.from_bytes(data[i : i + 4], "big")
            i += 4
    return num, ctx, lvt, i, length


def _app_value(num: int, lvt: int, content: bytes) -> Any:
    if num == 4:
        return struct.unpack(">f", content)[0]
    if num in (2, 9):
        return float(int.from_bytes(content, "big"))
    if num == 1:
        return float(lvt)
    if num == 0:
        return None
    if num == 3:
        return float(int.from_bytes(content, "big", signed=True))
    if num == 5:
        return struct.unpack(">d", content)[0]
    return _NON_NUMERIC


def decode_rpm_ack(data: bytes) -> dict[tuple[int, int, int, int | None], Any]:
    """The values of a ReadPropertyMultiple-ACK service payload, keyed by
    (object type, instance, property, array index): a float, None (null), ``RawError`` or
    ``_NON_NUMERIC``. Raises ValueError/IndexError/struct.error on malformed data."""
    out: dict[tuple[int, int, int, int | None], Any] = {}
    i, end = 0, len(data)
    while i < end:
        num, ctx, _, start, length = _tag(data, i)
        if not (ctx and num == 0 and length == 4):
            raise ValueError("object identifier expected")
        oid = int.from_bytes(data[start : start + 4], "big")
        otype, inst = oid >> 22, oid & 0x3FFFFF
        num, ctx, lvt, i, _ = _tag(data, start + 4)
        if not (ctx and num == 1 and lvt == 6):
            raise ValueError("list of results expected")
        while True:
            num, ctx, lvt, start, length = _tag(data, i)
            if ctx and num == 1 and lvt == 7:
                i = start
                break
            if not (ctx and num == 2):
                raise ValueError("property identifier expected")
            prop = int.from_bytes(data[start : start + length], "big")
            i = start + length
            index: int | None = None
            num, ctx, lvt, start, length = _tag(data, i)
            if ctx and num == 3:
                index = int.from_bytes(data[start : start + length], "big")
                i = start + length
                num, ctx, lvt, start, length = _tag(data, i)
            if not ctx or lvt != 6 or num not in (4, 5):
                raise ValueError("property value or access error expected")
            i = start
            if num == 5:
                _, _, _, s1, l1 = _tag(data, i)
                _, _, _, s2, l2 = _tag(data, s1 + l1)
                err_class = int.from_bytes(data[s1 : s1 + l1], "big")
                err_code = int.from_bytes(data[s2 : s2 + l2], "big")
                i = s2 + l2
                out[(otype, inst, prop, index)] = RawError(
                    _enum_name(ErrorClass, err_class), _enum_name(ErrorCode, err_code)
                )
            else:
                value, i = _value_section(data, i, 4)
                out[(otype, inst, prop, index)] = value
            num, ctx, lvt, i, _ = _tag(data, i)  # the closing [4] or [5]
    return out


def _value_section(data: bytes, i: int, closing: int) -> tuple[Any, int]:
    """The value between an opening tag and its closing context tag ``closing`` (``i`` just
    after the opening tag): a number/None when it is one primitive, else ``_NON_NUMERIC``.
    Returns the value and the position of the closing tag."""
    value: Any = _NON_NUMERIC
    count, depth = 0, 0
    while True:
        num, ctx, lvt, start, length = _tag(data, i)
        if ctx and lvt == 7 and depth == 0 and num == closing:
            break
        if ctx and lvt == 6:
            depth += 1
        elif ctx and lvt == 7:
            depth -= 1
        count += 1
        if count == 1 and not ctx:
            value = _app_value(num, lvt, data[start : start + length])
        i = start + length
    return (value if count == 1 else _NON_NUMERIC), i


def decode_rp_ack(data: bytes) -> Any:
    """The value of a ReadProperty-ACK service payload: a float, None (null) or
    ``_NON_NUMERIC``. Raises ValueError/IndexError/struct.error on malformed data."""
    num, ctx, _, start, length = _tag(data, 0)
    if not (ctx and num == 0 and length == 4):
        raise ValueError("object identifier expected")
    num, ctx, _, start, length = _tag(data, start + length)
    if not (ctx and num == 1):
        raise ValueError("property identifier expected")
    num, ctx, lvt, start, length = _tag(data, start + length)
    if ctx and num == 2:
        num, ctx, lvt, start, length = _tag(data, start + length)
    if not (ctx and num == 3 and lvt == 6):
        raise ValueError("property value expected")
    value, i = _value_section(data, start, 3)
    if i + 1 != len(data):
        raise ValueError("trailing data after the property value")
    return value


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum(value))
    except ValueError:
        return str(value)


def encode_rpm_request(
    refs: list[tuple[ObjectIdentifier, PropertyReference]],
) -> ConfirmedRequestPDU:
    """A ReadPropertyMultiple request, encoded once (consecutive refs of one object share a
    read access specification); ``send_raw`` copies it for every send."""
    specs: list[ReadAccessSpecification] = []
    for objid, pref in refs:
        if specs and specs[-1].objectIdentifier == objid:
            specs[-1].listOfPropertyReferences.append(pref)
        else:
            specs.append(
                ReadAccessSpecification(objectIdentifier=objid, listOfPropertyReferences=[pref])
            )
    request = ReadPropertyMultipleRequest(
        listOfReadAccessSpecs=SequenceOf(ReadAccessSpecification)(specs)
    )
    return request.encode()


# --------------------------------------------------------------------------- local application


class _LocalApplication(Application):
    """Application that hands incoming I-Am requests to listeners (discovery) and can pass an
    answer up undecoded (``send_raw``)."""

    iam_listeners: list[Any]
    raw_invokes: set[tuple[Any, int]]

    async def do_IAmRequest(self, apdu: Any) -> None:
        await super().do_IAmRequest(apdu)
        for listener in list(getattr(self, "iam_listeners", ())):
            listener(apdu)

    def enable_raw(self) -> None:
        self.raw_invokes = set()
        asap = self.asap
        raw = self.raw_invokes

        async def sap_response(apdu: Any) -> None:
            if (
                apdu.apduType == ComplexAckPDU.pduType
                and (apdu.pduSource, apdu.apduInvokeID) in raw
            ):
                await ServiceAccessPoint.sap_response(asap, apdu)
            else:
                await ApplicationServiceAccessPoint.sap_response(asap, apdu)

        asap.sap_response = sap_response  # type: ignore[method-assign]

    async def send_raw(self, peer: Address, template: ConfirmedRequestPDU) -> bytes:
        """Send a copy of a pre-encoded confirmed request (RPM or RP); return the ACK's
        service payload undecoded. Errors, rejects and aborts raise as usual
        (``ErrorRejectAbortNack``)."""
        request = ConfirmedRequestPDU()
        request.update(template)
        request.put_data(template.pduData)
        request.apduInvokeID = None
        request.pduDestination = peer
        future = self.request(request)
        key = (peer, request.apduInvokeID)
        self.raw_invokes.add(key)
        try:
            answer = await future
        finally:
            self.raw_invokes.discard(key)
        return bytes(answer.pduData)


class BacnetLocalApp:
    """The agent's BACnet/IP endpoint: one bacpypes3 application bound to ``local_address``."""

    def __init__(
        self,
        local_address: str,
        device_instance: int = 599999,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        name: str = "outpost",
    ) -> None:
        host, prefix, port = parse_host_port(local_address)
        self.local_address = f"{host}{'' if prefix is None else f'/{prefix}'}:{port}"
        self.device_instance = device_instance
        self.name = name
        self.users = 0
        self._timeout = timeout
        self._retries = retries
        self._app: _LocalApplication | None = None
        self._starting: asyncio.Future[_LocalApplication] | None = None

    @property
    def started(self) -> bool:
        return self._app is not None

    def tune(self, timeout: float, retries: int) -> None:
        """Raise the shared APDU timeout/retries to cover a device that needs more."""
        self._timeout = max(self._timeout, timeout)
        self._retries = max(self._retries, retries)
        if self._app is not None and self._app.device_object is not None:
            self._app.device_object.apduTimeout = int(self._timeout * 1000)
            self._app.device_object.numberOfApduRetries = self._retries

    async def app(self) -> _LocalApplication:
        if self._app is not None:
            return self._app
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_future()
            try:
                app = await self._start()
            except asyncio.CancelledError:
                self._starting.cancel()
                self._starting = None
                raise
            except BaseException as exc:
                self._starting.set_exception(exc)
                self._starting.exception()  # retrieved here: waiters re-raise it themselves
                self._starting = None
                raise
            self._app = app
            self._starting.set_result(app)
            self._starting = None
            return app
        return await asyncio.shield(self._starting)

    async def _start(self) -> _LocalApplication:
        objects = [
            DeviceObject(
                objectIdentifier=("device", self.device_instance),
                objectName=self.name,
                vendorIdentifier=999,
                vendorName="Outpost",
                modelName="outpost-agent",
                apduTimeout=int(self._timeout * 1000),
                numberOfApduRetries=self._retries,
                maxApduLengthAccepted=1476,
                segmentationSupported="segmented-both",
            ),
            NetworkPortObject(
                self.local_address,
                objectIdentifier=("network-port", 1),
                objectName="NetworkPort-1",
            ),
        ]
        app = _LocalApplication.from_object_list(objects)
        app.iam_listeners = []
        app.enable_raw()
        try:
            for link in app.link_layers.values():
                ready = getattr(getattr(link, "server", None), "_local_transport_ready", None)
                if ready is not None:
                    # bacpypes3 retries a failed bind forever in the background.
                    await asyncio.wait_for(ready.wait(), 5.0)
        except TimeoutError:
            app.close()
            raise OSError(
                f"cannot bind the BACnet/IP endpoint {self.local_address} (is the address "
                "configured on this machine?)"
            ) from None
        except BaseException:
            app.close()
            raise
        log.info("bacnet.local_app_started", local_address=self.local_address)
        return app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None
            log.info("bacnet.local_app_closed", local_address=self.local_address)


def local_app(context: DriverContext, config: BacnetDeviceConfig) -> BacnetLocalApp:
    """The shared local application for ``config.local_address`` (created on first use)."""
    host, _, port = parse_host_port(config.local_address)
    key = f"bacnet:{host}:{port}"
    shared = context.resources.get(key)
    if shared is None:
        shared = BacnetLocalApp(
            config.local_address,
            config.local_device_instance,
            timeout=config.timeout,
            retries=config.retries,
        )
        context.resources[key] = shared
    else:
        if shared.device_instance != config.local_device_instance:
            log.warning(
                "bacnet.local_instance_conflict",
                local_address=config.local_address,
                used=shared.device_instance,
                ignored=config.local_device_instance,
            )
        shared.tune(config.timeout, config.retries)
    return shared


# ----------------------------------------------------------------------------------- the plan


@dataclass(slots=True)
class _Ref:
    """One distinct (object, property, index) the group reads; ``positions`` share it."""

    objid: ObjectIdentifier
    prop: PropertyIdentifier
    index: int | None
    pref: PropertyReference
    key: tuple[int, int, int, int | None]
    positions: list[int]
    text: str
    rp_request: ConfirmedRequestPDU | None = None  # encoded on first ReadProperty


@dataclass(slots=True)
class _Plan:
    refs: list[_Ref]
    bad_config: list[int]  # positions whose address bacpypes3 cannot express
    scale: array
    offset: array
    lo: array
    hi: array
    identity: bool
    ranged: bool
    requests: dict[tuple[int, int], ConfirmedRequestPDU] = field(default_factory=dict)


class _DeviceDown(Exception):
    pass


@dataclass(slots=True)
class _DeviceState:
    use_rpm: bool = True
    batch: int = 20
    connected: bool = False
    down_logged: bool = False
    logged: set[tuple[str, str]] = field(default_factory=set)


# ---------------------------------------------------------------------------------- the driver


class BacnetDriver(Driver):
    config_model = BacnetDeviceConfig
    config: BacnetDeviceConfig

    def __init__(
        self, device_id: str, config: BacnetDeviceConfig, context: DriverContext | None = None
    ) -> None:
        super().__init__(device_id, config, context)
        self._local = local_app(self.context, config)
        self._local.users += 1
        self._closed = False
        self._peer: Address | None = None
        self._state = _DeviceState(batch=config.max_per_request)

    # -- state visible to the agent and tests

    @property
    def connected(self) -> bool:
        return self._state.connected

    @property
    def uses_rpm(self) -> bool:
        """False once the device has been found not to support ReadPropertyMultiple."""
        return self._state.use_rpm

    @property
    def batch_size(self) -> int:
        """References per RPM request currently used for this device."""
        return self._state.batch

    # -- planning

    def prepare(self, group: PointGroup) -> None:
        refs: dict[tuple[int, int, int, int | None], _Ref] = {}
        bad: list[int] = []
        n = len(group.points)
        scale, offset = array("d", [1.0]) * n, array("d", [0.0]) * n
        lo, hi = array("d", [-math.inf]) * n, array("d", [math.inf]) * n
        for pos, point in enumerate(group.points):
            addr = point.address
            if not isinstance(addr, BacnetAddress):
                log.error(
                    "bacnet.bad_address",
                    device=self.device_id,
                    point=point.point_id,
                    address=str(addr),
                )
                bad.append(pos)
                continue
            try:
                otype = ObjectType(
                    int(addr.object_type) if addr.object_type.isdigit() else addr.object_type
                )
                objid = ObjectIdentifier((otype, addr.instance))
                prop = PropertyIdentifier(
                    int(addr.property) if addr.property.isdigit() else addr.property
                )
            except (ValueError, TypeError, KeyError) as exc:
                log.error(
                    "bacnet.bad_address",
                    device=self.device_id,
                    point=point.point_id,
                    address=str(addr),
                    error=str(exc),
                )
                bad.append(pos)
                continue
            key = (int(otype), addr.instance, int(prop), addr.index)
            ref = refs.get(key)
            if ref is None:
                pref = PropertyReference(propertyIdentifier=prop)
                if addr.index is not None:
                    pref.propertyArrayIndex = addr.index
                ref = _Ref(objid, prop, addr.index, pref, key, [], str(addr))
                refs[key] = ref
            ref.positions.append(pos)
            scale[pos], offset[pos] = point.scale, point.offset
            if point.min is not None:
                lo[pos] = point.min
            if point.max is not None:
                hi[pos] = point.max
        group.plan = _Plan(
            refs=list(refs.values()),
            bad_config=bad,
            scale=scale,
            offset=offset,
            lo=lo,
            hi=hi,
            identity=all(s == 1.0 for s in scale) and all(o == 0.0 for o in offset),
            ranged=any(v != -math.inf for v in lo) or any(v != math.inf for v in hi),
        )

    # -- reading

    async def _peer_address(self) -> Address:
        if self._peer is None:
            host, _, port = parse_host_port(self.config.address)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, family=socket.AF_INET
                )
                host = str(infos[0][4][0])
            self._peer = Address(f"{host}:{port}")
        return self._peer

    async def read(self, group: PointGroup) -> PollResult:
        plan: _Plan = group.plan
        if plan is None:
            self.prepare(group)
            plan = group.plan
        n = len(group.points)
        try:
            app = await self._local.app()
            peer = await self._peer_address()
        except OSError as exc:
            self._note_down(str(exc))
            return bad_result(n, Quality.BAD_COMM_FAILURE, time.time())
        result = PollResult(
            array("d", [0.0]) * n, array("d", [_NAN]) * n, array("B", [Quality.BAD]) * n
        )
        now = time.time()
        for pos in plan.bad_config:
            result.ts[pos], result.quality[pos] = now, Quality.BAD_CONFIG_ERROR
        refs = plan.refs
        i, total = 0, len(refs)
        try:
            while i < total:
                if self._state.use_rpm:
                    batch = refs[i : i + self._state.batch]
                    if await self._read_rpm(app, peer, plan, i, batch, result):
                        i += len(batch)
                else:
                    await self._read_rp(app, peer, refs[i], result)
                    i += 1
        except _DeviceDown as exc:
            now = time.time()
            for ref in refs[i:]:
                for pos in ref.positions:
                    result.ts[pos], result.quality[pos] = now, Quality.BAD_COMM_FAILURE
            self._note_down(str(exc))
        else:
            if total:
                self._note_up()
        self._finish(plan, result)
        return result

    def _finish(self, plan: _Plan, result: PollResult) -> None:
        value, quality = result.value, result.quality
        if not plan.identity:
            scale, offset = plan.scale, plan.offset
            for pos in range(len(value)):
                value[pos] = value[pos] * scale[pos] + offset[pos]
        if plan.ranged:
            lo, hi = plan.lo, plan.hi
            for pos in range(len(value)):
                v = value[pos]
                if quality[pos] == Quality.GOOD and not lo[pos] <= v <= hi[pos]:
                    quality[pos] = Quality.UNCERTAIN_OUT_OF_RANGE

    def _store_error(self, ref: _Ref, exc: ErrorPDU, ts: float, result: PollResult) -> None:
        code = str(exc.errorCode)
        q = _error_quality(code)
        self._log_once(ref.text, code, "bacnet.property_error", error=bacnet_error_text(exc))
        for pos in ref.positions:
            result.ts[pos], result.value[pos], result.quality[pos] = ts, _NAN, q

    async def _read_rpm(
        self,
        app: _LocalApplication,
        peer: Address,
        plan: _Plan,
        start: int,
        batch: list[_Ref],
        result: PollResult,
    ) -> bool:
        """One RPM request. True when the batch is done; False when the plan changed and the
        same references must be read again (smaller batch, or ReadProperty)."""
        key = (start, len(batch))
        template = plan.requests.get(key)
        if template is None:
            template = encode_rpm_request([(ref.objid, ref.pref) for ref in batch])
            plan.requests[key] = template
        try:
            payload = await app.send_raw(peer, template)
        except ErrorRejectAbortNack as exc:
            return await self._rpm_failed(app, peer, batch, result, exc)
        ts = time.time()
        try:
            answers = decode_rpm_ack(payload)
        except (ValueError, IndexError, struct.error) as exc:
            # Not an answer we can take apart: read these references one by one, so only
            # the ones bacpypes3 cannot decode either fail.
            self._log_once("rpm", "decode", "bacnet.rpm_decode_failed", error=str(exc))
            for ref in batch:
                await self._read_rp(app, peer, ref, result)
            return True
        values, quality, stamps = result.value, result.quality, result.ts
        for ref in batch:
            v = answers.get(ref.key, _MISSING)
            if v.__class__ is float:
                for pos in ref.positions:
                    stamps[pos], values[pos], quality[pos] = ts, v, Quality.GOOD
                continue
            if v is None:
                q = Quality.UNCERTAIN
            elif isinstance(v, RawError):
                q = _error_quality(v.error_code)
                self._log_once(
                    ref.text,
                    v.error_code,
                    "bacnet.property_error",
                    error=f"{v.error_class}: {v.error_code}",
                )
            elif v is _MISSING:
                q = Quality.BAD_DEVICE_ERROR
                self._log_once(ref.text, "missing", "bacnet.rpm_result_missing")
            else:
                q = Quality.BAD_CONFIG_ERROR
                self._log_once(ref.text, "not-numeric", "bacnet.value_not_numeric")
            for pos in ref.positions:
                stamps[pos], values[pos], quality[pos] = ts, _NAN, q
        return True

    async def _rpm_failed(
        self, app: Application, peer: Address, batch: list[_Ref], result: PollResult, exc: Any
    ) -> bool:
        state = self._state
        reason = str(getattr(exc, "apduAbortRejectReason", "") or "")
        if isinstance(exc, AbortPDU | RejectPDU) and reason in _NO_RESPONSE_REASONS:
            raise _DeviceDown(reason)
        if isinstance(exc, RejectPDU) and reason == "unrecognized-service":
            state.use_rpm = False
            log.warning(
                "bacnet.rpm_unsupported",
                device=self.device_id,
                detail="device rejects ReadPropertyMultiple; using ReadProperty from now on",
            )
            return False
        if reason in _TOO_BIG_REASONS:
            if state.batch > 1:
                state.batch = max(1, min(state.batch, len(batch)) // 2)
                log.warning(
                    "bacnet.rpm_batch_reduced",
                    device=self.device_id,
                    reason=reason,
                    batch=state.batch,
                )
            else:
                state.use_rpm = False
                log.warning(
                    "bacnet.rpm_unsupported",
                    device=self.device_id,
                    reason=reason,
                    detail="even single-reference RPM fails; using ReadProperty from now on",
                )
            return False
        # An Error (or an unexpected reject/abort) for the whole request: find the culprit.
        self._log_once(
            "rpm", bacnet_error_text(exc), "bacnet.rpm_error_split", error=bacnet_error_text(exc)
        )
        for ref in batch:
            await self._read_rp(app, peer, ref, result)
        return True

    async def _read_rp(
        self, app: _LocalApplication, peer: Address, ref: _Ref, result: PollResult
    ) -> None:
        if ref.rp_request is None:
            request = ReadPropertyRequest(objectIdentifier=ref.objid, propertyIdentifier=ref.prop)
            if ref.index is not None:
                request.propertyArrayIndex = ref.index
            ref.rp_request = request.encode()
        try:
            payload = await app.send_raw(peer, ref.rp_request)
        except ErrorRejectAbortNack as exc:
            ts = time.time()
            if isinstance(exc, ErrorPDU):
                self._store_error(ref, exc, ts, result)
                return
            reason = str(getattr(exc, "apduAbortRejectReason", "") or "")
            if reason in _NO_RESPONSE_REASONS:
                raise _DeviceDown(reason) from None
            self._log_once(ref.text, reason, "bacnet.read_failed", error=bacnet_error_text(exc))
            for pos in ref.positions:
                result.ts[pos], result.quality[pos] = ts, Quality.BAD_DEVICE_ERROR
            return
        ts = time.time()
        try:
            value = decode_rp_ack(payload)
        except (ValueError, IndexError, struct.error) as exc:
            self._log_once(ref.text, "decode", "bacnet.decode_failed", error=str(exc))
            value = _NON_NUMERIC
        if value.__class__ is float:
            q, v = Quality.GOOD, value
        elif value is None:
            q, v = Quality.UNCERTAIN, _NAN
        else:
            q, v = Quality.BAD_CONFIG_ERROR, _NAN
            self._log_once(ref.text, "not-numeric", "bacnet.value_not_numeric")
        for pos in ref.positions:
            result.ts[pos], result.value[pos], result.quality[pos] = ts, v, q

    def _note_down(self, reason: str) -> None:
        state = self._state
        if state.connected or not state.down_logged:
            log.warning(
                "bacnet.device_down",
                device=self.device_id,
                address=self.config.address,
                reason=reason,
            )
            state.down_logged = True
        state.connected = False

    def _note_up(self) -> None:
        state = self._state
        if not state.connected:
            if state.down_logged:
                log.info("bacnet.device_recovered", device=self.device_id)
            state.down_logged = False
        state.connected = True

    def _log_once(self, what: str, code: str, event: str, **kw: Any) -> None:
        key = (what, code)
        if key in self._state.logged:
            return
        self._state.logged.add(key)
        log.warning(event, device=self.device_id, ref=what, code=code, **kw)

    # -- writing

    def _target(self, point: Point) -> tuple[BacnetAddress, ObjectIdentifier, PropertyIdentifier]:
        addr = point.address
        if not isinstance(addr, BacnetAddress):
            raise WriteError(f"{point.point_id}: address {addr} is not a BACnet address")
        try:
            otype = ObjectType(
                int(addr.object_type) if addr.object_type.isdigit() else addr.object_type
            )
            prop = PropertyIdentifier(
                int(addr.property) if addr.property.isdigit() else addr.property
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise WriteError(f"{point.point_id}: address {addr} is not usable: {exc}") from None
        return addr, ObjectIdentifier((otype, addr.instance)), prop

    def _priority(self, priority: int | None) -> int:
        prio = self.config.write_priority if priority is None else priority
        if not isinstance(prio, int) or not 1 <= prio <= 16:
            raise WriteError(f"BACnet write priority must be 1..16, got {prio!r}")
        return prio

    async def _send_write(self, point: Point, value: Any, prio: int, what: str) -> None:
        addr, objid, prop = self._target(point)
        try:
            app = await self._local.app()
            peer = await self._peer_address()
            await app.write_property(peer, objid, prop, value, addr.index, prio)
        except ErrorRejectAbortNack as exc:
            reason = str(getattr(exc, "apduAbortRejectReason", "") or "")
            if reason in _NO_RESPONSE_REASONS:
                raise WriteError(
                    f"{self.device_id}: {what} {point.point_id} ({addr}): device "
                    f"{self.config.address} did not answer"
                ) from None
            raise WriteError(
                f"{self.device_id}: {what} {point.point_id} ({addr}) at priority {prio} refused "
                f"by the device: {bacnet_error_text(exc)}"
            ) from None
        except OSError as exc:
            raise WriteError(f"{self.device_id}: {what} {point.point_id}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise WriteError(
                f"{self.device_id}: {what} {point.point_id} ({addr}): value {value!r} does not "
                f"fit the property: {exc}"
            ) from None
        log.info(
            "bacnet.write",
            device=self.device_id,
            point=point.point_id,
            action=what,
            value=None if isinstance(value, Null) else value,
            priority=prio,
        )

    async def write(self, point: Point, value: float, priority: int | None = None) -> None:
        prio = self._priority(priority)
        addr = point.address
        raw = point.to_raw(float(value))
        wire: Any = raw
        otype = addr.object_type if isinstance(addr, BacnetAddress) else ""
        if isinstance(addr, BacnetAddress) and addr.property == "present-value":
            if otype in _BINARY_TYPES:
                if raw not in (0.0, 1.0):
                    raise WriteError(f"{point.point_id}: a binary object takes 0 or 1, got {value}")
                wire = int(raw)
            elif otype in _MULTISTATE_TYPES:
                if raw != int(raw) or raw < 1:
                    raise WriteError(
                        f"{point.point_id}: a multi-state object takes a state number 1, 2, …, "
                        f"got {value}"
                    )
                wire = int(raw)
        await self._send_write(point, wire, prio, "write")

    async def relinquish(self, point: Point, priority: int | None = None) -> None:
        """Write null at ``priority``: the command at that level is withdrawn."""
        await self._send_write(point, Null(()), self._priority(priority), "relinquish")

    async def read_back(self, point: Point) -> float:
        """Read the point's engineering value now (after a write). Raises WriteError."""
        addr, objid, prop = self._target(point)
        try:
            app = await self._local.app()
            peer = await self._peer_address()
            raw = await app.read_property(peer, objid, prop, addr.index)
        except ErrorRejectAbortNack as exc:
            raise WriteError(
                f"{self.device_id}: read back {point.point_id} ({addr}) failed: "
                f"{bacnet_error_text(exc)}"
            ) from None
        except OSError as exc:
            raise WriteError(f"{self.device_id}: read back {point.point_id}: {exc}") from None
        num = to_number(raw)
        if num is None:
            raise WriteError(
                f"{self.device_id}: read back {point.point_id} ({addr}): value {raw!r} is not a "
                "number"
            )
        return point.to_engineering(num)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._local.users -= 1
        if self._local.users <= 0:
            self._local.close()
            for key, res in list(self.context.resources.items()):
                if res is self._local:
                    del self.context.resources[key]
