"""Address syntax of each protocol, as written in the ``address`` column of a point schedule.

``parse_address(protocol, text)`` turns the text into one of the frozen address objects of
``outpost.point_schedules.model`` or raises ``AddressError`` with a message a commissioning engineer can
act on (what was expected, what was found). The loader prefixes it with file, line and column.

Syntax:

- modbus: ``hr:40``, ``ir:0``, ``coil:5``, ``di:3`` (0-based wire address 0..65535) and
  ``hr:40.3`` / ``ir:7.15`` (bit 0..15 of a register). Table names are case-insensitive.
- bacnet: ``OBJECT-TYPE:INSTANCE[/PROPERTY][[INDEX]]``, e.g. ``analog-input:1``,
  ``analog-value:3/present-value``, ``device:1001/object-list[2]``. Object types and
  properties use the hyphenated bacpypes3 names; the usual abbreviations (``ai``, ``av``,
  ``bo``, ``msv``...) are accepted and expanded. Instance 0..4194302.
- snmp: a numeric OID with at least two arcs, ``1.3.6.1.2.1.1.3.0``; a leading dot is
  accepted and dropped. MIB names are not resolved (no MIBs are bundled for offline sites).
- mqtt: ``TOPIC-FILTER[#$JSON-PATH]``, e.g. ``site/rack-3/env#$.temp`` or
  ``site/+/power#$.phases[0].kw``. The JSON path selects the value inside a JSON payload;
  without one the payload itself is the number.

Patterns are compiled once at import; parsing is a handful of regex matches per address.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

from outpost.point_schedules.model import (
    Address,
    BacnetAddress,
    ModbusAddress,
    MqttAddress,
    SnmpAddress,
)

__all__ = [
    "BACNET_OBJECT_TYPES",
    "PROTOCOLS",
    "AddressError",
    "parse_address",
    "parse_bacnet",
    "parse_json_path",
    "parse_modbus",
    "parse_mqtt",
    "parse_snmp",
]

PROTOCOLS: tuple[str, ...] = ("modbus", "bacnet", "snmp", "mqtt")


class AddressError(ValueError):
    """The address text is not valid for the protocol; the message says what was expected."""


# --------------------------------------------------------------------------------------- modbus

MODBUS_TABLES: tuple[str, ...] = ("hr", "ir", "coil", "di")
MODBUS_MAX_ADDRESS = 65535
_MODBUS_TABLE_NAMES = {t: t for t in MODBUS_TABLES}

_MODBUS_RE = re.compile(r"([A-Za-z]+)\s*:\s*([0-9]+)(?:\.([0-9]+))?")
_MODBUS_SHAPE = "expected TABLE:ADDRESS with TABLE one of hr, ir, coil, di (e.g. hr:40, hr:40.3)"
# A 5/6-digit number starting 0/1/3/4 is almost always a Modicon reference (40001 = hr:0).
_MODICON_RE = re.compile(r"([0134])([0-9]{4,5})")
_MODICON_TABLE = {"0": "coil", "1": "di", "3": "ir", "4": "hr"}
_MAX_DIGITS = 10  # anything longer is out of range for every protocol field; keeps int() cheap


def parse_modbus(text: str) -> ModbusAddress:
    s = text.strip()
    m = _MODBUS_RE.fullmatch(s)
    if m is None:
        hint = ""
        mm = _MODICON_RE.fullmatch(s)
        if mm is not None:
            n = int(mm.group(2))
            if n >= 1:
                hint = (
                    f"; Modicon reference numbers are not used, write "
                    f"{_MODICON_TABLE[mm.group(1)]}:{n - 1} for {s}"
                )
        raise AddressError(_MODBUS_SHAPE + hint)
    # the module's own table string, not a fresh lower-cased copy kept by every address
    table = _MODBUS_TABLE_NAMES.get(m.group(1).lower())
    if table is None:
        raise AddressError(f'unknown table "{m.group(1)}": expected one of hr, ir, coil, di')
    digits = m.group(2)
    if len(digits) > _MAX_DIGITS or int(digits) > MODBUS_MAX_ADDRESS:
        raise AddressError(f"address {_shorten(digits)} out of range 0..{MODBUS_MAX_ADDRESS}")
    bit_text = m.group(3)
    bit: int | None = None
    if bit_text is not None:
        if table not in ("hr", "ir"):
            raise AddressError(
                f"a bit (.N) is only allowed on hr and ir registers, not on {table} "
                f"(write {table}:{int(digits)})"
            )
        if len(bit_text) > 2 or int(bit_text) > 15:
            raise AddressError(f"bit {_shorten(bit_text)} out of range 0..15")
        bit = int(bit_text)
    return ModbusAddress(table, int(digits), bit)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- bacnet

#: Standard object types (ASHRAE 135) in bacpypes3's hyphenated spelling.
BACNET_OBJECT_TYPES: frozenset[str] = frozenset(
    """access-credential access-door access-point access-rights access-user access-zone
    accumulator alert-enrollment analog-input analog-output analog-value audit-log
    audit-reporter averaging binary-input binary-lighting-output binary-output binary-value
    bitstring-value calendar channel characterstring-value command credential-data-input
    date-pattern-value date-value datetime-pattern-value datetime-value device elevator-group
    escalator event-enrollment event-log file global-group group integer-value
    large-analog-value life-safety-point life-safety-zone lift lighting-output load-control
    loop multi-state-input multi-state-output multi-state-value network-port network-security
    notification-class notification-forwarder octetstring-value positive-integer-value program
    pulse-converter schedule staging structured-view time-pattern-value time-value timer
    trend-log trend-log-multiple""".split()
)
_BACNET_ALIASES = {
    "ai": "analog-input",
    "ao": "analog-output",
    "av": "analog-value",
    "bi": "binary-input",
    "bo": "binary-output",
    "bv": "binary-value",
    "mi": "multi-state-input",
    "mo": "multi-state-output",
    "mv": "multi-state-value",
    "msi": "multi-state-input",
    "mso": "multi-state-output",
    "msv": "multi-state-value",
    "dev": "device",
}
BACNET_MAX_INSTANCE = 4194302  # 4194303 is the "uninitialised / wildcard" instance
_BACNET_NAME = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"
_BACNET_RE = re.compile(
    rf"(?P<type>{_BACNET_NAME}|[0-9]+)\s*:\s*(?P<inst>[0-9]+)"
    rf"(?:/(?P<prop>{_BACNET_NAME}|[0-9]+))?(?:\[(?P<idx>[0-9]+)\])?"
)
_BACNET_TYPE_RE = re.compile(rf"{_BACNET_NAME}|[0-9]+")
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_BACNET_SHAPE = (
    "expected OBJECT-TYPE:INSTANCE[/PROPERTY][[INDEX]] "
    "(e.g. analog-input:1, analog-value:3/present-value, device:1001/object-list[2])"
)


def _kebab(name: str) -> str:
    return _CAMEL_RE.sub("-", name).replace("_", "-").lower()


def parse_bacnet(text: str) -> BacnetAddress:
    s = text.strip()
    m = _BACNET_RE.fullmatch(s)
    if m is None:
        head, sep, _ = s.partition(":")
        head = head.strip()
        if sep and head and _BACNET_TYPE_RE.fullmatch(head) is None:
            kebab = _kebab(head)
            if _BACNET_TYPE_RE.fullmatch(kebab) is not None and kebab != head:
                raise AddressError(
                    f'object type "{head}": use the hyphenated lower-case name "{kebab}"'
                )
        if "/" in s:
            prop = s.split("/", 1)[1].split("[", 1)[0]
            kebab = _kebab(prop)
            if prop and kebab != prop and re.fullmatch(_BACNET_NAME, kebab):
                raise AddressError(
                    f'property "{prop}": use the hyphenated lower-case name "{kebab}"'
                )
        raise AddressError(_BACNET_SHAPE)
    otype = m.group("type")
    if otype.isdigit():
        # Numeric object types are how proprietary (vendor) objects are addressed.
        if len(otype) > 4 or int(otype) > 1023:
            raise AddressError(f"object type number {_shorten(otype)} out of range 0..1023")
    else:
        otype = _BACNET_ALIASES.get(otype, otype)
        if otype not in BACNET_OBJECT_TYPES:
            close = difflib.get_close_matches(otype, BACNET_OBJECT_TYPES, n=1, cutoff=0.85)
            if close:
                raise AddressError(f'unknown object type "{otype}" (did you mean "{close[0]}"?)')
    inst = m.group("inst")
    if len(inst) > _MAX_DIGITS or int(inst) > BACNET_MAX_INSTANCE:
        raise AddressError(f"instance {_shorten(inst)} out of range 0..{BACNET_MAX_INSTANCE}")
    prop = m.group("prop") or "present-value"
    if prop.isdigit() and (len(prop) > _MAX_DIGITS or int(prop) > 4194303):
        raise AddressError(f"property number {_shorten(prop)} out of range 0..4194303")
    idx_text = m.group("idx")
    index: int | None = None
    if idx_text is not None:
        if len(idx_text) > _MAX_DIGITS or int(idx_text) > 0xFFFFFFFF:
            raise AddressError(f"array index {_shorten(idx_text)} out of range 0..4294967295")
        index = int(idx_text)
    return BacnetAddress(otype, int(inst), prop, index)


# ----------------------------------------------------------------------------------------- snmp

_OID_RE = re.compile(r"\.?([0-9]+(?:\.[0-9]+)+)")
_OID_MAX_ARCS = 128
_OID_MAX_ARC = 0xFFFFFFFF


def parse_snmp(text: str) -> SnmpAddress:
    s = text.strip()
    m = _OID_RE.fullmatch(s)
    if m is None:
        if "::" in s or any(c.isalpha() for c in s):
            raise AddressError(
                "expected a numeric OID such as 1.3.6.1.2.1.1.3.0; MIB names are not "
                "resolved, use the numeric form"
            )
        raise AddressError(
            "expected a numeric OID: at least two non-negative integer arcs separated by dots "
            "(e.g. 1.3.6.1.2.1.2.2.1.10.1)"
        )
    parts = m.group(1).split(".")
    if len(parts) > _OID_MAX_ARCS:
        raise AddressError(f"OID has {len(parts)} arcs; at most {_OID_MAX_ARCS} are allowed")
    arcs: list[int] = []
    for i, part in enumerate(parts, 1):
        if len(part) > _MAX_DIGITS or int(part) > _OID_MAX_ARC:
            raise AddressError(f"arc {i} ({_shorten(part)}) out of range 0..{_OID_MAX_ARC}")
        arcs.append(int(part))
    if arcs[0] > 2:
        raise AddressError(f"first arc must be 0, 1 or 2, got {arcs[0]}")
    if arcs[0] < 2 and arcs[1] > 39:
        raise AddressError(f"second arc must be 0..39 under {arcs[0]}, got {arcs[1]}")
    return SnmpAddress(".".join(map(str, arcs)))


# ----------------------------------------------------------------------------------------- mqtt

_JSON_PATH_RE = re.compile(r"\$(?:\.[A-Za-z0-9_-]+|\[[0-9]+\]|\['[^'\]]*'\]|\[\"[^\"\]]*\"\])*")
_JSON_STEP_RE = re.compile(r"\.([A-Za-z0-9_-]+)|\[([0-9]+)\]|\['([^'\]]*)'\]|\[\"([^\"\]]*)\"\]")
_MQTT_MAX_TOPIC_BYTES = 65535


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """``$.a.b[0]['c d']`` → ``("a", "b", 0, "c d")``; ``$`` → ``()`` (the whole payload)."""
    if _JSON_PATH_RE.fullmatch(path) is None:
        raise AddressError(
            f"JSON path \"{path}\": expected $ followed by .key, [index] or ['key'] steps "
            "(e.g. $.temp, $.phases[0].kw)"
        )
    steps: list[str | int] = []
    for key, idx, sq, dq in _JSON_STEP_RE.findall(path, 1):
        if idx:
            steps.append(int(idx))
        else:
            steps.append(key or sq or dq)
    return tuple(steps)


def _check_topic_filter(topic: str) -> None:
    if not topic:
        raise AddressError("expected a topic filter before the JSON path (e.g. site/env#$.temp)")
    if "\x00" in topic:
        raise AddressError("topic filter must not contain a NUL character")
    if len(topic.encode("utf-8", "surrogatepass")) > _MQTT_MAX_TOPIC_BYTES:
        raise AddressError(f"topic filter longer than {_MQTT_MAX_TOPIC_BYTES} bytes")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "+" in level and level != "+":
            raise AddressError(f'"+" must be a whole topic level, got "{level}"')
        if "#" in level:
            if level != "#" or i != len(levels) - 1:
                raise AddressError(
                    '"#" must be the last topic level on its own; a JSON path after the topic '
                    'starts with "#$" (e.g. site/env#$.temp)'
                )


def parse_mqtt(text: str) -> MqttAddress:
    s = text.strip()
    # "#$" cannot occur inside a valid topic filter ("#" is the last character if present),
    # so its first occurrence is the separator, also after a multi-level wildcard: "a/##$.x".
    topic, sep, path = s.partition("#$")
    json_path: str | None = None
    if sep:
        json_path = "$" + path
        parse_json_path(json_path)
        if json_path == "$":
            json_path = None
    _check_topic_filter(topic)
    return MqttAddress(topic, json_path)


# ------------------------------------------------------------------------------------- dispatch

_PARSERS: dict[str, Callable[[str], Address]] = {
    "modbus": parse_modbus,
    "bacnet": parse_bacnet,
    "snmp": parse_snmp,
    "mqtt": parse_mqtt,
}


def parse_address(protocol: str, text: str) -> Address:
    """Parse ``text`` as an address of ``protocol``; raise ``AddressError`` if it is not one."""
    try:
        parser = _PARSERS[protocol]
    except KeyError:
        raise AddressError(
            f'unknown protocol "{protocol}": expected one of {", ".join(PROTOCOLS)}'
        ) from None
    if not text or not text.strip():
        raise AddressError("address is empty")
    return parser(text)


def _shorten(digits: str) -> str:
    return digits if len(digits) <= 12 else digits[:8] + "..."
