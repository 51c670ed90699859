"""SNMP driver (v1, v2c, v3).

Work is per request: the points of a group are cut into GET requests of at most
``max_varbinds`` OIDs each (fewer, for good, after a device answers tooBig), sent a few at a
time, and each response is decoded in one pass.

v1/v2c GETs, the hot path, go through ``outpost.drivers.snmp.ber``: varbinds encoded once at prepare
time, one shared UDP socket, responses walked byte by byte (about 30x less CPU than pysnmp's
generic pyasn1 codec). v3 (USM authentication and privacy) and SET use the pysnmp engine
shared through ``DriverContext.resources``, calling its command generator directly with
numeric OIDs (the high-level ``get_cmd`` resolves every varbind through a MIB view, pure
overhead without MIBs).

UDP gives no connection state: a device that is down, a wrong community and wrong v3
credentials (with some agents) all look the same, namely no answer. The driver says so in
one log line when a device stops answering, not once per poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pyasn1.type import univ
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.hlapi.v3arch.asyncio import CommunityData, UdpTransportTarget, UsmUserData
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.proto import errind, rfc1902, rfc1905

from outpost.drivers.base import (
    Driver,
    DriverContext,
    PointGroup,
    PollResult,
    WriteError,
)
from outpost.drivers.snmp import ber
from outpost.drivers.snmp.ber import FastUdp
from outpost.drivers.snmp.config import SnmpConfigError, SnmpDeviceConfig, secret
from outpost.point_schedules.model import Point, SnmpAddress
from outpost.point_schedules.quality import Quality

log = structlog.get_logger(__name__)

__all__ = ["SnmpDriver", "decode_value", "shared_engine"]

_ENGINE_KEY = "snmp.engine"
_FAST_KEY = "snmp.fast_udp"
_NAN = float("nan")
# Error-status values of a response PDU (RFC 3416 / RFC 1157).
_TOO_BIG = 1
_NO_SUCH_NAME = 2  # v1 only: the errorIndex names the OID the agent does not have
_MISSING = (rfc1905.NoSuchObject, rfc1905.NoSuchInstance, rfc1905.EndOfMibView)
_CREDENTIAL_ERRORS = (
    errind.UnknownUserName,
    errind.WrongDigest,
    errind.AuthenticationFailure,
    errind.AuthenticationError,
    errind.DecryptionError,
    errind.UnknownSecurityName,
    errind.UnsupportedSecurityLevel,
    errind.UnsupportedAuthProtocol,
    errind.UnsupportedPrivProtocol,
)


class _Mismatch:
    """Marks a response varbind whose OID is not the one asked for (a broken agent)."""


class _SharedEngine:
    """The one SnmpEngine of a runtime; ``DriverContext.aclose`` calls ``close``."""

    def __init__(self) -> None:
        self.engine = SnmpEngine()
        self.lcd = CommandGeneratorLcdConfigurator()
        self.get = cmdgen.GetCommandGenerator()
        self.set = cmdgen.SetCommandGenerator()

    def close(self) -> None:
        self.engine.close_dispatcher()


def shared_engine(context: DriverContext, credentials: str = "") -> _SharedEngine:
    """The runtime's SNMP engine, created on first use.

    pysnmp keeps one USM entry per v3 user name in an engine, so devices that share a user
    name but not its keys (common: one "monitor" user, per-device keys) each need an engine
    of their own: ``credentials`` is a fingerprint of the v3 keys, empty for v1/v2c.
    """
    key = f"{_ENGINE_KEY}:{credentials}" if credentials else _ENGINE_KEY
    shared = context.resources.get(key)
    if shared is None:
        shared = context.resources[key] = _SharedEngine()
    return shared


def _fingerprint(auth: CommunityData | UsmUserData) -> str:
    if not isinstance(auth, UsmUserData):
        return ""
    material = "\0".join(
        str(x)
        for x in (
            auth.userName,
            auth.authentication_protocol,
            auth.authentication_key,
            auth.privacy_protocol,
            auth.privacy_key,
        )
    )
    return "v3-" + hashlib.sha256(material.encode()).hexdigest()[:16]


def decode_value(value: Any) -> float | None:
    """An SNMP value as a number, or None when it is not one (missing, text, address)."""
    if isinstance(value, univ.Integer):  # Integer32, Counter32/64, Gauge32, TimeTicks, Unsigned32
        return float(int(value))
    if isinstance(value, univ.OctetString) and not isinstance(value, rfc1902.IpAddress):
        try:
            return float(bytes(value).decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return None
    return None


@dataclass(slots=True)
class _Plan:
    oid_text: list[str]
    oids: list[univ.ObjectIdentifier]  # for the pysnmp path (v3)
    varbinds: list[bytes]  # request varbinds, BER-encoded once (v1/v2c fast path)
    oid_tlvs: list[bytes]  # to check that the response answers what was asked
    scale: array
    offset: array
    lo: array
    hi: array
    batch: int  # OIDs per request; shrinks for good when the device answers tooBig
    batches: list[tuple[int, int]] = field(default_factory=list)

    def rebatch(self, size: int) -> None:
        self.batch = max(1, size)
        n = len(self.oids)
        self.batches = [(i, min(i + self.batch, n)) for i in range(0, n, self.batch)]


@dataclass(slots=True)
class _Outcome:
    """What one GET request produced, before it is written into the result arrays.

    ``items`` holds per varbind: (number or None, missing?, SNMP type for SET, raw for logs).
    """

    error: Any = None  # errorIndication (timeout, credentials) or None
    status: int = 0
    index: int = 0
    items: list[tuple[float | None, bool, type | None, Any]] = field(default_factory=list)
    varbinds: list[tuple[Any, Any]] = field(default_factory=list)  # pysnmp path, undecoded


@dataclass(slots=True, frozen=True)
class _Fast:
    """Where and how to send v1/v2c GETs on the shared fast UDP endpoint."""

    addr: tuple[str, int]
    version: int
    community: bytes
    udp: FastUdp


_TAG_TYPES: dict[int, type] = {
    ber.TAG_INTEGER: rfc1902.Integer32,
    ber.TAG_COUNTER32: rfc1902.Counter32,
    ber.TAG_GAUGE32: rfc1902.Gauge32,
    ber.TAG_TIMETICKS: rfc1902.TimeTicks,
    ber.TAG_COUNTER64: rfc1902.Counter64,
    ber.TAG_UINTEGER32: rfc1902.Unsigned32,
    ber.TAG_OCTET_STRING: rfc1902.OctetString,
}


class SnmpDriver(Driver):
    config_model = SnmpDeviceConfig
    config: SnmpDeviceConfig

    def __init__(
        self, device_id: str, config: SnmpDeviceConfig, context: DriverContext | None = None
    ) -> None:
        super().__init__(device_id, config, context)
        self._target: str | None = None
        self._engine: _SharedEngine | None = None
        self._fast: _Fast | None = None
        self._setup_lock = asyncio.Lock()
        self._config_error: str | None = None
        self._connected = False
        self._silent_logged = False
        self._credentials_logged = False
        self._types: dict[str, type] = {}  # OID → SNMP type last read, for SET

    @property
    def connected(self) -> bool:
        return self._connected

    # -------------------------------------------------------------------------------- setup

    def prepare(self, group: PointGroup) -> None:
        group.plan = self._plan_for(group.points)

    def _plan_for(self, points: list[Point]) -> _Plan:
        texts = []
        for p in points:
            if not isinstance(p.address, SnmpAddress):
                raise ValueError(f"point {p.point_id}: not an SNMP address: {p.address}")
            texts.append(p.address.oid)
        plan = _Plan(
            oid_text=texts,
            oids=[univ.ObjectIdentifier(t) for t in texts],
            varbinds=[ber.encode_varbind(t) for t in texts],
            oid_tlvs=[ber.encode_oid(t) for t in texts],
            scale=array("d", (p.scale for p in points)),
            offset=array("d", (p.offset for p in points)),
            lo=array("d", (-float("inf") if p.min is None else p.min for p in points)),
            hi=array("d", (float("inf") if p.max is None else p.max for p in points)),
            batch=self.config.max_varbinds,
        )
        plan.rebatch(self.config.max_varbinds)
        return plan

    async def _route(self) -> _Fast | str | None:
        """How GETs reach the device: the fast v1/v2c path where possible, else the pysnmp
        engine's target. None when the config is unusable or the host does not resolve."""
        if self._fast is not None:
            return self._fast
        if self.config.version == "3":
            return await self._ensure_target()
        if self._config_error is not None:
            return None
        async with self._setup_lock:
            if self._fast is not None or self._config_error is not None:
                return self._fast
            try:
                community = secret(
                    "community", self.config.community_env, self.config.community_file
                )
                infos = await asyncio.get_running_loop().getaddrinfo(
                    self.config.host,
                    self.config.port,
                    family=socket.AF_INET,
                    type=socket.SOCK_DGRAM,
                )
            except (SnmpConfigError, OSError) as exc:
                self._setup_failed(exc)
                return None
            udp = self.context.resources.get(_FAST_KEY)
            if udp is None:
                udp = self.context.resources[_FAST_KEY] = FastUdp()
            addr = infos[0][4]
            self._fast = _Fast(
                (str(addr[0]), int(addr[1])),
                0 if self.config.version == "1" else 1,
                community.encode("utf-8"),
                udp,
            )
            return self._fast

    def _setup_failed(self, exc: BaseException) -> None:
        """A config error sticks (points read bad:config_error); anything else, e.g. name
        resolution, is retried at the next poll."""
        if isinstance(exc, SnmpConfigError):
            self._config_error = str(exc)
            log.error("snmp.config_error", device=self.device_id, error=self._config_error)
        else:
            log.warning(
                "snmp.resolve_failed", device=self.device_id, host=self.config.host, error=str(exc)
            )
        return None

    async def _ensure_target(self) -> str | None:
        """The engine's target name for this device, configured once; None on a config error
        (logged once, the points read ``bad:config_error``)."""
        if self._target is not None or self._config_error is not None:
            return self._target
        async with self._setup_lock:
            if self._target is not None or self._config_error is not None:
                return self._target
            try:
                auth = self.config.auth_data()
                transport = await UdpTransportTarget.create(
                    (self.config.host, self.config.port),
                    timeout=self.config.timeout,
                    retries=self.config.retries,
                )
            except Exception as exc:  # pysnmp wraps resolution errors in its own types
                self._setup_failed(exc)
                return None
            shared = self._engine = shared_engine(self.context, _fingerprint(auth))
            addr_name, _params = shared.lcd.configure(
                shared.engine, auth, transport, self.config.context_name.encode()
            )
            self._target = addr_name
            return addr_name

    # --------------------------------------------------------------------------------- read

    async def read(self, group: PointGroup) -> PollResult:
        plan: _Plan = group.plan
        n = len(plan.oids)
        result = PollResult.empty(n)
        route = await self._route()
        if route is None:
            q = Quality.BAD_CONFIG_ERROR if self._config_error else Quality.BAD_COMM_FAILURE
            _fill_indexes(result, range(n), time.time(), q)
            return result
        started = time.monotonic()
        batches = list(plan.batches)
        sem = asyncio.Semaphore(self.config.max_in_flight)

        async def one(lo: int, hi: int) -> tuple[bool, list[int]]:
            async with sem:
                return await self._read_range(plan, route, lo, hi, result)

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(lo, hi)) for lo, hi in batches]
        answered = False
        timed_out: list[int] = []
        for task in tasks:
            got_answer, lost = task.result()
            answered = answered or got_answer
            timed_out.extend(lost)
        if timed_out and not answered:
            # No answer to any request: the device is unreachable (or ignores our credentials).
            for i in timed_out:
                result.quality[i] = Quality.BAD_COMM_FAILURE
        self._note_contact(answered, bool(timed_out), group)
        log.debug(
            "poll.done",
            device=self.device_id,
            points=n,
            requests=len(batches),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return result

    def _note_contact(self, answered: bool, silent: bool, group: PointGroup) -> None:
        if answered:
            if not self._connected and self._silent_logged:
                log.info("snmp.device_answering", device=self.device_id, host=self.config.host)
            self._connected = True
            self._silent_logged = False
            return
        self._connected = False
        if silent and not self._silent_logged:
            self._silent_logged = True
            who = (
                f"community from {self.config.community_env or self.config.community_file}"
                if self.config.version != "3"
                else f"v3 user {self.config.user!r} and its keys"
            )
            log.warning(
                "snmp.no_response",
                device=self.device_id,
                host=f"{self.config.host}:{self.config.port}",
                version=self.config.version,
                points=len(group.points),
                hint=(
                    "no answer within timeout x (retries+1): the device is down or unreachable, "
                    f"OR it silently drops our requests because the credentials are wrong "
                    f"(check the {who} and the agent's access list)"
                ),
            )

    async def _read_range(
        self, plan: _Plan, route: _Fast | str, lo: int, hi: int, result: PollResult
    ) -> tuple[bool, list[int]]:
        """GET points [lo, hi) into ``result``; split on tooBig, drop v1 noSuchName OIDs.

        Returns whether the device answered at all and the indexes that timed out.
        """
        answered = False
        timed_out: list[int] = []
        pending = [(lo, hi)]
        while pending:
            a, b = pending.pop()
            indexes = list(range(a, b))
            while indexes:
                out = await self._get(route, plan, indexes)
                now = time.time()
                if out.error is not None:
                    if isinstance(out.error, errind.RequestTimedOut):
                        _fill_indexes(result, indexes, now, Quality.BAD_TIMEOUT)
                        timed_out.extend(indexes)
                    elif isinstance(out.error, errind.TooBig) and len(indexes) > 1:
                        self._split(plan, indexes, pending)
                    elif isinstance(out.error, _CREDENTIAL_ERRORS):
                        answered = True
                        self._log_credentials(out.error)
                        _fill_indexes(result, indexes, now, Quality.BAD_CONFIG_ERROR)
                    else:
                        log.warning(
                            "snmp.request_failed", device=self.device_id, error=str(out.error)
                        )
                        _fill_indexes(result, indexes, now, Quality.BAD_COMM_FAILURE)
                    break
                answered = True
                if out.status == _TOO_BIG and len(indexes) > 1:
                    self._split(plan, indexes, pending)
                    break
                if out.status == _NO_SUCH_NAME and 1 <= out.index <= len(indexes):
                    missing = indexes.pop(out.index - 1)
                    _fill_indexes(result, [missing], now, Quality.BAD_CONFIG_ERROR)
                    continue
                if out.status != 0:
                    log.warning(
                        "snmp.error_status",
                        device=self.device_id,
                        status=_status_name(out.status),
                        index=out.index,
                    )
                    _fill_indexes(result, indexes, now, Quality.BAD_DEVICE_ERROR)
                    break
                self._decode(plan, indexes, out.items, result, now)
                break
        return answered, timed_out

    def _log_credentials(self, error: Any) -> None:
        if self._credentials_logged:
            return
        self._credentials_logged = True
        log.error(
            "snmp.credentials_rejected",
            device=self.device_id,
            error=str(error),
            user=self.config.user,
            hint="the device answered but refused our v3 user or keys",
        )

    def _split(self, plan: _Plan, indexes: list[int], pending: list[tuple[int, int]]) -> None:
        # Indexes of one request are contiguous unless v1 noSuchName removed some; splitting
        # the original range again is harmless (the removed OIDs fail again, cheaply).
        a, b = indexes[0], indexes[-1] + 1
        half = max(1, len(indexes) // 2)
        if half < plan.batch:
            log.info(
                "snmp.too_big",
                device=self.device_id,
                varbinds=len(indexes),
                now_per_request=half,
                hint="the device's response buffer is small; remembering the smaller size",
            )
            plan.rebatch(half)
        mid = a + (b - a) // 2
        pending.append((mid, b))
        pending.append((a, mid))

    def _decode(
        self,
        plan: _Plan,
        indexes: list[int],
        items: list[tuple[float | None, bool, type | None, Any]],
        result: PollResult,
        now: float,
    ) -> None:
        ts, value, quality = result.ts, result.value, result.quality
        scale, offset, lo, hi = plan.scale, plan.offset, plan.lo, plan.hi
        types, texts = self._types, plan.oid_text
        if len(items) != len(indexes):
            _fill_indexes(result, indexes, now, Quality.BAD_DEVICE_ERROR)
            return
        for i, (number, missing, kind, raw) in zip(indexes, items, strict=True):
            ts[i] = now
            if number is None:
                value[i] = _NAN
                quality[i] = (
                    Quality.BAD_DEVICE_ERROR if kind is _Mismatch else Quality.BAD_CONFIG_ERROR
                )
                if not missing:
                    self._log_not_numeric(texts[i], kind, raw)
                continue
            types[texts[i]] = kind  # type: ignore[assignment]
            v = number * scale[i] + offset[i]
            value[i] = v
            quality[i] = Quality.GOOD if lo[i] <= v <= hi[i] else Quality.UNCERTAIN_OUT_OF_RANGE

    def _log_not_numeric(self, oid: str, kind: type | None, raw: Any) -> None:
        if self._types.get(oid) is type(None):
            return
        self._types[oid] = type(None)
        if kind is _Mismatch:
            log.warning("snmp.response_mismatch", device=self.device_id, oid=oid)
            return
        shown = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        log.warning(
            "snmp.not_numeric",
            device=self.device_id,
            oid=oid,
            type=getattr(kind, "__name__", "unknown"),
            value=shown[:40],
        )

    async def _get(self, route: _Fast | str, plan: _Plan, indexes: list[int]) -> _Outcome:
        if isinstance(route, _Fast):
            return await self._get_fast(route, plan, indexes)
        shared = self._engine
        assert shared is not None  # set together with the target
        null = univ.Null("")
        out = await _send(
            shared,
            shared.get,
            route,
            self.config.context_name,
            [(plan.oids[i], null) for i in indexes],
        )
        if out.error is None and out.status == 0:
            out.items = [
                (decode_value(raw), isinstance(raw, _MISSING), type(raw), raw)
                for _name, raw in out.varbinds
            ]
        return out

    async def _get_fast(self, route: _Fast, plan: _Plan, indexes: list[int]) -> _Outcome:
        udp = route.udp
        request_id = udp.next_id()
        varbinds = plan.varbinds
        message = ber.encode_get(
            route.version, route.community, request_id, b"".join([varbinds[i] for i in indexes])
        )
        response = await udp.request(
            route.addr, request_id, message, self.config.timeout, self.config.retries
        )
        if response is None:
            return _Outcome(error=errind.requestTimedOut)
        if response.error_status != 0:
            return _Outcome(None, response.error_status, response.error_index)
        tlvs, number_of, missing_tags = plan.oid_tlvs, ber.number_of, ber.MISSING_TAGS
        items: list[tuple[float | None, bool, type | None, Any]] = []
        if len(response.oids) != len(indexes):
            return _Outcome(None, 0, 0, items)  # _decode marks the request bad:device_error
        for i, oid, tag, raw in zip(
            indexes, response.oids, response.tags, response.values, strict=True
        ):
            if oid != tlvs[i]:
                items.append((None, False, _Mismatch, raw))
            else:
                items.append((number_of(tag, raw), tag in missing_tags, _TAG_TYPES.get(tag), raw))
        return _Outcome(None, 0, 0, items)

    # -------------------------------------------------------------------------------- write

    async def write(self, point: Point, value: float, priority: int | None = None) -> None:
        """SET the point to an engineering value; the SNMP type is the one the device
        reported when the point was last read (read now if never read). ``priority`` has no
        meaning in SNMP and is ignored."""
        if not isinstance(point.address, SnmpAddress):
            raise WriteError(f"{point.point_id}: not an SNMP address")
        if not point.writable:
            raise WriteError(f"{point.point_id} is not writable (schedule column writable)")
        target = await self._ensure_target()
        if target is None:
            raise WriteError(
                f"{self.device_id}: {self._config_error or 'device address cannot be resolved'}"
            )
        oid = point.address.oid
        kind = self._types.get(oid)
        if kind is None or kind is type(None):
            await self.read_back(point)
            kind = self._types.get(oid)
        raw = point.to_raw(value)
        syntax = _syntax_for(kind, raw, point.point_id)
        shared = self._engine
        assert shared is not None  # set together with the target
        out = await _send(
            shared,
            shared.set,
            target,
            self.config.context_name,
            [(univ.ObjectIdentifier(oid), syntax)],
        )
        if out.error is not None:
            raise WriteError(f"{point.point_id}: SET failed: {out.error}")
        if out.status != 0:
            raise WriteError(
                f"{point.point_id}: device refused SET of {syntax.prettyPrint()}: "
                f"{_status_name(out.status)}"
            )
        log.info("snmp.write", device=self.device_id, point=point.point_id, value=value)

    async def read_back(self, point: Point) -> float:
        """GET one point now and return its engineering value (after a write, to confirm)."""
        if not isinstance(point.address, SnmpAddress):
            raise WriteError(f"{point.point_id}: not an SNMP address")
        route = await self._route()
        if route is None:
            raise WriteError(f"{self.device_id}: {self._config_error or 'device not reachable'}")
        out = await self._get(route, self._plan_for([point]), [0])
        if out.error is not None or out.status != 0 or len(out.items) != 1:
            why = out.error or _status_name(out.status)
            raise WriteError(f"{point.point_id}: read-back failed: {why or 'bad response'}")
        number, _missing, kind, raw = out.items[0]
        if number is None:
            raise WriteError(f"{point.point_id}: read-back value is not a number: {raw!r}")
        self._types[point.address.oid] = kind  # type: ignore[assignment]
        return point.to_engineering(number)

    async def close(self) -> None:
        # The engine is shared by every SNMP device: DriverContext.aclose closes it.
        self._target = None


# ---------------------------------------------------------------------------------- helpers


def _send(
    shared: _SharedEngine,
    generator: Any,
    target: str,
    context_name: str,
    varbinds: list[tuple[Any, Any]],
) -> asyncio.Future[_Outcome]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_Outcome] = loop.create_future()

    def done(
        _engine: Any, _handle: Any, error: Any, status: Any, index: Any, vbs: Any, _ctx: Any
    ) -> None:
        if future.done():
            return
        if error:
            future.set_result(_Outcome(error=error))
        else:
            future.set_result(_Outcome(None, int(status), int(index), varbinds=list(vbs or ())))

    try:
        generator.send_varbinds(shared.engine, target, None, context_name.encode(), varbinds, done)
    except Exception as exc:  # e.g. the request does not fit a message: pysnmp raises here
        future.set_result(_Outcome(error=_as_indication(exc)))
    return future


def _as_indication(exc: Exception) -> Any:
    info = getattr(exc, "get", None)
    if info is not None:
        indication = exc.get("errorIndication")  # type: ignore[attr-defined]
        if indication is not None:
            return indication
    return exc


_SET_TYPES = (
    rfc1902.Integer32,
    rfc1902.Unsigned32,
    rfc1902.Gauge32,
    rfc1902.Counter32,
    rfc1902.TimeTicks,
    rfc1902.Counter64,
)


def _syntax_for(kind: type | None, raw: float, point_id: str) -> Any:
    if kind is not None and issubclass(kind, univ.OctetString):
        text = repr(raw) if raw != int(raw) else str(int(raw))
        return rfc1902.OctetString(text)
    as_int = round(raw)
    if abs(raw - as_int) > 1e-9:
        raise WriteError(f"{point_id}: SNMP integer types cannot hold {raw} (raw, before scale)")
    cls = kind if kind is not None and issubclass(kind, _SET_TYPES) else rfc1902.Integer32
    if issubclass(cls, (rfc1902.Counter32, rfc1902.Counter64)):
        raise WriteError(f"{point_id}: a counter cannot be written")
    try:
        return cls(as_int)
    except Exception as exc:
        raise WriteError(f"{point_id}: {as_int} does not fit {cls.__name__}: {exc}") from None


_STATUS_NAMES = (
    "noError tooBig noSuchName badValue readOnly genErr noAccess wrongType wrongLength "
    "wrongEncoding wrongValue noCreation inconsistentValue resourceUnavailable commitFailed "
    "undoFailed authorizationError notWritable inconsistentName"
).split()


def _status_name(status: int) -> str:
    return _STATUS_NAMES[status] if 0 <= status < len(_STATUS_NAMES) else f"error {status}"


def _fill_indexes(result: PollResult, indexes: Iterable[int], ts: float, q: Quality) -> None:
    for i in indexes:
        result.ts[i] = ts
        result.value[i] = _NAN
        result.quality[i] = q
