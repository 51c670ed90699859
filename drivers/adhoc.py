"""One point named by a URL, for reading an address without a schedule (``outpost read
--address``):

- ``modbus://HOST[:PORT]/UNIT/hr:40?type=float32&order=CDAB`` (also ``scale``, ``offset``;
  ``type`` defaults to uint16, bool for coils and discrete inputs)
- ``bacnet://HOST[:PORT]/DEVICE_INSTANCE/analog-input:1`` (``local=HOST:PORT`` sets the
  agent side's endpoint; default the config model's)
- ``snmp://HOST[:PORT]/1.3.6.1.2.1.1.3.0?community_env=VAR`` (or ``community_file=PATH``,
  ``version=1|2c``)

The address part uses the schedule's own syntax (``point_schedules.addresses``), so what reads
here reads the same in a schedule row.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from outpost.drivers.base import DeviceConfig
from outpost.drivers.registry import config_model
from outpost.point_schedules.addresses import AddressError, parse_address
from outpost.point_schedules.model import ByteOrder, DataType, ModbusAddress, Point

DEFAULT_PORTS = {"modbus": 502, "bacnet": 47808, "snmp": 161}
_QUERY_KEYS = {
    "modbus": {"type", "order", "scale", "offset", "timeout"},
    "bacnet": {"local", "scale", "offset", "timeout"},
    "snmp": {"community_env", "community_file", "version", "scale", "offset", "timeout"},
}
DEVICE_ID = "adhoc"


class AdhocError(ValueError):
    """The URL does not name a readable point; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class AdhocPoint:
    protocol: str
    device: DeviceConfig
    point: Point


def parse_point_url(url: str) -> AdhocPoint:
    parts = urlsplit(url)
    protocol = parts.scheme.lower()
    if protocol not in DEFAULT_PORTS:
        raise AdhocError(
            f"expected modbus://, bacnet:// or snmp:// at the start, got {url.split(':', 1)[0]!r}"
        )
    try:
        host = parts.hostname
        port = parts.port or DEFAULT_PORTS[protocol]
    except ValueError as exc:
        raise AdhocError(f"bad HOST:PORT in {parts.netloc!r}: {exc}") from None
    if not host:
        raise AdhocError(f"no host in {url!r}; expected {protocol}://HOST:PORT/...")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - _QUERY_KEYS[protocol])
    if unknown:
        raise AdhocError(
            f"unknown option {unknown[0]!r} for {protocol}; expected one of "
            f"{', '.join(sorted(_QUERY_KEYS[protocol]))}"
        )
    path = parts.path.strip("/")
    if protocol == "snmp":
        device_part, address_text = "", path
    else:
        device_part, _, address_text = path.partition("/")
        if not device_part.isdigit() or not address_text:
            what = "UNIT" if protocol == "modbus" else "DEVICE_INSTANCE"
            raise AdhocError(
                f"expected {protocol}://HOST:PORT/{what}/ADDRESS, got path {parts.path!r}"
            )
    try:
        address = parse_address(protocol, address_text)
    except AddressError as exc:
        raise AdhocError(f"address {address_text!r}: {exc}") from None

    device: dict[str, object] = {"protocol": protocol}
    if "timeout" in query:
        device["timeout"] = _number(query, "timeout")
    if protocol == "modbus":
        device.update(host=host, port=port, unit_id=int(device_part))
    elif protocol == "bacnet":
        device.update(address=f"{host}:{port}", device_instance=int(device_part))
        if "local" in query:
            device["local_address"] = query["local"]
    else:
        device.update(host=host, port=port)
        for key in ("community_env", "community_file", "version"):
            if key in query:
                device[key] = query[key]
    try:
        config = config_model(protocol).model_validate(device)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AdhocError(f"{where}: {first['msg']}" if where else first["msg"]) from None

    data_type: DataType | None = None
    order = ByteOrder.ABCD
    if protocol == "modbus":
        assert isinstance(address, ModbusAddress)
        default = "bool" if address.is_bit_table or address.bit is not None else "uint16"
        type_text = query.get("type", default).lower()
        try:
            data_type = DataType(type_text)
        except ValueError:
            raise AdhocError(
                f"type: expected one of {', '.join(t.value for t in DataType)}, got {type_text!r}"
            ) from None
        try:
            order = ByteOrder(query.get("order", "ABCD").upper())
        except ValueError:
            raise AdhocError(
                f"order: expected one of {', '.join(b.value for b in ByteOrder)}, "
                f"got {query['order']!r}"
            ) from None
    point = Point(
        point_id=f"{DEVICE_ID}.value",
        device=DEVICE_ID,
        address=address,
        data_type=data_type,
        byte_order=order,
        scale=_number(query, "scale", 1.0),
        offset=_number(query, "offset", 0.0),
    )
    return AdhocPoint(protocol, config, point)


def _number(query: dict[str, str], key: str, default: float = 0.0) -> float:
    if key not in query:
        return default
    try:
        value = float(query[key])
    except ValueError:
        raise AdhocError(f"{key}: expected a number, got {query[key]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise AdhocError(f"{key}: expected a finite number, got {query[key]!r}")
    return value
