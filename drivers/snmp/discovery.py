"""SNMP discovery for commissioning: walk a device and propose schedule rows.

Walks the system group, IF-MIB's ifTable and ifXTable (one row set per interface: status,
speed, traffic and error counters, named by ifName or ifDescr), ENTITY-SENSOR-MIB's
entPhySensorTable where the device has it, the vendor's enterprise subtree named by
sysObjectID (where PDUs, UPSes and sensors keep their readings), and any subtrees the caller
names. Only numeric OIDs are used: no MIB files are needed on the site box. The result feeds
``outpost.point_schedules.skeleton.write_skeleton``; ``config_snippet`` gives the matching
``[devices.<id>]`` table.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from pyasn1.type import univ
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    bulk_walk_cmd,
    get_cmd,
)
from pysnmp.proto import errind, rfc1902, rfc1905

from outpost.point_schedules.skeleton import DiscoveredPoint

__all__ = ["DiscoveryError", "config_snippet", "discover_snmp", "parse_target"]

SYSTEM = "1.3.6.1.2.1.1"
SYS_DESCR = "1.3.6.1.2.1.1.1.0"
SYS_OBJECT_ID = "1.3.6.1.2.1.1.2.0"
ENTERPRISES = "1.3.6.1.4.1"
MIB_2 = "1.3.6.1.2.1"
SNMP_PORT = 161
#: values read per walked subtree at most: an enterprise subtree can hold a whole device
MAX_PER_WALK = 2000
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
SYS_NAME = "1.3.6.1.2.1.1.5.0"
IF_TABLE = "1.3.6.1.2.1.2.2.1"
IF_X_TABLE = "1.3.6.1.2.1.31.1.1.1"
ENT_SENSOR = "1.3.6.1.2.1.99.1.1.1"
ENT_PHYS_NAME = "1.3.6.1.2.1.47.1.1.1.1.7"

# (column, suffix, units, description, tags): the numeric ifTable columns worth polling.
_IF_COLUMNS: tuple[tuple[int, str, str, str, str], ...] = (
    (
        8,
        "oper_status",
        "",
        "ifOperStatus (1=up 2=down 3=testing 5=dormant 7=lowerLayerDown)",
        "status",
    ),
    (7, "admin_status", "", "ifAdminStatus (1=up 2=down 3=testing)", "status"),
    (5, "speed", "bit/s", "ifSpeed", ""),
    (10, "in_octets", "octets", "ifInOctets (32-bit counter)", "counter"),
    (16, "out_octets", "octets", "ifOutOctets (32-bit counter)", "counter"),
    (13, "in_discards", "packets", "ifInDiscards", "counter"),
    (14, "in_errors", "packets", "ifInErrors", "counter"),
    (19, "out_discards", "packets", "ifOutDiscards", "counter"),
    (20, "out_errors", "packets", "ifOutErrors", "counter"),
)
# ifXTable: 64-bit counters replace the 32-bit ones where present (32-bit wraps in 34 s at 1 Gbit/s).
_IFX_COLUMNS: tuple[tuple[int, str, str, str, str], ...] = (
    (6, "in_octets", "octets", "ifHCInOctets (64-bit counter)", "counter"),
    (10, "out_octets", "octets", "ifHCOutOctets (64-bit counter)", "counter"),
    (15, "speed", "Mbit/s", "ifHighSpeed", ""),
)
# entPhySensorType → units (ENTITY-SENSOR-MIB EntitySensorDataType).
_SENSOR_UNITS = {
    3: "V",
    4: "V",
    5: "A",
    6: "W",
    7: "Hz",
    8: "degC",
    9: "%RH",
    10: "rpm",
    11: "m3/min",
    12: "",
}
_SENSOR_KIND = {
    3: "voltsAC",
    4: "voltsDC",
    5: "amperes",
    6: "watts",
    7: "hertz",
    8: "celsius",
    9: "percentRH",
    10: "rpm",
    11: "cmm",
    12: "truthvalue",
    1: "other",
    2: "unknown",
}
_NOT_ID = re.compile(r"[^a-z0-9_.-]+")


class DiscoveryError(Exception):
    """Discovery could not talk to the device; the message says what to check."""


Progress = Callable[[str], None]


def parse_target(text: str, default_port: int = SNMP_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6-address]:port`` → (host, port). Raises ValueError."""
    s = text.strip()
    if not s:
        raise ValueError("the device address is empty")
    if s.startswith("["):
        host, bracket, rest = s[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6-ADDRESS]:PORT")
        port_text = rest[1:]
    elif s.count(":") == 1:
        host, _, port_text = s.partition(":")
    else:
        host, port_text = s, ""  # a bare name, IPv4 or IPv6 address
    if not host:
        raise ValueError(f"{text!r}: expected HOST[:PORT], e.g. 10.0.7.11:161")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number 1..65535, got {port_text!r}")
    return host, int(port_text)


def parse_oid(text: str) -> str:
    """A numeric OID for ``--walk`` (leading dot allowed). Raises ValueError."""
    s = text.strip().lstrip(".")
    arcs = s.split(".")
    if len(arcs) < 2 or not all(a.isdigit() for a in arcs):
        raise ValueError(
            f"{text!r}: expected a numeric OID such as 1.3.6.1.4.1.318 (MIB names are not resolved)"
        )
    return ".".join(str(int(a)) for a in arcs)


def config_snippet(
    device_id: str, host: str, port: int = SNMP_PORT, community_env: str = "SNMP_COMMUNITY"
) -> str:
    """The ``[devices.<id>]`` table for the agent config (v2c, community from the variable)."""
    lines = [f"[devices.{device_id}]", 'protocol = "snmp"', f"host = {_toml_str(host)}"]
    if port != SNMP_PORT:
        lines.append(f"port = {port}")
    lines += ['version = "2c"', f"community_env = {_toml_str(community_env)}", ""]
    return "\n".join(lines)


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def discover_snmp(
    host: str,
    port: int = SNMP_PORT,
    *,
    community: str,
    device_id: str | None = None,
    walk: Sequence[str] = (),
    enterprise: bool = True,
    max_per_walk: int = MAX_PER_WALK,
    timeout: float = 2.0,  # noqa: ASYNC109 - per-request SNMP timeout, not a deadline
    progress: Progress | None = None,
) -> list[DiscoveredPoint]:
    """Walk ``host`` with SNMP v2c and return skeleton rows for ``device_id`` (default: a
    name suggested from sysName). ``walk``: more subtrees (numeric OIDs) to propose every
    numeric value of; ``enterprise``: also the vendor subtree sysObjectID names. Raises
    ``DiscoveryError`` when the device does not answer."""
    say = progress or (lambda _msg: None)
    roots = [parse_oid(o) for o in walk]
    engine = SnmpEngine()
    try:
        auth = CommunityData(community, mpModel=1)
        target = await UdpTransportTarget.create((host, port), timeout=timeout, retries=1)
        walker = _Walker(engine, auth, target)

        say(f"asking {host}:{port} for its system group")
        system = await walker.get([SYS_DESCR, SYS_OBJECT_ID, SYS_UPTIME, SYS_NAME])
        sys_name = _text(system.get(SYS_NAME)) or ""
        device = device_id or _device_id(sys_name, host)
        descr = _text(system.get(SYS_DESCR)) or ""
        say(f"device {sys_name or host!r}: {descr[:60]}")
        vendor = _enterprise_root(system.get(SYS_OBJECT_ID))
        if vendor is not None and enterprise:
            say(f"sysObjectID names the enterprise subtree {vendor}")
            roots.append(vendor)

        points: list[DiscoveredPoint] = []
        if _is_number(system.get(SYS_UPTIME)):
            points.append(
                DiscoveredPoint(
                    device=device,
                    address=SYS_UPTIME,
                    name="sys_uptime",
                    units="cs",
                    description="sysUpTime in hundredths of a second (scale 0.01 for seconds)",
                    tags="system",
                )
            )

        say("walking IF-MIB ifTable")
        if_table = await walker.walk(IF_TABLE)
        say(f"ifTable: {len(if_table)} values; walking ifXTable")
        ifx_table = await walker.walk(IF_X_TABLE)
        points.extend(_interfaces(device, if_table, ifx_table))

        say("walking ENTITY-SENSOR-MIB entPhySensorTable")
        sensors = await walker.walk(ENT_SENSOR)
        if sensors:
            names = await walker.walk(ENT_PHYS_NAME)
            points.extend(_sensors(device, sensors, names))

        seen = {p.address for p in points}
        for root in _outermost(roots):
            say(f"walking {root}")
            values = await walker.walk(root, limit=max_per_walk)
            if len(values) >= max_per_walk:
                say(f"{root}: stopped after {max_per_walk} values; walk its parts with --walk")
            found = [p for p in _generic(device, root, values) if p.address not in seen]
            # Some agents list OIDs in a walk that a GET then refuses: propose what reads.
            readable = await walker.readable([p.address for p in found])
            for point in found:
                if point.address in readable:
                    seen.add(point.address)
                    points.append(point)
        say(f"found {len(points)} points")
        return points
    finally:
        engine.close_dispatcher()


class _Walker:
    def __init__(self, engine: SnmpEngine, auth: CommunityData, target: UdpTransportTarget) -> None:
        self.engine, self.auth, self.target = engine, auth, target

    def _no_answer(self, error: Any) -> DiscoveryError:
        if isinstance(error, errind.RequestTimedOut):
            return DiscoveryError(
                f"no answer from {self.target.transport_address[0]}:"
                f"{self.target.transport_address[1]}: the device is unreachable or does not "
                "accept this community (a wrong community looks exactly like a timeout)"
            )
        return DiscoveryError(f"SNMP error: {error}")

    async def get(self, oids: list[str]) -> dict[str, Any]:
        error, status, _index, varbinds = await get_cmd(
            self.engine,
            self.auth,
            self.target,
            ContextData(),
            *(ObjectType(ObjectIdentity(o)) for o in oids),
            lookupMib=False,
        )
        if error:
            raise self._no_answer(error)
        if int(status):
            return {}
        return {str(name): value for name, value in varbinds}

    async def readable(self, oids: list[str], batch: int = 10) -> set[str]:
        """The OIDs a GET answers with a number (a batch the agent refuses as a whole is
        asked again one OID at a time)."""
        out: set[str] = set()
        for i in range(0, len(oids), batch):
            chunk = oids[i : i + batch]
            answers = await self.get(chunk)
            if not answers and len(chunk) > 1:
                for oid in chunk:
                    answers.update(await self.get([oid]))
            out.update(
                oid
                for oid, value in answers.items()
                if _is_number(value) or _numeric_text(value) is not None
            )
        return out

    async def walk(self, root: str, limit: int | None = None) -> dict[tuple[int, ...], Any]:
        """Every (OID-under-root → value), keyed by the arcs after ``root``; at most
        ``limit`` of them."""
        prefix = tuple(int(x) for x in root.split("."))
        out: dict[tuple[int, ...], Any] = {}
        async for error, status, _index, varbinds in bulk_walk_cmd(
            self.engine,
            self.auth,
            self.target,
            ContextData(),
            0,
            25,
            ObjectType(ObjectIdentity(root)),
            lexicographicMode=False,
            lookupMib=False,
        ):
            if error:
                raise self._no_answer(error)
            if int(status):
                break
            for name, value in varbinds:
                arcs = tuple(name)
                if arcs[: len(prefix)] != prefix or isinstance(value, rfc1905.EndOfMibView):
                    return out
                out[arcs[len(prefix) :]] = value
                if limit is not None and len(out) >= limit:
                    return out
        return out


def _interfaces(
    device: str, if_table: dict[tuple[int, ...], Any], ifx_table: dict[tuple[int, ...], Any]
) -> list[DiscoveredPoint]:
    indexes = sorted({key[1] for key in if_table if len(key) == 2 and key[0] == 1})
    indexes = indexes or sorted({key[1] for key in if_table if len(key) == 2})
    points: list[DiscoveredPoint] = []
    for ix in indexes:
        name = _text(ifx_table.get((1, ix))) or _text(if_table.get((2, ix))) or f"if{ix}"
        descr = _text(if_table.get((2, ix))) or name
        rows: dict[str, DiscoveredPoint] = {}
        for col, suffix, units, what, tags in _IF_COLUMNS:
            if _is_number(if_table.get((col, ix))):
                rows[suffix] = _if_point(
                    device, f"{IF_TABLE}.{col}.{ix}", name, descr, suffix, units, what, tags, ix
                )
        for col, suffix, units, what, tags in _IFX_COLUMNS:
            value = ifx_table.get((col, ix))
            if value is None or not _is_number(value):
                continue
            # ifHighSpeed only improves on ifSpeed when ifSpeed saturates (> 4.29 Gbit/s).
            if suffix == "speed" and "speed" in rows and int(value) < 4295:
                continue
            rows[suffix] = _if_point(
                device, f"{IF_X_TABLE}.{col}.{ix}", name, descr, suffix, units, what, tags, ix
            )
        points.extend(rows.values())
    return points


def _if_point(
    device: str,
    oid: str,
    name: str,
    descr: str,
    suffix: str,
    units: str,
    what: str,
    tags: str,
    ix: int,
) -> DiscoveredPoint:
    tag_text = f"equip=interface;if={_tag(name)};ifindex={ix}" + (f";{tags}" if tags else "")
    return DiscoveredPoint(
        device=device,
        address=oid,
        name=f"{name}.{suffix}",
        units=units,
        description=f"{descr}: {what}",
        tags=tag_text,
    )


def _sensors(
    device: str, table: dict[tuple[int, ...], Any], names: dict[tuple[int, ...], Any]
) -> list[DiscoveredPoint]:
    points = []
    for key in sorted(k for k in table if len(k) == 2 and k[0] == 4):
        ix = key[1]
        if not _is_number(table[key]):
            continue
        kind = int(table.get((1, ix), 2)) if _is_number(table.get((1, ix))) else 2
        scale = int(table.get((2, ix), 9)) if _is_number(table.get((2, ix))) else 9
        precision = int(table.get((3, ix), 0)) if _is_number(table.get((3, ix))) else 0
        exponent = (scale - 9) * 3 - precision
        name = _text(names.get((ix,))) or f"sensor{ix}"
        factor = (
            ""
            if exponent == 0
            else f"; engineering value = raw x 1e{exponent} (scale {10.0**exponent:g})"
        )
        points.append(
            DiscoveredPoint(
                device=device,
                address=f"{ENT_SENSOR}.4.{ix}",
                name=f"sensor.{name}",
                units=_SENSOR_UNITS.get(kind, ""),
                description=f"entPhySensorValue {_SENSOR_KIND.get(kind, 'other')}{factor}",
                tags=f"sensor;entindex={ix}",
            )
        )
    return points


def _enterprise_root(value: Any) -> str | None:
    """``1.3.6.1.4.1.N`` from a sysObjectID under enterprises, else None."""
    if not isinstance(value, univ.ObjectIdentifier):
        return None
    arcs = tuple(value)
    base = tuple(int(x) for x in ENTERPRISES.split("."))
    if len(arcs) <= len(base) or arcs[: len(base)] != base:
        return None
    return ".".join(str(a) for a in arcs[: len(base) + 1])


def _outermost(roots: Sequence[str]) -> list[str]:
    """The roots without repeats or subtrees of another root, in the order given."""
    out: list[str] = []
    for root in roots:
        if any(root == o or root.startswith(o + ".") for o in out):
            continue
        out = [o for o in out if not o.startswith(root + ".")]
        out.append(root)
    return out


_MAX_LABEL = 100  # leaves room for the device id in a point id (200 characters at most)


def _label(oid: str) -> str:
    """A readable point name for an OID: relative to enterprises or mib-2 when under them.
    Long ones (tables indexed by strings) keep their head and a digest of the whole OID."""
    label = f"oid.{oid}"
    for base, name in ((ENTERPRISES, "enterprises"), (MIB_2, "mib-2")):
        if oid.startswith(base + "."):
            label = f"{name}.{oid[len(base) + 1 :]}"
            break
    if len(label) > _MAX_LABEL:
        digest = hashlib.sha1(oid.encode(), usedforsecurity=False).hexdigest()[:12]
        label = f"{label[: _MAX_LABEL - 13].rstrip('.')}-{digest}"
    return label


def _generic(device: str, root: str, values: dict[tuple[int, ...], Any]) -> list[DiscoveredPoint]:
    """A row for every value under ``root`` the driver reads as a number: integers, counters,
    gauges, time ticks, and text that holds a number."""
    points = []
    for arcs in sorted(values):
        value = values[arcs]
        oid = ".".join([root, *(str(a) for a in arcs)])
        kind = type(value).__name__
        if isinstance(value, rfc1902.TimeTicks):
            units, note = "cs", "hundredths of a second"
        elif _is_number(value):
            units, note = "", ""
        elif _numeric_text(value) is not None:
            units, note = "", f"text holding a number ({_text(value)!r} when discovered)"
        else:
            continue
        points.append(
            DiscoveredPoint(
                device=device,
                address=oid,
                name=_label(oid),
                units=units,
                description=f"{kind} at {oid}" + (f": {note}" if note else ""),
                tags=f"walk={root}",
            )
        )
    return points


def _numeric_text(value: Any) -> float | None:
    text = _text(value) if not isinstance(value, rfc1902.IpAddress) else None
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _is_number(value: Any) -> bool:
    return isinstance(value, univ.Integer)


def _text(value: Any) -> str | None:
    if isinstance(value, univ.OctetString):
        try:
            return bytes(value).decode("utf-8", "replace").strip("\x00 ").strip() or None
        except (TypeError, ValueError):
            return None
    return None


def _tag(text: str) -> str:
    return text.replace(";", "_").replace("=", "_").strip()


def _device_id(sys_name: str, host: str) -> str:
    base = _NOT_ID.sub("-", sys_name.strip().lower()).strip("-_.")
    if not base:
        base = "snmp-" + _NOT_ID.sub("-", host.lower()).strip("-_.")
    if not base[0].isalnum():
        base = "d" + base
    return base
