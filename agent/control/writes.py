"""Guarded operator writes: refuse anything doubtful before a single byte is sent, then write,
read back, compare, and record the result and the actor as an event.

Refusals (``WriteRefused``, nothing sent): unknown point, point not ``writable``, value not a
finite number, outside the point's ``min``/``max``, not representable in the point's data type
(e.g. 70000 into uint16, 1.5 raw units into int16, anything but 0/1 into bool or a bit), a
read-only Modbus table, no driver for the device, the device down, a BACnet priority outside
1..16.

Events: one per attempt, refusals included (an audit trail shows what was tried). Kind
``operator.write`` when a person acted, ``write`` when the actor is automatic (``mode:…`` for
failsafe/entry writes, ``system``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from outpost.drivers.base import Driver, SupportsReadBack, SupportsRelinquish, WriteError
from outpost.fsm.actions import WriteOutcome, WriteRefused, WriteResult
from outpost.fsm.clock import Clock, Emit
from outpost.point_schedules.model import DataType, ModbusAddress, Point

__all__ = [
    "UnknownPoint",
    "WriteOutcome",
    "WriteRefused",
    "WriteService",
    "check_value",
    "read_back_tolerance",
]

log = structlog.get_logger(__name__)

_INT_RANGE: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
AUTOMATIC_ACTORS = ("mode:", "system")


class UnknownPoint(WriteRefused):
    """No point of that id in the loaded schedule."""


def _is_bit(point: Point) -> bool:
    address = point.address
    if isinstance(address, ModbusAddress) and (address.is_bit_table or address.bit is not None):
        return True
    return point.data_type is DataType.BOOL


def check_value(point: Point, value: float) -> float:
    """The raw value that would be written, or WriteRefused saying why it cannot be."""
    pid = point.point_id
    units = f" {point.units}" if point.units else ""
    if not isinstance(value, int | float):
        raise WriteRefused(f"{pid}: value must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise WriteRefused(f"{pid}: value must be a finite number, got {value}")
    if point.min is not None and value < point.min:
        raise WriteRefused(f"{pid}: {value:g}{units} is below the point's min {point.min:g}{units}")
    if point.max is not None and value > point.max:
        raise WriteRefused(f"{pid}: {value:g}{units} is above the point's max {point.max:g}{units}")
    if point.scale == 0:
        raise WriteRefused(f"{pid}: scale is 0, the raw value cannot be computed")
    raw = point.to_raw(value)
    if _is_bit(point):
        if raw not in (0.0, 1.0):
            raise WriteRefused(f"{pid}: a bool/bit point takes 0 or 1, got {value:g}")
        return raw
    data_type = point.data_type
    if data_type in _INT_RANGE:
        whole = round(raw)
        if abs(raw - whole) > 1e-6 * max(1.0, abs(raw)):
            scale = f" (raw {raw:g} at scale {point.scale:g}, offset {point.offset:g})"
            raise WriteRefused(
                f"{pid}: {value:g}{units} is not a whole number of raw units for a "
                f"{data_type.value} point{scale if point.scale != 1 or point.offset else ''}"
            )
        lo, hi = _INT_RANGE[data_type]
        if not lo <= whole <= hi:
            raise WriteRefused(
                f"{pid}: {value:g}{units} gives raw {whole}, outside the {data_type.value} "
                f"range {lo}..{hi}"
            )
        return float(whole)
    if data_type is DataType.FLOAT32 and abs(raw) > _FLOAT32_MAX:
        raise WriteRefused(f"{pid}: {value:g}{units} does not fit a float32")
    return raw


def read_back_tolerance(point: Point, value: float) -> float:
    """How far a read-back may be from the written value and still be the same value: half a
    raw unit for integers (one raw step is a real difference), float32 precision for float32,
    rounding noise otherwise."""
    scale = abs(point.scale) or 1.0
    if _is_bit(point):
        return 0.5 * scale
    data_type = point.data_type
    if data_type in _INT_RANGE:
        return 0.5 * scale
    if data_type is DataType.FLOAT32:
        return abs(value) * 2e-7 + scale * 1e-38 + 1e-9
    return abs(value) * 1e-9 + 1e-12


class WriteService:
    def __init__(
        self,
        points: Mapping[str, Point],
        drivers: Mapping[str, Driver],
        *,
        emit: Emit,
        device_up: Callable[[str], bool],
        clock: Clock,
    ) -> None:
        self._points = points
        self._drivers = drivers
        self._emit = emit
        self._device_up = device_up
        self._clock = clock

    def set_points(self, points: Mapping[str, Point]) -> None:
        """A new schedule was loaded."""
        self._points = points

    def set_drivers(self, drivers: Mapping[str, Driver]) -> None:
        self._drivers = drivers

    def check(self, point_id: str, value: float, priority: int | None = None) -> Point:
        """Every refusal rule; returns the point when the write may go ahead."""
        point = self._points.get(point_id)
        if point is None:
            raise UnknownPoint(f"unknown point {point_id!r}")
        if not point.writable:
            raise WriteRefused(
                f"{point_id} is not writable (the schedule's writable column is false)"
            )
        check_value(point, value)
        address = point.address
        if isinstance(address, ModbusAddress) and address.table in ("ir", "di"):
            kind = "input register" if address.table == "ir" else "discrete input"
            raise WriteRefused(f"{point_id}: {address} is a {kind}, read-only in Modbus")
        if priority is not None and not 1 <= priority <= 16:
            raise WriteRefused(f"{point_id}: priority must be 1..16 (BACnet), got {priority}")
        if point.device not in self._drivers:
            raise WriteRefused(f"{point_id}: device {point.device} has no running driver")
        if not self._device_up(point.device):
            raise WriteRefused(
                f"{point_id}: device {point.device} is down (no answer to its last poll); "
                "nothing was sent"
            )
        return point

    async def write(
        self,
        point_id: str,
        value: float,
        *,
        actor: str,
        priority: int | None = None,
        verify: bool = True,
    ) -> WriteOutcome:
        try:
            point = self.check(point_id, value, priority)
        except WriteRefused as exc:
            self._event(
                self._clock.now(),
                actor,
                point_id,
                {
                    "value": _num(value),
                    "priority": priority,
                    "result": "refused",
                    "message": str(exc),
                },
            )
            raise
        value = float(value)
        driver = self._drivers[point.device]
        result: WriteResult
        read_back: float | None = None
        message = ""
        try:
            await driver.write(point, value, priority)
        except WriteError as exc:
            result, message = "failed", str(exc)
        except (OSError, TimeoutError) as exc:
            result, message = "failed", f"{point_id}: write failed: {exc!r}"
        else:
            if not verify:
                result = "sent"
            elif not isinstance(driver, SupportsReadBack):
                result, message = "unverified", f"{point.device}: driver cannot read back"
            else:
                try:
                    read_back = float(await driver.read_back(point))
                except (WriteError, OSError, TimeoutError) as exc:
                    result, message = "failed", f"written, but the read-back failed: {exc}"
                else:
                    if abs(read_back - value) <= read_back_tolerance(point, value):
                        result = "ok"
                    else:
                        result = "mismatch"
                        message = (
                            f"{point_id}: wrote {value:g}, read back {read_back:g}"
                            f"{' ' + point.units if point.units else ''}"
                        )
        return self._finish(
            point,
            value,
            result,
            actor,
            priority,
            read_back,
            message,
            {"value": value, "verify": verify},
        )

    async def relinquish(
        self, point_id: str, *, actor: str, priority: int | None = None
    ) -> WriteOutcome:
        """BACnet: release this agent's command at ``priority`` (write null there), so the next
        priority in the device's array takes over. Reported with the value read back after."""
        point = self._points.get(point_id)
        try:
            if point is None:
                raise UnknownPoint(f"unknown point {point_id!r}")
            if not point.writable:
                raise WriteRefused(
                    f"{point_id} is not writable (the schedule's writable column is false)"
                )
            if priority is not None and not 1 <= priority <= 16:
                raise WriteRefused(f"{point_id}: priority must be 1..16 (BACnet), got {priority}")
            driver = self._drivers.get(point.device)
            if not isinstance(driver, SupportsRelinquish):
                raise WriteRefused(
                    f"{point_id}: relinquish is a BACnet command; device {point.device} "
                    "is not a BACnet device"
                )
            if not self._device_up(point.device):
                raise WriteRefused(f"{point_id}: device {point.device} is down; nothing was sent")
        except WriteRefused as exc:
            self._event(
                self._clock.now(),
                actor,
                point_id,
                {
                    "relinquish": True,
                    "priority": priority,
                    "result": "refused",
                    "message": str(exc),
                },
            )
            raise
        read_back: float | None = None
        message = ""
        try:
            await driver.relinquish(point, priority)
        except (WriteError, OSError, TimeoutError) as exc:
            result: WriteResult = "failed"
            message = str(exc)
        else:
            result = "sent"
            try:
                read_back = float(await driver.read_back(point))
            except (WriteError, OSError, TimeoutError) as exc:
                message = f"relinquished; read-back failed: {exc}"
        return self._finish(
            point, math.nan, result, actor, priority, read_back, message, {"relinquish": True}
        )

    def _finish(
        self,
        point: Point,
        value: float,
        result: WriteResult,
        actor: str,
        priority: int | None,
        read_back: float | None,
        message: str,
        extra: dict[str, Any],
    ) -> WriteOutcome:
        """One outcome, one event and one log line for every write or relinquish that was sent."""
        outcome = WriteOutcome(
            point_id=point.point_id,
            value=value,
            result=result,
            actor=actor,
            ts=self._clock.now(),
            read_back=read_back,
            message=message,
            priority=priority,
            device=point.device,
            units=point.units,
        )
        detail = {
            "device": point.device,
            **{k: _num(v) if k == "value" else v for k, v in extra.items()},
            "units": point.units,
            "priority": priority,
            "result": result,
            "read_back": _num(read_back),
            "message": message,
        }
        self._event(outcome.ts, actor, point.point_id, detail)
        (log.info if outcome.ok else log.warning)(
            "write.done",
            point=point.point_id,
            value=_num(value),
            result=result,
            actor=actor,
            relinquish=bool(extra.get("relinquish")),
        )
        return outcome

    def _event(self, ts: float, actor: str, point_id: str, detail: dict[str, Any]) -> None:
        kind = "write" if actor.startswith(AUTOMATIC_ACTORS) else "operator.write"
        try:
            self._emit(ts, kind, point_id, actor, {"point_id": point_id, **detail})
        except Exception as exc:
            log.error("write.event_failed", point=point_id, error=str(exc), detail=detail)


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
