"""The point schedule as the rest of Outpost sees it: plain, frozen, already validated.

The loader (``outpost.point_schedules.loader``, CSV files and .xlsx workbooks) is the only
producer of these objects; drivers, the alarm engine and the agent consume them. ``Point``
also declares which of its fields are point metadata (``METADATA_FIELDS``, the receiver's
``PointMeta``) and which of those are limits (``LIMIT_FIELDS``). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import Field, FrozenInstanceError, dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal

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
class _Columns:
    """The declaration of ``Point``'s fields: one per schedule column, in header order, with
    their roles and defaults. ``dataclasses.fields(Point)`` answers these; ``Point`` stores
    them compactly (see there)."""

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


@dataclass(frozen=True, slots=True)
class Acquisition:
    """How a point's value is read and when it is stored: one object shared by every point
    with the same settings (a schedule has a handful of distinct ones)."""

    byte_order: ByteOrder = ByteOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    poll_interval: float | None = None
    deadband: float = 0.0
    heartbeat: float = DEFAULT_HEARTBEAT_S
    writable: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """A point's range and alarm settings, shared like ``Acquisition`` (most points have none
    and share ``NO_LIMITS``)."""

    min: float | None = None
    max: float | None = None
    alarm_hh: float | None = None
    alarm_h: float | None = None
    alarm_l: float | None = None
    alarm_ll: float | None = None
    alarm_state: float | None = None
    alarm_priority: AlarmPriority = AlarmPriority.MEDIUM
    alarm_deadband: float = 0.0
    alarm_delay: float = 0.0
    alarm_clear_delay: float = 0.0


DEFAULT_ACQUISITION: Final = Acquisition()
NO_LIMITS: Final = Limits()
# What a Point stores, in the order of ``Point.from_parts``' parameters.
_STORED: Final = (
    "point_id",
    "device",
    "address",
    "data_type",
    "units",
    "description",
    "tags",
    "acquisition",
    "limits",
    "source",
)


class Point:
    """One point of a schedule, frozen. Behaves as a frozen dataclass with one field per
    schedule column (``dataclasses.fields(Point)``, keyword or positional construction in
    column order, equality over every field but ``source``, ``dataclasses.replace``).

    A loaded schedule lives as long as the agent, so a point is stored compactly: its own
    values (id, device, address, type, units, description, tags) in slots, the rest in two
    immutable parts that points with equal settings share (``Acquisition``, ``Limits``; the
    loader shares them, ``Point.from_parts``). 112 bytes a point instead of 248.
    """

    __slots__ = (
        "acquisition",
        "address",
        "data_type",
        "description",
        "device",
        "limits",
        "point_id",
        "source",
        "tags",
        "units",
    )
    # the declaration is _Columns': what dataclasses.fields/replace/is_dataclass read
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]] = _Columns.__dataclass_fields__
    __dataclass_params__: ClassVar[Any] = getattr(_Columns, "__dataclass_params__")  # noqa: B009  # not in the typeshed stubs
    __match_args__ = _Columns.__match_args__

    point_id: str
    device: str
    address: Address
    data_type: DataType | None
    units: str
    description: str
    tags: Mapping[str, str]
    acquisition: Acquisition
    limits: Limits
    source: SourceRef | None

    def __init__(
        self,
        point_id: str,
        device: str,
        address: Address,
        data_type: DataType | None = None,
        byte_order: ByteOrder = ByteOrder.ABCD,
        scale: float = 1.0,
        offset: float = 0.0,
        units: str = "",
        description: str = "",
        poll_interval: float | None = None,
        deadband: float = 0.0,
        heartbeat: float = DEFAULT_HEARTBEAT_S,
        writable: bool = False,
        min: float | None = None,
        max: float | None = None,
        alarm_hh: float | None = None,
        alarm_h: float | None = None,
        alarm_l: float | None = None,
        alarm_ll: float | None = None,
        alarm_state: float | None = None,
        alarm_priority: AlarmPriority = AlarmPriority.MEDIUM,
        alarm_deadband: float = 0.0,
        alarm_delay: float = 0.0,
        alarm_clear_delay: float = 0.0,
        tags: Mapping[str, str] = NO_TAGS,
        source: SourceRef | None = None,
    ) -> None:
        acquisition = Acquisition(
            byte_order, scale, offset, poll_interval, deadband, heartbeat, writable
        )
        limits = Limits(
            min,
            max,
            alarm_hh,
            alarm_h,
            alarm_l,
            alarm_ll,
            alarm_state,
            alarm_priority,
            alarm_deadband,
            alarm_delay,
            alarm_clear_delay,
        )
        self._set(
            point_id,
            device,
            address,
            data_type,
            units,
            description,
            tags,
            DEFAULT_ACQUISITION if acquisition == DEFAULT_ACQUISITION else acquisition,
            NO_LIMITS if limits == NO_LIMITS else limits,
            source,
        )

    @classmethod
    def from_parts(
        cls,
        point_id: str,
        device: str,
        address: Address,
        data_type: DataType | None,
        units: str,
        description: str,
        tags: Mapping[str, str],
        acquisition: Acquisition,
        limits: Limits,
        source: SourceRef | None,
    ) -> Point:
        """A point made of parts the caller shares between points (the loader)."""
        point = object.__new__(cls)
        # the slots' own setters: __setattr__ refuses, the object being frozen
        _SET_POINT_ID(point, point_id)
        _SET_DEVICE(point, device)
        _SET_ADDRESS(point, address)
        _SET_DATA_TYPE(point, data_type)
        _SET_UNITS(point, units)
        _SET_DESCRIPTION(point, description)
        _SET_TAGS(point, tags)
        _SET_ACQUISITION(point, acquisition)
        _SET_LIMITS(point, limits)
        _SET_SOURCE(point, source)
        return point

    def _set(self, *values: object) -> None:
        for name, value in zip(_STORED, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _compared(self) -> tuple[object, ...]:
        return (
            self.point_id,
            self.device,
            self.address,
            self.data_type,
            self.units,
            self.description,
            self.tags,
            self.acquisition,
            self.limits,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Point) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()

    # Unhashable, as a frozen dataclass with a mapping field is.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(_Columns))
        return f"Point({shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        # a mappingproxy does not pickle: the tags travel as a dict
        values = ((name, getattr(self, name)) for name in _STORED)
        return (_unpickle_point, tuple(dict(v) if n == "tags" else v for n, v in values))

    # -------------------------------------------------------------- the shared parts' fields

    @property
    def byte_order(self) -> ByteOrder:
        return self.acquisition.byte_order

    @property
    def scale(self) -> float:
        return self.acquisition.scale

    @property
    def offset(self) -> float:
        return self.acquisition.offset

    @property
    def poll_interval(self) -> float | None:
        return self.acquisition.poll_interval

    @property
    def deadband(self) -> float:
        return self.acquisition.deadband

    @property
    def heartbeat(self) -> float:
        return self.acquisition.heartbeat

    @property
    def writable(self) -> bool:
        return self.acquisition.writable

    @property
    def min(self) -> float | None:
        return self.limits.min

    @property
    def max(self) -> float | None:
        return self.limits.max

    @property
    def alarm_hh(self) -> float | None:
        return self.limits.alarm_hh

    @property
    def alarm_h(self) -> float | None:
        return self.limits.alarm_h

    @property
    def alarm_l(self) -> float | None:
        return self.limits.alarm_l

    @property
    def alarm_ll(self) -> float | None:
        return self.limits.alarm_ll

    @property
    def alarm_state(self) -> float | None:
        return self.limits.alarm_state

    @property
    def alarm_priority(self) -> AlarmPriority:
        return self.limits.alarm_priority

    @property
    def alarm_deadband(self) -> float:
        return self.limits.alarm_deadband

    @property
    def alarm_delay(self) -> float:
        return self.limits.alarm_delay

    @property
    def alarm_clear_delay(self) -> float:
        return self.limits.alarm_clear_delay

    # ------------------------------------------------------------------------------ behaviour

    def to_engineering(self, raw: float) -> float:
        acquisition = self.acquisition
        return raw * acquisition.scale + acquisition.offset

    def to_raw(self, engineering: float) -> float:
        acquisition = self.acquisition
        return (engineering - acquisition.offset) / acquisition.scale

    @property
    def has_alarms(self) -> bool:
        limits = self.limits
        return any(
            v is not None
            for v in (
                limits.alarm_hh,
                limits.alarm_h,
                limits.alarm_l,
                limits.alarm_ll,
                limits.alarm_state,
            )
        )


_SET_POINT_ID = Point.__dict__["point_id"].__set__
_SET_DEVICE = Point.__dict__["device"].__set__
_SET_ADDRESS = Point.__dict__["address"].__set__
_SET_DATA_TYPE = Point.__dict__["data_type"].__set__
_SET_UNITS = Point.__dict__["units"].__set__
_SET_DESCRIPTION = Point.__dict__["description"].__set__
_SET_TAGS = Point.__dict__["tags"].__set__
_SET_ACQUISITION = Point.__dict__["acquisition"].__set__
_SET_LIMITS = Point.__dict__["limits"].__set__
_SET_SOURCE = Point.__dict__["source"].__set__


def _unpickle_point(*values: Any) -> Point:
    stored = dict(zip(_STORED, values, strict=True))
    stored["tags"] = MappingProxyType(stored["tags"]) if stored["tags"] else NO_TAGS
    return Point.from_parts(**stored)


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
    # built on first use and shared by every holder: at 100,000 points a second id dict costs
    # ≈ 4 MB for the agent's lifetime
    _index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def by_id(self) -> dict[str, Point]:
        return {p.point_id: p for p in self.points}

    def index(self) -> dict[str, int]:
        """point_id -> position in ``points``; one dict per schedule, built once (read-only)."""
        index = self._index
        if index is None:
            index = {p.point_id: i for i, p in enumerate(self.points)}
            object.__setattr__(self, "_index", index)
        return index

    def points_by_id(self) -> PointsById:
        """A read-only point_id -> Point view over ``points`` through :meth:`index`."""
        return PointsById(self.points, self.index())

    def for_device(self, device: str) -> list[Point]:
        return [p for p in self.points if p.device == device]

    @property
    def devices(self) -> list[str]:
        return sorted({p.device for p in self.points})


class PointsById(Mapping[str, Point]):
    """point_id -> Point without a dict of its own: the schedule's tuple through its index."""

    __slots__ = ("_index", "_points")

    def __init__(self, points: tuple[Point, ...], index: Mapping[str, int]) -> None:
        self._points = points
        self._index = index

    def __getitem__(self, point_id: str) -> Point:
        return self._points[self._index[point_id]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)
