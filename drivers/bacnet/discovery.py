"""BACnet/IP discovery for commissioning: Who-Is, object lists, names and units → skeleton rows.

``discover_bacnet`` sends Who-Is (to ``target`` when given: a device's address or a directed
broadcast such as ``192.168.1.255``; otherwise to the local broadcast of ``local_address``,
whose ``/prefix`` sets the network), then for every device that answers reads its name and
object list and, for each point-like object, its name, description, units and whether it has a
priority array. The result is one ``DiscoveredPoint`` per object, ready for
``outpost.point_schedules.skeleton.write_skeleton``.

Devices differ in what they can do, so reading follows the same rules as the driver:
ReadPropertyMultiple in batches, smaller batches when the device cannot segment its answer,
ReadProperty when it does not support RPM. An object list too large for an unsegmented answer
is read element by element (index 0 is its length).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from bacpypes3.apdu import AbortPDU, ErrorRejectAbortNack, RejectPDU, WhoIsRequest
from bacpypes3.basetypes import ErrorType, PropertyReference
from bacpypes3.pdu import Address, GlobalBroadcast
from bacpypes3.primitivedata import ObjectIdentifier, PropertyIdentifier

from outpost.drivers.bacnet.address import BACNET_PORT, parse_host_port
from outpost.drivers.bacnet.app import BacnetLocalApp
from outpost.drivers.bacnet.codec import bacnet_error_text
from outpost.point_schedules.skeleton import DiscoveredPoint

log = structlog.get_logger(__name__)

__all__ = [
    "POINT_OBJECT_TYPES",
    "DiscoveredDevice",
    "config_snippet",
    "discover_bacnet",
    "discover_bacnet_devices",
    "short_units",
]

Progress = Callable[[str], None]

#: Object types that carry a present value worth polling.
POINT_OBJECT_TYPES: tuple[str, ...] = (
    "analog-input",
    "analog-output",
    "analog-value",
    "binary-input",
    "binary-output",
    "binary-value",
    "multi-state-input",
    "multi-state-output",
    "multi-state-value",
    "integer-value",
    "positive-integer-value",
    "large-analog-value",
    "accumulator",
    "pulse-converter",
    "loop",
)
_OUTPUTS = frozenset({"analog-output", "binary-output", "multi-state-output"})
_COMMANDABLE_CANDIDATES = frozenset(
    {
        "analog-value",
        "binary-value",
        "multi-state-value",
        "integer-value",
        "positive-integer-value",
        "large-analog-value",
    }
)
_HAS_UNITS = frozenset(
    {
        "analog-input",
        "analog-output",
        "analog-value",
        "integer-value",
        "positive-integer-value",
        "large-analog-value",
        "accumulator",
        "pulse-converter",
    }
)
_BINARY = frozenset({"binary-input", "binary-output", "binary-value"})
_MULTISTATE = frozenset({"multi-state-input", "multi-state-output", "multi-state-value"})

_UNITS: dict[str, str] = {
    "no-units": "",
    "degrees-celsius": "degC",
    "degrees-fahrenheit": "degF",
    "degrees-kelvin": "K",
    "delta-degrees-fahrenheit": "delta degF",
    "delta-degrees-kelvin": "delta K",
    "percent": "%",
    "percent-relative-humidity": "%RH",
    "percent-open": "%",
    "percent-per-second": "%/s",
    "pascals": "Pa",
    "kilopascals": "kPa",
    "hectopascals": "hPa",
    "bars": "bar",
    "millibars": "mbar",
    "pounds-force-per-square-inch": "psi",
    "inches-of-water": "inH2O",
    "volts": "V",
    "millivolts": "mV",
    "kilovolts": "kV",
    "amperes": "A",
    "milliamperes": "mA",
    "watts": "W",
    "kilowatts": "kW",
    "megawatts": "MW",
    "kilowatt-hours": "kWh",
    "watt-hours": "Wh",
    "megawatt-hours": "MWh",
    "volt-amperes": "VA",
    "kilovolt-amperes": "kVA",
    "volt-amperes-reactive": "var",
    "kilovolt-amperes-reactive": "kvar",
    "power-factor": "PF",
    "hertz": "Hz",
    "kilohertz": "kHz",
    "revolutions-per-minute": "rpm",
    "seconds": "s",
    "minutes": "min",
    "hours": "h",
    "days": "d",
    "milliseconds": "ms",
    "liters-per-second": "l/s",
    "liters-per-minute": "l/min",
    "liters-per-hour": "l/h",
    "cubic-meters-per-second": "m3/s",
    "cubic-meters-per-hour": "m3/h",
    "cubic-feet-per-minute": "cfm",
    "us-gallons-per-minute": "gpm",
    "meters-per-second": "m/s",
    "feet-per-minute": "fpm",
    "parts-per-million": "ppm",
    "parts-per-billion": "ppb",
    "liters": "l",
    "cubic-meters": "m3",
    "kilograms": "kg",
    "kilograms-per-hour": "kg/h",
    "lux": "lx",
    "decibels": "dB",
    "kilojoules": "kJ",
    "megajoules": "MJ",
    "joules": "J",
    "btus": "BTU",
    "tons-refrigeration": "TR",
    "ohms": "ohm",
    "kilohms": "kohm",
    "meters": "m",
    "millimeters": "mm",
    "centimeters": "cm",
    "degrees-angular": "deg",
}


def short_units(name: str) -> str:
    """``degrees-celsius`` → ``degC``; unknown units keep the BACnet name."""
    return _UNITS.get(name, name)


@dataclass(frozen=True, slots=True)
class DiscoveredDevice:
    device_id: str  # suggested id for the agent config, from the device's name
    instance: int
    address: str  # host:port the device answered from
    name: str
    vendor: str = ""
    model: str = ""
    uses_rpm: bool = True
    points: tuple[DiscoveredPoint, ...] = ()
    error: str | None = None  # why the object list could not be read


# ------------------------------------------------------------------------------------- reading


class _Gone(Exception):
    pass


@dataclass
class _DeviceReader:
    """Reads lists of (object, property, index) from one device with the driver's fallbacks."""

    app: Any
    peer: Address
    batch: int = 16
    use_rpm: bool = True
    _refs: dict[tuple[Any, ...], PropertyReference] = field(default_factory=dict)

    async def read(self, refs: Sequence[tuple[ObjectIdentifier, str, int | None]]) -> list[Any]:
        """Values in order; an ``ErrorType``/exception in place of a value that failed."""
        out: list[Any] = [None] * len(refs)
        i = 0
        while i < len(refs):
            if not self.use_rpm:
                out[i] = await self._rp(*refs[i])
                i += 1
                continue
            chunk = refs[i : i + self.batch]
            got = await self._rpm(chunk)
            if got is None:
                continue
            out[i : i + len(chunk)] = got
            i += len(chunk)
        return out

    async def _rp(self, objid: ObjectIdentifier, prop: str, index: int | None) -> Any:
        try:
            return await self.app.read_property(self.peer, objid, prop, index)
        except ErrorRejectAbortNack as exc:
            if isinstance(exc, AbortPDU) and str(exc.apduAbortRejectReason) == "no-response":
                raise _Gone("no response") from None
            return exc
        except (ValueError, TypeError, AttributeError) as exc:
            return exc

    async def _rpm(
        self, chunk: Sequence[tuple[ObjectIdentifier, str, int | None]]
    ) -> list[Any] | None:
        args: list[Any] = []
        for objid, prop, index in chunk:
            pref = PropertyReference(propertyIdentifier=PropertyIdentifier(prop))
            if index is not None:
                pref.propertyArrayIndex = index
            if args and args[-2] == objid:
                args[-1].append(pref)
            else:
                args.extend((objid, [pref]))
        try:
            answers = await self.app.read_property_multiple(self.peer, args)
        except ErrorRejectAbortNack as exc:
            reason = str(getattr(exc, "apduAbortRejectReason", "") or "")
            if reason == "no-response":
                raise _Gone("no response") from None
            if isinstance(exc, RejectPDU) and reason == "unrecognized-service":
                self.use_rpm = False
            elif isinstance(exc, AbortPDU | RejectPDU) and self.batch > 1:
                self.batch = max(1, min(self.batch, len(chunk)) // 2)
            elif isinstance(exc, AbortPDU | RejectPDU):
                self.use_rpm = False
            else:  # an Error for the whole request: ask one by one
                return [await self._rp(*ref) for ref in chunk]
            return None
        except (ValueError, TypeError, AttributeError):
            return [await self._rp(*ref) for ref in chunk]
        by_key = {
            (int(objid[0]), objid[1], str(prop), index): value
            for objid, prop, index, value in answers
        }
        return [
            by_key.get((int(objid[0]), objid[1], prop, index), None) for objid, prop, index in chunk
        ]


def _ok(value: Any) -> bool:
    return value is not None and not isinstance(value, ErrorType | BaseException)


async def _object_list(reader: _DeviceReader, device: ObjectIdentifier) -> list[ObjectIdentifier]:
    whole = await reader._rp(device, "object-list", None)
    if _ok(whole):
        return list(whole)
    # Too big for an unsegmented answer (or refused whole): length first, then element-wise.
    length = await reader._rp(device, "object-list", 0)
    if not _ok(length):
        raise RuntimeError(f"cannot read the object list: {_why(whole)}")
    items = await reader.read([(device, "object-list", i) for i in range(1, int(length) + 1)])
    return [item for item in items if _ok(item)]


def _why(value: Any) -> str:
    if isinstance(value, ErrorType | ErrorRejectAbortNack):
        return bacnet_error_text(value)
    return str(value)


# ------------------------------------------------------------------------------------- naming

_ID_CHARS = re.compile(r"[^a-z0-9_.-]+")


def _device_id(name: str, instance: int, taken: set[str]) -> str:
    slug = _ID_CHARS.sub("-", name.strip().lower()).strip("-_.")
    if not slug or not slug[0].isalnum():
        slug = f"bacnet-{instance}"
    if slug in taken:
        slug = f"{slug}-{instance}"
    taken.add(slug)
    return slug


def _text(value: Any) -> str:
    return str(value).strip() if _ok(value) else ""


async def _describe_device(
    app: Any, instance: int, peer: Address, taken: set[str], progress: Progress
) -> DiscoveredDevice:
    reader = _DeviceReader(app, peer)
    dev_oid = ObjectIdentifier(("device", instance))
    address = str(peer)
    name, vendor, model = await reader.read(
        [
            (dev_oid, "object-name", None),
            (dev_oid, "vendor-name", None),
            (dev_oid, "model-name", None),
        ]
    )
    device_name = _text(name) or f"device-{instance}"
    device_id = _device_id(device_name, instance, taken)
    try:
        objects = await _object_list(reader, dev_oid)
    except RuntimeError as exc:
        progress(f"device {instance} ({device_name}) at {address}: {exc}")
        return DiscoveredDevice(
            device_id,
            instance,
            address,
            device_name,
            _text(vendor),
            _text(model),
            reader.use_rpm,
            (),
            str(exc),
        )
    wanted = [oid for oid in objects if str(oid[0]) in POINT_OBJECT_TYPES]
    progress(
        f"device {instance} ({device_name}) at {address}: {len(objects)} objects, "
        f"{len(wanted)} points; reading names and units"
    )
    refs: list[tuple[ObjectIdentifier, str, int | None]] = []
    for oid in wanted:
        otype = str(oid[0])
        refs += [(oid, "object-name", None), (oid, "description", None)]
        if otype in _HAS_UNITS:
            refs.append((oid, "units", None))
        if otype in _COMMANDABLE_CANDIDATES:
            refs.append((oid, "priority-array", 0))
        if otype in _MULTISTATE:
            refs.append((oid, "state-text", None))
        if otype in _BINARY:
            refs += [(oid, "inactive-text", None), (oid, "active-text", None)]
    values = await reader.read(refs)
    got: dict[tuple[int, int, str], Any] = {
        (int(oid[0]), oid[1], prop): value
        for (oid, prop, _), value in zip(refs, values, strict=True)
    }
    points: list[DiscoveredPoint] = []
    for oid in wanted:
        otype, inst = str(oid[0]), oid[1]

        def prop(name: str, oid: ObjectIdentifier = oid) -> Any:
            return got.get((int(oid[0]), oid[1], name))

        obj_name = _text(prop("object-name")) or f"{otype}-{inst}"
        description = _text(prop("description"))
        states = _state_texts(otype, prop)
        if states:
            description = f"{description} ({states})" if description else states
        units = prop("units")
        writable = otype in _OUTPUTS or (
            otype in _COMMANDABLE_CANDIDATES and _ok(prop("priority-array"))
        )
        tag = "sensor" if otype.endswith("-input") else ("cmd" if otype in _OUTPUTS else "")
        points.append(
            DiscoveredPoint(
                device=device_id,
                address=f"{otype}:{inst}",
                name=obj_name,
                units=short_units(str(units)) if _ok(units) else "",
                description=description,
                writable=writable,
                tags=tag,
            )
        )
    return DiscoveredDevice(
        device_id,
        instance,
        address,
        device_name,
        _text(vendor),
        _text(model),
        reader.use_rpm,
        tuple(points),
    )


def _state_texts(otype: str, prop: Callable[[str], Any]) -> str:
    if otype in _MULTISTATE:
        texts = prop("state-text")
        if _ok(texts):
            return "states: " + ", ".join(f"{i}={t}" for i, t in enumerate(texts, 1))
    if otype in _BINARY:
        off, on = prop("inactive-text"), prop("active-text")
        if _ok(off) and _ok(on):
            return f"0={off}, 1={on}"
    return ""


# ------------------------------------------------------------------------------------- who-is


def _is_broadcast(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return isinstance(ip, ipaddress.IPv4Address) and (ip.packed[-1] == 255 or ip.is_multicast)


async def _who_is(
    app: Any, target: str | None, wait: float, progress: Progress
) -> dict[int, Address]:
    found: dict[int, Address] = {}
    iams: list[Any] = []
    first = asyncio.Event()
    unicast_host: str | None = None
    if target:
        host, _, port = parse_host_port(target)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=socket.AF_INET)
            host = str(infos[0][4][0])
        destination = Address(f"{host}:{port}")
        if not _is_broadcast(host):
            unicast_host = host
        progress(f"Who-Is → {host}:{port}")
    else:
        destination = GlobalBroadcast()
        progress("Who-Is → broadcast")

    def on_iam(apdu: Any) -> None:
        instance = apdu.iAmDeviceIdentifier[1]
        if instance not in found:
            found[instance] = apdu.pduSource
            progress(f"I-Am from device {instance} at {apdu.pduSource}")
            iams.append(apdu)
        if unicast_host is not None:
            first.set()

    app.iam_listeners.append(on_iam)
    try:
        app.request(WhoIsRequest(destination=destination))
        try:
            await asyncio.wait_for(first.wait(), wait)
        except TimeoutError:
            pass
    finally:
        app.iam_listeners.remove(on_iam)
    for apdu in iams:
        # segmentation and APDU size of each device, for bacpypes3's request handling
        await app.device_info_cache.set_device_info(apdu)
    return found


# ---------------------------------------------------------------------------------- public API


async def discover_bacnet_devices(
    *,
    local_address: str,
    target: str | None = None,
    timeout: float = 3.0,  # noqa: ASYNC109 - the Who-Is listening window, not a deadline
    progress: Progress | None = None,
    local_device_instance: int = 599998,
) -> list[DiscoveredDevice]:
    """Who-Is, then describe every device that answered (sorted by instance)."""
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    local = BacnetLocalApp(
        local_address,
        local_device_instance,
        timeout=min(max(timeout, 0.5), 3.0),
        retries=1,
        name="outpost-discover",
    )
    app = await local.app()
    try:
        found = await _who_is(app, target, timeout, say)
        if not found:
            say("no device answered")
            return []
        devices: list[DiscoveredDevice] = []
        taken: set[str] = set()
        for instance in sorted(found):
            try:
                devices.append(await _describe_device(app, instance, found[instance], taken, say))
            except Exception as exc:
                # One odd device must not spoil the others' results.
                why = (
                    "stopped answering"
                    if isinstance(exc, _Gone)
                    else f"{type(exc).__name__}: {exc}"
                )
                say(f"device {instance} at {found[instance]}: {why}")
                log.warning("bacnet.discovery_device_failed", instance=instance, error=why)
                devices.append(
                    DiscoveredDevice(
                        _device_id(f"bacnet-{instance}", instance, taken),
                        instance,
                        str(found[instance]),
                        f"device-{instance}",
                        error=why,
                    )
                )
        log.info(
            "bacnet.discovery_done",
            devices=len(devices),
            points=sum(len(d.points) for d in devices),
            s=round(time.monotonic() - started, 2),
        )
        return devices
    finally:
        local.close()


async def discover_bacnet(
    *,
    local_address: str,
    target: str | None = None,
    timeout: float = 3.0,  # noqa: ASYNC109 - the Who-Is listening window, not a deadline
    progress: Callable[[str], None] | None = None,
) -> list[DiscoveredPoint]:
    """Who-Is (directed to ``target`` when given, else broadcast), then every device's points."""
    devices = await discover_bacnet_devices(
        local_address=local_address, target=target, timeout=timeout, progress=progress
    )
    return [p for d in devices for p in d.points]


def config_snippet(devices: Sequence[DiscoveredDevice], local_address: str) -> str:
    """``[devices.<id>]`` TOML tables for the agent config, one per discovered device."""
    host, prefix, port = parse_host_port(local_address)
    local = f"{host}{'' if prefix is None else f'/{prefix}'}:{port}"
    lines: list[str] = []
    for d in devices:
        dev_host, _, dev_port = parse_host_port(d.address)
        address = dev_host if dev_port == BACNET_PORT else f"{dev_host}:{dev_port}"
        lines += [
            f"[devices.{d.device_id}]",
            'protocol = "bacnet"',
            f'address = "{address}"',
            f"device_instance = {d.instance}",
            f'local_address = "{local}"',
        ]
        if not d.uses_rpm:
            lines.append("# no ReadPropertyMultiple on this device: the driver uses ReadProperty")
        lines.append("")
    return "\n".join(lines)
