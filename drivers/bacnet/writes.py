"""Writes, relinquishes and read-backs of one BACnet device.

A write goes to the property's priority array at the point's (or the device's default) priority;
binary objects take 0/1 and multi-state objects a state number 1, 2, … at present-value. A
relinquish writes null at a priority so the next one takes over. ``read_back`` reads the value
the device holds now, so the agent can verify a write at once. Every failure is a
``WriteError`` whose message names the device, the point and what the device said.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from bacpypes3.apdu import ErrorRejectAbortNack
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Null, ObjectIdentifier, ObjectType, PropertyIdentifier

from outpost.drivers.bacnet.app import BacnetLocalApp
from outpost.drivers.bacnet.codec import NO_RESPONSE_REASONS, bacnet_error_text, to_number
from outpost.drivers.bacnet.config import BacnetDeviceConfig
from outpost.drivers.base import WriteError
from outpost.point_schedules.model import BacnetAddress, Point

log = structlog.get_logger(__name__)


_BINARY_TYPES = frozenset({"binary-input", "binary-output", "binary-value"})
_MULTISTATE_TYPES = frozenset({"multi-state-input", "multi-state-output", "multi-state-value"})


class BacnetWriter:
    """Sends one device's writes through the shared local application."""

    def __init__(
        self,
        device_id: str,
        config: BacnetDeviceConfig,
        local: BacnetLocalApp,
        peer_address: Callable[[], Awaitable[Address]],
    ) -> None:
        self.device_id = device_id
        self.config = config
        self._local = local
        self._peer_address = peer_address

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
            if reason in NO_RESPONSE_REASONS:
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
