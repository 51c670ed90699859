"""SNMP discovery for commissioning: walk a device and propose schedule rows.

Walks the system group, IF-MIB's ifTable and ifXTable (one row set per interface: status,
speed, traffic and error counters, named by ifName or ifDescr) and ENTITY-SENSOR-MIB's
entPhySensorTable where the device has it. Only numeric OIDs are used: no MIB files are
needed on the site box. The result feeds ``outpost.point_schedules.skeleton.write_skeleton``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
from pysnmp.proto import errind, rfc1905

from outpost.point_schedules.skeleton import DiscoveredPoint

__all__ = ["DiscoveryError", "discover_snmp"]

SYSTEM = "1.3.6.1.2.1.1"
SYS_DESCR = "1.3.6.1.2.1.1.1.0"
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


async def discover_snmp(
    host: str,
    port: int = 161,
    *,
    community: str,
    timeout: float = 2.0,  # noqa: ASYNC109 - per-request SNMP timeout, not a deadline
    progress: Progress | None = None,
) -> list[DiscoveredPoint]:
    """Walk ``host`` with SNMP v2c and return skeleton rows; the device id is suggested from
    sysName. Raises ``DiscoveryError`` when the device does not answer."""
    say = progress or (lambda _msg: None)
    engine = SnmpEngine()
    try:
        auth = CommunityData(community, mpModel=1)
        target = await UdpTransportTarget.create((host, port), timeout=timeout, retries=1)
        walker = _Walker(engine, auth, target)

        say(f"asking {host}:{port} for its system group")
        system = await walker.get([SYS_DESCR, SYS_UPTIME, SYS_NAME])
        sys_name = _text(system.get(SYS_NAME)) or ""
        device = _device_id(sys_name, host)
        descr = _text(system.get(SYS_DESCR)) or ""
        say(f"device {sys_name or host!r}: {descr[:60]}")

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

    async def walk(self, root: str) -> dict[tuple[int, ...], Any]:
        """Every (OID-under-root → value), keyed by the arcs after ``root``."""
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
