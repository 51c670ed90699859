"""BACnet/IP driver (bacpypes3): ReadPropertyMultiple in batches, with fallbacks, and writes.

One bacpypes3 ``Application`` per local address, shared by every device polled through it
(kept in ``DriverContext.resources``): two applications on one UDP port both start, and the
kernel then silently delivers each answer to only one of them.

Reads: the group's distinct (object, property, index) references are read with
ReadPropertyMultiple, ``max_per_request`` references per request, one request at a time (small
controllers handle one transaction at a time). When the device

- rejects RPM as an unrecognized service, the driver switches that device to ReadProperty;
- answers that the request/response is too big (segmentation-not-supported, buffer-overflow,
  apdu-too-long), it halves the batch size, down to 1, then switches to ReadProperty;
- answers the whole RPM with an Error (older devices do this when one object is unknown), that
  batch is read with ReadProperty to find the failing point; the device keeps RPM.

Each decision is remembered for the device and logged once. A property that fails inside an
RPM answer spoils only its point (unknown object/property/index → ``bad:config_error``,
anything else → ``bad:device_error``). A device that does not answer fails the rest of the
group at once with ``bad:comm_failure`` instead of waiting for a timeout per request.

Values: reals and unsigned/signed integers as they are, enumerations (binary PV, states) and
booleans as numbers; a null (e.g. a relinquished priority-array slot) is NaN with quality
``uncertain``. Scale/offset are applied, values outside min/max become
``uncertain:out_of_range``. Each point's timestamp is when its response arrived.

Timeouts: bacpypes3 takes the APDU timeout and retry count from the local device object, so
devices sharing a local application share them: the largest ``timeout`` and ``retries`` among
those devices are used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import struct
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import structlog
from bacpypes3.apdu import (
    AbortPDU,
    ConfirmedRequestPDU,
    ErrorPDU,
    ErrorRejectAbortNack,
    ReadPropertyRequest,
    RejectPDU,
)
from bacpypes3.app import Application
from bacpypes3.basetypes import PropertyReference
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier, ObjectType, PropertyIdentifier

from outpost.drivers.bacnet.address import parse_host_port
from outpost.drivers.bacnet.app import LocalApplication, local_app
from outpost.drivers.bacnet.codec import (
    MISSING,
    NO_RESPONSE_REASONS,
    NON_NUMERIC,
    TOO_BIG_REASONS,
    RawError,
    bacnet_error_text,
    decode_rp_ack,
    decode_rpm_ack,
    encode_rpm_request,
    error_quality,
)
from outpost.drivers.bacnet.config import BacnetDeviceConfig
from outpost.drivers.bacnet.writes import BacnetWriter
from outpost.drivers.base import Driver, DriverContext, PointGroup, PollResult, bad_result
from outpost.point_schedules.model import BacnetAddress, Point
from outpost.point_schedules.quality import Quality

log = structlog.get_logger(__name__)

__all__ = ["BacnetDriver"]

_NAN = float("nan")


@dataclass(slots=True)
class _Ref:
    """One distinct (object, property, index) the group reads; ``positions`` share it."""

    objid: ObjectIdentifier
    prop: PropertyIdentifier
    index: int | None
    pref: PropertyReference
    key: tuple[int, int, int, int | None]
    positions: list[int]
    text: str
    rp_request: ConfirmedRequestPDU | None = None  # encoded on first ReadProperty


@dataclass(slots=True)
class _Plan:
    refs: list[_Ref]
    bad_config: list[int]  # positions whose address bacpypes3 cannot express
    scale: array
    offset: array
    lo: array
    hi: array
    identity: bool
    ranged: bool
    requests: dict[tuple[int, int], ConfirmedRequestPDU] = field(default_factory=dict)


class _DeviceDown(Exception):
    pass


@dataclass(slots=True)
class _DeviceState:
    use_rpm: bool = True
    batch: int = 20
    connected: bool = False
    down_logged: bool = False
    logged: set[tuple[str, str]] = field(default_factory=set)


# ---------------------------------------------------------------------------------- the driver


class BacnetDriver(Driver):
    config_model = BacnetDeviceConfig
    config: BacnetDeviceConfig

    def __init__(
        self, device_id: str, config: BacnetDeviceConfig, context: DriverContext | None = None
    ) -> None:
        super().__init__(device_id, config, context)
        self._local = local_app(self.context, config)
        self._local.users += 1
        self._closed = False
        self._peer: Address | None = None
        self._state = _DeviceState(batch=config.max_per_request)
        self._writer = BacnetWriter(device_id, config, self._local, self._peer_address)

    # -- state visible to the agent and tests

    @property
    def connected(self) -> bool:
        return self._state.connected

    @property
    def uses_rpm(self) -> bool:
        """False once the device has been found not to support ReadPropertyMultiple."""
        return self._state.use_rpm

    @property
    def batch_size(self) -> int:
        """References per RPM request currently used for this device."""
        return self._state.batch

    # -- planning

    def prepare(self, group: PointGroup) -> None:
        refs: dict[tuple[int, int, int, int | None], _Ref] = {}
        bad: list[int] = []
        n = len(group.points)
        scale, offset = array("d", [1.0]) * n, array("d", [0.0]) * n
        lo, hi = array("d", [-math.inf]) * n, array("d", [math.inf]) * n
        for pos, point in enumerate(group.points):
            addr = point.address
            if not isinstance(addr, BacnetAddress):
                log.error(
                    "bacnet.bad_address",
                    device=self.device_id,
                    point=point.point_id,
                    address=str(addr),
                )
                bad.append(pos)
                continue
            try:
                otype = ObjectType(
                    int(addr.object_type) if addr.object_type.isdigit() else addr.object_type
                )
                objid = ObjectIdentifier((otype, addr.instance))
                prop = PropertyIdentifier(
                    int(addr.property) if addr.property.isdigit() else addr.property
                )
            except (ValueError, TypeError, KeyError) as exc:
                log.error(
                    "bacnet.bad_address",
                    device=self.device_id,
                    point=point.point_id,
                    address=str(addr),
                    error=str(exc),
                )
                bad.append(pos)
                continue
            key = (int(otype), addr.instance, int(prop), addr.index)
            ref = refs.get(key)
            if ref is None:
                pref = PropertyReference(propertyIdentifier=prop)
                if addr.index is not None:
                    pref.propertyArrayIndex = addr.index
                ref = _Ref(objid, prop, addr.index, pref, key, [], str(addr))
                refs[key] = ref
            ref.positions.append(pos)
            scale[pos], offset[pos] = point.scale, point.offset
            if point.min is not None:
                lo[pos] = point.min
            if point.max is not None:
                hi[pos] = point.max
        group.plan = _Plan(
            refs=list(refs.values()),
            bad_config=bad,
            scale=scale,
            offset=offset,
            lo=lo,
            hi=hi,
            identity=all(s == 1.0 for s in scale) and all(o == 0.0 for o in offset),
            ranged=any(v != -math.inf for v in lo) or any(v != math.inf for v in hi),
        )

    # -- reading

    async def _peer_address(self) -> Address:
        if self._peer is None:
            host, _, port = parse_host_port(self.config.address)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, family=socket.AF_INET
                )
                host = str(infos[0][4][0])
            self._peer = Address(f"{host}:{port}")
        return self._peer

    async def read(self, group: PointGroup) -> PollResult:
        plan: _Plan = group.plan
        if plan is None:
            self.prepare(group)
            plan = group.plan
        n = len(group.points)
        try:
            app = await self._local.app()
            peer = await self._peer_address()
        except OSError as exc:
            self._note_down(str(exc))
            return bad_result(n, Quality.BAD_COMM_FAILURE, time.time())
        result = PollResult(
            array("d", [0.0]) * n, array("d", [_NAN]) * n, array("B", [Quality.BAD]) * n
        )
        now = time.time()
        for pos in plan.bad_config:
            result.ts[pos], result.quality[pos] = now, Quality.BAD_CONFIG_ERROR
        refs = plan.refs
        i, total = 0, len(refs)
        try:
            while i < total:
                if self._state.use_rpm:
                    batch = refs[i : i + self._state.batch]
                    if await self._read_rpm(app, peer, plan, i, batch, result):
                        i += len(batch)
                else:
                    await self._read_rp(app, peer, refs[i], result)
                    i += 1
        except _DeviceDown as exc:
            now = time.time()
            for ref in refs[i:]:
                for pos in ref.positions:
                    result.ts[pos], result.quality[pos] = now, Quality.BAD_COMM_FAILURE
            self._note_down(str(exc))
        else:
            if total:
                self._note_up()
        self._finish(plan, result)
        return result

    def _finish(self, plan: _Plan, result: PollResult) -> None:
        value, quality = result.value, result.quality
        if not plan.identity:
            scale, offset = plan.scale, plan.offset
            for pos in range(len(value)):
                value[pos] = value[pos] * scale[pos] + offset[pos]
        if plan.ranged:
            lo, hi = plan.lo, plan.hi
            for pos in range(len(value)):
                v = value[pos]
                if quality[pos] == Quality.GOOD and not lo[pos] <= v <= hi[pos]:
                    quality[pos] = Quality.UNCERTAIN_OUT_OF_RANGE

    def _store_error(self, ref: _Ref, exc: ErrorPDU, ts: float, result: PollResult) -> None:
        code = str(exc.errorCode)
        q = error_quality(code)
        self._log_once(ref.text, code, "bacnet.property_error", error=bacnet_error_text(exc))
        for pos in ref.positions:
            result.ts[pos], result.value[pos], result.quality[pos] = ts, _NAN, q

    async def _read_rpm(
        self,
        app: LocalApplication,
        peer: Address,
        plan: _Plan,
        start: int,
        batch: list[_Ref],
        result: PollResult,
    ) -> bool:
        """One RPM request. True when the batch is done; False when the plan changed and the
        same references must be read again (smaller batch, or ReadProperty)."""
        key = (start, len(batch))
        template = plan.requests.get(key)
        if template is None:
            template = encode_rpm_request([(ref.objid, ref.pref) for ref in batch])
            plan.requests[key] = template
        try:
            payload = await app.send_raw(peer, template)
        except ErrorRejectAbortNack as exc:
            return await self._rpm_failed(app, peer, batch, result, exc)
        ts = time.time()
        try:
            answers = decode_rpm_ack(payload)
        except (ValueError, IndexError, struct.error) as exc:
            # Not an answer we can take apart: read these references one by one, so only
            # the ones bacpypes3 cannot decode either fail.
            self._log_once("rpm", "decode", "bacnet.rpm_decode_failed", error=str(exc))
            for ref in batch:
                await self._read_rp(app, peer, ref, result)
            return True
        values, quality, stamps = result.value, result.quality, result.ts
        for ref in batch:
            v = answers.get(ref.key, MISSING)
            if v.__class__ is float:
                for pos in ref.positions:
                    stamps[pos], values[pos], quality[pos] = ts, v, Quality.GOOD
                continue
            if v is None:
                q = Quality.UNCERTAIN
            elif isinstance(v, RawError):
                q = error_quality(v.error_code)
                self._log_once(
                    ref.text,
                    v.error_code,
                    "bacnet.property_error",
                    error=f"{v.error_class}: {v.error_code}",
                )
            elif v is MISSING:
                q = Quality.BAD_DEVICE_ERROR
                self._log_once(ref.text, "missing", "bacnet.rpm_result_missing")
            else:
                q = Quality.BAD_CONFIG_ERROR
                self._log_once(ref.text, "not-numeric", "bacnet.value_not_numeric")
            for pos in ref.positions:
                stamps[pos], values[pos], quality[pos] = ts, _NAN, q
        return True

    async def _rpm_failed(
        self, app: Application, peer: Address, batch: list[_Ref], result: PollResult, exc: Any
    ) -> bool:
        state = self._state
        reason = str(getattr(exc, "apduAbortRejectReason", "") or "")
        if isinstance(exc, AbortPDU | RejectPDU) and reason in NO_RESPONSE_REASONS:
            raise _DeviceDown(reason)
        if isinstance(exc, RejectPDU) and reason == "unrecognized-service":
            state.use_rpm = False
            log.warning(
                "bacnet.rpm_unsupported",
                device=self.device_id,
                detail="device rejects ReadPropertyMultiple; using ReadProperty from now on",
            )
            return False
        if reason in TOO_BIG_REASONS:
            if state.batch > 1:
                state.batch = max(1, min(state.batch, len(batch)) // 2)
                log.warning(
                    "bacnet.rpm_batch_reduced",
                    device=self.device_id,
                    reason=reason,
                    batch=state.batch,
                )
            else:
                state.use_rpm = False
                log.warning(
                    "bacnet.rpm_unsupported",
                    device=self.device_id,
                    reason=reason,
                    detail="even single-reference RPM fails; using ReadProperty from now on",
                )
            return False
        # An Error (or an unexpected reject/abort) for the whole request: find the culprit.
        self._log_once(
            "rpm", bacnet_error_text(exc), "bacnet.rpm_error_split", error=bacnet_error_text(exc)
        )
        for ref in batch:
            await self._read_rp(app, peer, ref, result)
        return True

    async def _read_rp(
        self, app: LocalApplication, peer: Address, ref: _Ref, result: PollResult
    ) -> None:
        if ref.rp_request is None:
            request = ReadPropertyRequest(objectIdentifier=ref.objid, propertyIdentifier=ref.prop)
            if ref.index is not None:
                request.propertyArrayIndex = ref.index
            ref.rp_request = request.encode()
        try:
            payload = await app.send_raw(peer, ref.rp_request)
        except ErrorRejectAbortNack as exc:
            ts = time.time()
            if isinstance(exc, ErrorPDU):
                self._store_error(ref, exc, ts, result)
                return
            reason = str(getattr(exc, "apduAbortRejectReason", "") or "")
            if reason in NO_RESPONSE_REASONS:
                raise _DeviceDown(reason) from None
            self._log_once(ref.text, reason, "bacnet.read_failed", error=bacnet_error_text(exc))
            for pos in ref.positions:
                result.ts[pos], result.quality[pos] = ts, Quality.BAD_DEVICE_ERROR
            return
        ts = time.time()
        try:
            value = decode_rp_ack(payload)
        except (ValueError, IndexError, struct.error) as exc:
            self._log_once(ref.text, "decode", "bacnet.decode_failed", error=str(exc))
            value = NON_NUMERIC
        if value.__class__ is float:
            q, v = Quality.GOOD, value
        elif value is None:
            q, v = Quality.UNCERTAIN, _NAN
        else:
            q, v = Quality.BAD_CONFIG_ERROR, _NAN
            self._log_once(ref.text, "not-numeric", "bacnet.value_not_numeric")
        for pos in ref.positions:
            result.ts[pos], result.value[pos], result.quality[pos] = ts, v, q

    def _note_down(self, reason: str) -> None:
        state = self._state
        if state.connected or not state.down_logged:
            log.warning(
                "bacnet.device_down",
                device=self.device_id,
                address=self.config.address,
                reason=reason,
            )
            state.down_logged = True
        state.connected = False

    def _note_up(self) -> None:
        state = self._state
        if not state.connected:
            if state.down_logged:
                log.info("bacnet.device_recovered", device=self.device_id)
            state.down_logged = False
        state.connected = True

    def _log_once(self, what: str, code: str, event: str, **kw: Any) -> None:
        key = (what, code)
        if key in self._state.logged:
            return
        self._state.logged.add(key)
        log.warning(event, device=self.device_id, ref=what, code=code, **kw)

    # -- writing (see writes.py)

    async def write(self, point: Point, value: float, priority: int | None = None) -> None:
        await self._writer.write(point, value, priority)

    async def relinquish(self, point: Point, priority: int | None = None) -> None:
        """Write null at ``priority``: the command at that level is withdrawn."""
        await self._writer.relinquish(point, priority)

    async def read_back(self, point: Point) -> float:
        """Read the point's engineering value now (after a write). Raises WriteError."""
        return await self._writer.read_back(point)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._local.users -= 1
        if self._local.users <= 0:
            self._local.close()
            for key, res in list(self.context.resources.items()):
                if res is self._local:
                    del self.context.resources[key]
