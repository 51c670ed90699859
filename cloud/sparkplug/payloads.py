"""Sparkplug B 3.0 topics and payloads (protobuf, ``sparkplug_b_pb2``).

Topics: ``spBv1.0/<group>/<NBIRTH|NDEATH|NDATA|NCMD>/<edge node>`` and
``spBv1.0/<group>/<DBIRTH|DDEATH|DDATA|DCMD>/<edge node>/<device>``.

Metric datatypes follow the point's schedule ``data_type`` when the value is an integer or a
bit on the wire and no scale/offset turns it into a fraction; everything else is Double (the
agent's values are floats). Per the specification, Int8/16/32 and UInt8/16/32 travel in
``int_value`` (uint32, negative numbers as two's complement), Int64/UInt64 in ``long_value``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from outpost.cloud.sparkplug import sparkplug_b_pb2 as pb
from outpost.point_schedules.model import Point
from outpost.point_schedules.quality import Quality

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"

DataType = pb.DataType
_INT32_TYPES = {pb.Int8, pb.Int16, pb.Int32, pb.UInt8, pb.UInt16, pb.UInt32}
_INT64_TYPES = {pb.Int64, pb.UInt64}
_BY_SCHEDULE = {
    "bool": pb.Boolean,
    "int16": pb.Int16,
    "uint16": pb.UInt16,
    "int32": pb.Int32,
    "uint32": pb.UInt32,
    "int64": pb.Int64,
    "uint64": pb.UInt64,
    "float32": pb.Float,
    "float64": pb.Double,
}

# OPC-style quality codes, as Ignition reads a metric's "Quality" property.
QUALITY_GOOD = 192
QUALITY_UNCERTAIN = 64
QUALITY_BAD = 0


def topic(group: str, kind: str, edge: str, device: str | None = None) -> str:
    base = f"{NAMESPACE}/{group}/{kind}/{edge}"
    return base if device is None else f"{base}/{device}"


def datatype_of(point: Point) -> int:
    """The Sparkplug datatype a point's engineering value has."""
    name = point.data_type.value if point.data_type is not None else None
    if name is None:
        return pb.Double
    if name.startswith("bit") or name == "bool":
        return pb.Boolean
    dt = _BY_SCHEDULE.get(name, pb.Double)
    if (dt in _INT32_TYPES or dt in _INT64_TYPES) and (point.scale != 1.0 or point.offset != 0.0):
        return pb.Double  # a scaled integer is a fraction
    return dt


def opc_quality(code: int) -> int:
    """Outpost quality code (``point_schedules.quality``) → OPC quality."""
    if code == Quality.GOOD:
        return QUALITY_GOOD
    return QUALITY_BAD if code >= Quality.BAD else QUALITY_UNCERTAIN


def set_value(metric: pb.Payload.Metric, datatype: int, value: float | None) -> None:
    """Put ``value`` in the field ``datatype`` calls for (``is_null`` for no/NaN value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        metric.is_null = True
        return
    if datatype == pb.Boolean:
        metric.boolean_value = bool(value)
    elif datatype in _INT32_TYPES:
        metric.int_value = int(value) & 0xFFFFFFFF
    elif datatype in _INT64_TYPES:
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype == pb.Float:
        metric.float_value = float(value)
    elif datatype == pb.String:
        metric.string_value = str(value)
    else:
        metric.double_value = float(value) if math.isfinite(value) else 0.0


def get_value(metric: pb.Payload.Metric, datatype: int | None = None) -> float | str | None:
    """A metric's value as a number (two's complement undone for signed types), or str.
    ``datatype``: from the birth, for a metric that carries none (DDATA, DCMD by alias)."""
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    if field is None:
        return None
    raw = getattr(metric, field)
    dt = metric.datatype if metric.HasField("datatype") else (datatype or pb.Unknown)
    if field == "int_value" and dt in (pb.Int8, pb.Int16, pb.Int32) and raw & 0x80000000:
        return float(raw - (1 << 32))
    if field == "long_value" and dt == pb.Int64 and raw & (1 << 63):
        return float(raw - (1 << 64))
    if field == "string_value":
        return str(raw)
    return float(raw)


def add_properties(metric: pb.Payload.Metric, props: Mapping[str, object]) -> None:
    ps = metric.properties
    for key, value in props.items():
        if value is None:
            continue
        ps.keys.append(key)
        pv = ps.values.add()
        if isinstance(value, bool):
            pv.type, pv.boolean_value = pb.Boolean, value
        elif isinstance(value, int):
            pv.type, pv.int_value = pb.Int32, value & 0xFFFFFFFF
        elif isinstance(value, float):
            pv.type, pv.double_value = pb.Double, value
        else:
            pv.type, pv.string_value = pb.String, str(value)


def properties_of(metric: pb.Payload.Metric) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, pv in zip(metric.properties.keys, metric.properties.values, strict=False):
        field = pv.WhichOneof("value")
        out[key] = None if field is None else getattr(pv, field)
    return out


@dataclass(frozen=True, slots=True)
class PointMetric:
    """One point as a Sparkplug metric: its alias for this session and datatype."""

    point: Point
    alias: int
    datatype: int


def point_birth(metric: pb.Payload.Metric, pm: PointMetric, value: float | None, quality: int,
                ts_ms: int) -> None:  # fmt: skip
    p = pm.point
    metric.name = p.point_id
    metric.alias = pm.alias
    metric.timestamp = ts_ms
    metric.datatype = pm.datatype
    set_value(metric, pm.datatype, value)
    add_properties(
        metric,
        {
            "engUnit": p.units or None,
            "engLow": p.min,
            "engHigh": p.max,
            "Documentation": p.description or None,
            "readOnly": not p.writable,
            "Quality": opc_quality(quality),
        },
    )


def point_data(metric: pb.Payload.Metric, pm: PointMetric, value: float | None, quality: int,
               ts_ms: int, historical: bool) -> None:  # fmt: skip
    # alias only, no name and no datatype (Sparkplug 3.0: both were given in the birth)
    metric.alias = pm.alias
    metric.timestamp = ts_ms
    if historical:
        metric.is_historical = True
    set_value(metric, pm.datatype, value)
    add_properties(metric, {"Quality": opc_quality(quality)})


def decode(payload: bytes) -> pb.Payload:
    return pb.Payload.FromString(payload)
