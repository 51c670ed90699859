"""The point schedule as the rest of Outpost sees it: plain, frozen, already validated.

The loader (``outpost.point_schedules.loader``, CSV files and .xlsx workbooks) is the only
producer of these objects; drivers, the alarm engine and the agent consume them. ``Point``
also declares which of its fields are point metadata (``METADATA_FIELDS``, the receiver's
``PointMeta``) and which of those are limits (``LIMIT_FIELDS``). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import Any, Final, Literal

#: A point id: lower-case letters, digits and ``_ . -``, starting with a letter or digit. The
#: loader, the wire models and the receiver all check ids against these two values.
POINT_ID_PATTERN: Final = r"[a-z0-9][a-z0-9_.-]*"
POINT_ID_MAX_LENGTH: Final = 200


class DataType(str, Enum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def registers(self) -> int:
        """16-bit registers the type occupies on Modbus (bool/bit: 1 register or 1 bit)."""
        return _REGISTERS[self]


_REGISTERS = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
}


class ByteOrder(str, Enum):
    """Order of the bytes of a multi-register value, A = most significant byte.

    ABCD: big-endian words, big-endian bytes (Modbus default). CDAB: word-swapped.
    BADC: byte-swapped inside each register. DCBA: fully little-endian.
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class AlarmPriority(str, Enum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    def one_step_up(self) -> AlarmPriority:
        order = [
            AlarmPriority.LOW,
            AlarmPriority.MEDIUM,
            AlarmPriority.HIGH,
            AlarmPriority.CRITICAL,
        ]
        return order[min(order.index(self) + 1, len(order) - 1)]


ModbusTable = Literal["hr", "ir", "coil", "di"]


@dataclass(frozen=True, slots=True)
class ModbusAddress:
    """``hr:40``, ``ir:0``, ``coil:5``, ``di:3``, ``hr:40.3`` (bit 3 of holding register 40)."""

    table: ModbusTable
    address: int  # 0-based wire address
    bit: int | None = None

    @property
    def is_bit_table(self) -> bool:
        return self.table in ("coil", "di")

    def __str__(self) -> str:
        return f"{self.table}:{self.address}" + (f".{self.bit}" if self.bit is not None else "")


@dataclass(frozen=True, slots=True)
class BacnetAddress:
    """``analog-input:1``, ``analog-value:3/present-value``, ``device:1001/object-list[2]``."""

    object_type: str
    instance: int
    property: str = "present-value"
    index: int | None = None

    def __str__(self) -> str:
        text = f"{self.object_type}:{self.instance}"
        if self.property != "present-value" or self.index is not None:
            text += f"/{self.property}"
        if self.index is not None:
            text += f"[{self.index}]"
        return text


@dataclass(frozen=True, slots=True)
class SnmpAddress:
    """A numeric OID, e.g. ``1.3.6.1.2.1.2.2.1.10.1`` (no MIB names: none are bundled offline)."""

    oid: str

    def __str__(self) -> str:
        return self.oid


@dataclass(frozen=True, slots=True)
class MqttAddress:
    """``topic/filter#$.json.path`` — a topic filter and an optional JSON path to the value."""

    topic: str
    json_path: str | None = None

    def __str__(self) -> str:
        return self.topic + (f"#{self.json_path}" if self.json_path else "")


Address = ModbusAddress | BacnetAddress | SnmpAddress | MqttAddress

DEFAULT_HEARTBEAT_S = 300.0

# Field roles, declared once on ``Point`` and read back by ``COLUMNS``, ``METADATA_FIELDS`` and
# ``LIMIT_FIELDS``: "meta" fields travel to the receiver as point metadata; "limit" fields
# travel too and are stored there together as the point's limits. Unmarked fields are how the
# agent acquires the value (address, decoding, polling) and stay on the gateway.
_META: dict[str, Any] = {"role": "meta"}
_LIMIT: dict[str, Any] = {"role": "limit"}
# Most points have no tags: they all share this one read-only mapping instead of an empty dict
# each (64 bytes a point, 6 MB at 100,000 points).
NO_TAGS: Final[Mapping[str, str]] = MappingProxyType({})


def _no_tags() -> Mapping[str, str]:
    return NO_TAGS


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a point was declared, for error messages and `schedule diff`.

    ``line`` is the physical line of a CSV file or the row number in a workbook's ``sheet``.
    """

    file: str
    line: int
    sheet: str | None = None

    def __str__(self) -> str:
        if self.sheet is not None:
            return f"{self.file}:{self.sheet}!{self.line}"
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Point:
    point_id: str
    device: str = field(metadata=_META)
    address: Address = field()
    # required for Modbus; optional elsewhere (values are numbers)
    data_type: DataType | None = field(default=None, metadata=_META)
    byte_order: ByteOrder = ByteOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    units: str = field(default="", metadata=_META)
    description: str = field(default="", metadata=_META)
    poll_interval: float | None = None  # None: the device's default
    deadband: float = 0.0
    heartbeat: float = DEFAULT_HEARTBEAT_S
    writable: bool = field(default=False, metadata=_META)
    min: float | None = field(default=None, metadata=_LIMIT)
    max: float | None = field(default=None, metadata=_LIMIT)
    alarm_hh: float | None = field(default=None, metadata=_LIMIT)
    alarm_h: float | None = field(default=None, metadata=_LIMIT)
    alarm_l: float | None = field(default=None, metadata=_LIMIT)
    alarm_ll: float | None = field(default=None, metadata=_LIMIT)
    alarm_state: float | None = field(default=None, metadata=_LIMIT)
    alarm_priority: AlarmPriority = field(default=AlarmPriority.MEDIUM, metadata=_LIMIT)
    alarm_deadband: float = field(default=0.0, metadata=_LIMIT)
    alarm_delay: float = field(default=0.0, metadata=_LIMIT)
    alarm_clear_delay: float = field(default=0.0, metadata=_LIMIT)
    # marker tags map to ""; read-only (the loader shares one mapping between equal tag sets)
    tags: Mapping[str, str] = field(default_factory=_no_tags, metadata=_META)
    source: SourceRef | None = field(default=None, compare=False)

    def to_engineering(self, raw: float) -> float:
        return raw * self.scale + self.offset

    def to_raw(self, engineering: float) -> float:
        return (engineering - self.offset) / self.scale

    @property
    def has_alarms(self) -> bool:
        return any(
            v is not None
            for v in (self.alarm_hh, self.alarm_h, self.alarm_l, self.alarm_ll, self.alarm_state)
        )


#: Every schedule column, in the order of a schedule's header: one per ``Point`` field.
POINT_COLUMNS: Final[tuple[str, ...]] = tuple(f.name for f in fields(Point) if f.name != "source")
#: The fields that describe a point to the receiver and dashboards (``PointMeta``).
METADATA_FIELDS: Final[tuple[str, ...]] = tuple(
    f.name for f in fields(Point) if f.metadata.get("role") in ("meta", "limit")
)
#: The subset of ``METADATA_FIELDS`` the receiver stores together as a point's limits.
LIMIT_FIELDS: Final[tuple[str, ...]] = tuple(
    f.name for f in fields(Point) if f.metadata.get("role") == "limit"
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated, fully loaded set of points; ``version`` is a content hash of the files."""

    points: tuple[Point, ...]
    version: str
    files: tuple[str, ...] = ()

    def by_id(self) -> dict[str, Point]:
        return {p.point_id: p for p in self.points}

    def for_device(self, device: str) -> list[Point]:
        return [p for p in self.points if p.device == device]

    @property
    def devices(self) -> list[str]:
        return sorted({p.device for p in self.points})
