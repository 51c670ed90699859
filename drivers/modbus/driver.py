"""Modbus driver (pymodbus async client): TCP, RTU on a serial line, RTU over TCP.

One connection per host:port (TCP, RTU over TCP) or per serial line, shared by every unit id
on it through the ``DriverContext``; one request in flight per connection (pymodbus serialises
requests per client, our link lock keeps connects and read-modify-writes atomic). On RTU
connections requests of all units queue first come, first served with the spec's silent
interval between frames (``ModbusLink.exchange``). Different devices poll concurrently because
the agent calls ``read`` for each device in its own task.

Failure handling, by what the device did:

- exception response → only that request's points go bad (``device_error``). Illegal data
  address / illegal value (codes 2, 3) split the request at once, recursively, until the bad
  point stands alone; it is then ``config_error`` and logged once (not every poll). Other
  codes split a request after it failed ``SPLIT_AFTER`` polls in a row.
- no answer (timeout after ``retries``) → ``timeout`` for that request and the rest of the
  poll: a device that ignores one request rarely answers the next, and waiting
  ``timeout * (retries+1)`` per request would stall the device's poll loop.
- connection refused or lost → ``comm_failure`` for everything; reconnects back off
  exponentially from ``reconnect_min`` to ``reconnect_max``; while down, ``read`` returns at
  once (one bad reading per point per poll, no request, no log spam).
- a float register holding NaN/±inf → ``device_error`` with value NaN for that point (devices
  use NaN for "no valid measurement"; an infinite value is not a reading either).
- a value outside the point's min/max → ``uncertain:out_of_range``, value kept.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from outpost.drivers.base import (
    Backoff,
    DeviceConfig,
    Driver,
    DriverContext,
    PointGroup,
    PollResult,
    WriteError,
)
from outpost.drivers.modbus.codec import EncodeError, encode_registers
from outpost.drivers.modbus.config import ModbusDeviceConfig
from outpost.drivers.modbus.planner import (
    TABLE_NAME,
    ModbusPlan,
    PlanError,
    Request,
    build_plan,
    build_request,
    compile_point,
    decode_into,
    fail_into,
    remerge,
    split_request,
)
from outpost.point_schedules.model import DataType, ModbusAddress, Point
from outpost.point_schedules.quality import QUALITY_LABEL, Quality

T = TypeVar("T")

log = structlog.get_logger(__name__)

SPLIT_AFTER = 3  # polls a request may fail with a non-address exception before it is split

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_ADDRESS_CODES = frozenset({2, 3})

_COMM = int(Quality.BAD_COMM_FAILURE)
_TIMEOUT = int(Quality.BAD_TIMEOUT)
_CONFIG = int(Quality.BAD_CONFIG_ERROR)
_DEVICE = int(Quality.BAD_DEVICE_ERROR)


class _RawRegistersMixin:
    """Response decoding in one step: pymodbus' own ``decode`` unpacks register by register and
    its debug logging formats the whole register list for every response even with debug off
    (together about a third of the client's CPU per request). Keeping the wire bytes also lets
    the planner's structs read them directly, so the register list is only built when someone
    asks for it (a write's read-modify-write, a response longer than requested)."""

    function_code: int
    raw: bytes
    _registers: list[int] | None = None

    @property
    def registers(self) -> Sequence[int]:
        if self._registers is None:
            raw = getattr(self, "raw", b"")
            self._registers = list(struct.unpack(f">{len(raw) // 2}H", raw[: len(raw) & ~1]))
        return self._registers

    @registers.setter
    def registers(self, value: Sequence[int]) -> None:
        self._registers = list(value)

    def decode(self, data: bytes) -> None:
        count = int(data[0])
        if count >= len(data):
            raise ModbusIOException(
                f"byte_count {count} > length of packet {len(data)}",
                function_code=self.function_code,
            )
        self.raw = bytes(data[1 : 1 + count])
        self._registers = None

    def __str__(self) -> str:
        # pymodbus formats every decoded response for its debug log: keep this cheap
        count = len(getattr(self, "raw", b"")) // 2
        return f"{type(self).__name__}(fc={self.function_code}, registers={count})"


class FastReadHoldingRegistersResponse(_RawRegistersMixin, ReadHoldingRegistersResponse):
    pass


class FastReadInputRegistersResponse(_RawRegistersMixin, ReadInputRegistersResponse):
    pass


def exception_text(code: int) -> str:
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


_READ_FRAME = struct.Struct(">HHHBBHH")  # MBAP (transaction, protocol 0, length 6, unit) + PDU
# what the lean read path touches of pymodbus' transaction manager (checked once per link)
_CTX_ATTRIBUTES = (
    "_lock",
    "getNextTID",
    "recv_buffer",
    "response_future",
    "request_dev_id",
    "request_transaction_id",
    "count_until_disconnect",
    "max_until_disconnect",
    "retries",
    "comm_params",
    "transport",
    "connection_lost",
)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)  # no answer in time: the caller retries or gives up


class ModbusLink:
    """One connection, shared by every unit id on it (kept in ``DriverContext.resources``):
    a TCP connection to host:port (Modbus TCP, or RTU frames to a serial server), or a serial
    line. The first device's timeout/retries/backoff (and line settings) apply to it.

    One request is in flight at a time (pymodbus serialises a client's requests). On a line
    of RTU frames, ``exchange`` also queues the requests of all its devices in arrival order
    (``asyncio.Lock`` wakes waiters first come, first served) and keeps the line silent for
    the spec's inter-frame interval after each answer; a unit that does not answer holds the
    line for its own timeout only.
    """

    def __init__(self, config: ModbusDeviceConfig) -> None:
        self.line = config.line
        self.transport = config.transport
        # No jitter: a site's devices are polled by this agent alone, nobody else to spread from.
        self.backoff = Backoff(config.reconnect_min, config.reconnect_max)
        self.frame_gap = config.frame_gap
        common: dict[str, Any] = {
            "timeout": config.timeout,
            "retries": config.retries,
            "reconnect_delay": 0,  # reconnecting is ours: pymodbus' own would bypass the backoff
            "name": config.line,
            "trace_connect": self._on_connect_change,
        }
        self.client: ModbusBaseClient
        if config.transport == "rtu":
            self.client = AsyncModbusSerialClient(
                config.serial_port,
                framer=FramerType.RTU,
                baudrate=config.baudrate,
                parity=config.parity,
                stopbits=config.stopbits,
                bytesize=config.bytesize,
                **common,
            )
        else:
            framer = FramerType.RTU if config.transport == "rtu-over-tcp" else FramerType.SOCKET
            self.client = AsyncModbusTcpClient(
                config.host, port=config.port, framer=framer, **common
            )
        self.settings = _line_settings(config)
        self.client.register(FastReadHoldingRegistersResponse)
        self.client.register(FastReadInputRegistersResponse)
        self.lock = asyncio.Lock()
        # RTU frames: requests of all devices on the line queue here, one exchange at a time
        self.queue: asyncio.Lock | None = None if config.transport == "tcp" else asyncio.Lock()
        self.next_attempt = 0.0  # monotonic time before which we do not try again
        self.connect_attempts = 0
        self.down = False  # a failure has been logged and not yet followed by a recovery
        self.users = 0
        self.in_flight = 0  # requests awaiting an answer on this connection
        ctx = self.client.ctx
        self.lean = config.transport == "tcp" and all(hasattr(ctx, a) for a in _CTX_ATTRIBUTES)

    async def exchange(self, request: Awaitable[T]) -> T:
        """Send one request and await its answer, in turn with the line's other devices."""
        if self.queue is None:
            return await request
        async with self.queue:
            try:
                return await request
            finally:
                if self.frame_gap:
                    # the spec's silent interval before the next frame starts
                    await asyncio.sleep(self.frame_gap)

    async def read(self, fc: int, start: int, count: int, unit: int) -> Any:
        """One read request on Modbus TCP, framed here instead of through pymodbus' request
        objects and ``asyncio.wait_for``: a quarter of the client's CPU per request. The answer
        still goes through pymodbus' framer and decoder (our fast response classes), under
        the client's own lock, with its retry and "close after repeated silence" rules."""
        ctx: Any = self.client.ctx
        if not ctx.transport:
            raise ConnectionException(f"Not connected[{self.client!s}]")
        async with ctx._lock:
            tid = ctx.getNextTID()
            frame = _READ_FRAME.pack(tid, 0, 6, unit, fc, start, count)
            loop = asyncio.get_running_loop()
            timeout = ctx.comm_params.timeout_connect
            for attempt in range(ctx.retries + 1):
                transport = ctx.transport
                if not transport:
                    raise ConnectionException(f"connection to {self.endpoint} lost")
                ctx.recv_buffer = b""
                future = ctx.response_future = loop.create_future()
                ctx.request_dev_id = unit
                ctx.request_transaction_id = tid
                transport.write(frame)
                timer = loop.call_later(timeout, _expire, future)
                try:
                    response = await future
                finally:
                    timer.cancel()
                if response is None:
                    continue
                ctx.count_until_disconnect = ctx.max_until_disconnect
                if unit and response.dev_id != unit:
                    raise ModbusIOException(
                        f"request uses device id={unit} but received {response.dev_id}",
                        function_code=fc,
                        transaction_id=tid,
                        dev_id=unit,
                    )
                if response.transaction_id and response.transaction_id != tid:
                    raise ModbusIOException(
                        f"request uses transaction id={tid} but received {response.transaction_id}",
                        function_code=fc,
                        transaction_id=tid,
                        dev_id=unit,
                    )
                response.retries = attempt
                return response
            if ctx.count_until_disconnect < 0:
                ctx.connection_lost(TimeoutError("Server not responding"))
                raise ModbusIOException(
                    "no response to the last requests, connection closed",
                    function_code=fc,
                    transaction_id=tid,
                    dev_id=unit,
                )
            ctx.count_until_disconnect -= 1
            raise ModbusIOException(
                f"no response after {ctx.retries} retries",
                function_code=fc,
                transaction_id=tid,
                dev_id=unit,
            )

    @property
    def endpoint(self) -> str:
        return self.line

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def _on_connect_change(self, connected: bool) -> None:
        if connected:
            return
        # Fail the request in flight now instead of letting it run into its timeout: a lost
        # connection will not answer it.
        future = getattr(self.client.ctx, "response_future", None)
        if self.in_flight and future is not None and not future.done():
            future.set_exception(ConnectionException(f"connection to {self.endpoint} lost"))

    async def ensure(self) -> bool:
        """Connected, or try once if the backoff allows. Never raises."""
        if self.client.connected:
            return True
        if time.monotonic() < self.next_attempt:
            return False
        async with self.lock:
            if self.client.connected:
                return True
            if time.monotonic() < self.next_attempt:
                return False
            self.connect_attempts += 1
            try:
                ok = await self.client.connect()
            except (OSError, ModbusException) as exc:
                ok = False
                reason = str(exc)
            else:
                reason = "connection refused or timed out"
            if ok:
                if self.down:
                    log.info("modbus.reconnected", endpoint=self.endpoint)
                self.down = False
                self.backoff.reset()
                self.next_attempt = 0.0
                return True
            self.next_attempt = time.monotonic() + self.backoff.failed()
            if not self.down:
                log.warning(
                    "modbus.connect_failed",
                    endpoint=self.endpoint,
                    reason=reason,
                    retry_in=self.backoff.delay,
                )
                self.down = True
            else:
                log.debug(
                    "modbus.connect_retry_failed",
                    endpoint=self.endpoint,
                    retry_in=self.backoff.delay,
                )
            return False

    def lost(self, reason: str) -> None:
        """The connection broke during a request: close it; the next poll reconnects."""
        self.client.close()
        if not self.down:
            log.warning("modbus.connection_lost", endpoint=self.endpoint, reason=reason)
            self.down = True
        self.backoff.reset()
        self.next_attempt = 0.0

    async def aclose(self) -> None:
        self.client.close()


def _line_settings(config: ModbusDeviceConfig) -> dict[str, Any]:
    """What devices sharing one connection must agree on."""
    if config.transport == "rtu":
        return {
            "baudrate": config.baudrate,
            "parity": config.parity,
            "stopbits": config.stopbits,
            "bytesize": config.bytesize,
        }
    return {}


class _Outcome:
    __slots__ = ("quality", "stop")

    def __init__(self, quality: int | None, stop: bool) -> None:
        self.quality = quality
        self.stop = stop


_OK = _Outcome(None, False)  # shared: a successful request allocates no outcome


class ModbusDriver(Driver):
    config_model = ModbusDeviceConfig
    config: ModbusDeviceConfig

    def __init__(
        self, device_id: str, config: DeviceConfig, context: DriverContext | None = None
    ) -> None:
        if not isinstance(config, ModbusDeviceConfig):
            config = ModbusDeviceConfig.model_validate(config.model_dump())
        super().__init__(device_id, config, context)
        key = f"modbus.link:{config.line}"
        link = self.context.resources.get(key)
        if link is None:
            link = ModbusLink(config)
            self.context.resources[key] = link
        elif link.transport != config.transport or link.settings != _line_settings(config):
            log.warning(
                "modbus.line_settings_conflict",
                device=device_id,
                line=config.line,
                used=link.settings,
                ignored=_line_settings(config),
            )
        link.users += 1
        self._link: ModbusLink = link
        self._key = key
        self._closed = False
        self._last_ok = False
        self._readers: dict[int, Any] = {
            1: link.client.read_coils,
            2: link.client.read_discrete_inputs,
            3: link.client.read_holding_registers,
            4: link.client.read_input_registers,
        }

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self._link.connected and self._last_ok

    @property
    def link(self) -> ModbusLink:
        return self._link

    @property
    def reconnect_delay(self) -> float:
        """Current reconnect backoff in seconds (0 while connected)."""
        return self._link.backoff.delay

    # ------------------------------------------------------------------ planning
    def prepare(self, group: PointGroup) -> None:
        plan = build_plan(
            group.points,
            max_registers=self.config.max_registers_per_request,
            max_bits=self.config.max_bits_per_request,
            max_gap=self.config.max_gap,
        )
        for pos, reason in plan.config_errors:
            log.error(
                "modbus.point_unreadable",
                device=self.device_id,
                point=group.points[pos].point_id,
                reason=reason,
            )
        group.plan = plan
        log.debug(
            "modbus.plan",
            device=self.device_id,
            points=len(group.points),
            requests=plan.request_count,
        )

    # ------------------------------------------------------------------ reading
    async def read(self, group: PointGroup) -> PollResult:
        plan: ModbusPlan = group.plan
        if plan is None:
            self.prepare(group)
            plan = group.plan
        result = PollResult.empty(plan.n)
        value, tsa, quality = result.value, result.ts, result.quality
        for pos, _reason in plan.config_errors:
            value[pos] = math.nan
            tsa[pos] = time.time()
            quality[pos] = _CONFIG
        if not plan.requests:
            return result
        if not await self._link.ensure():
            self._last_ok = False
            now = time.time()
            for req in plan.requests:
                fail_into(req, value, tsa, quality, _COMM, now)
            return result

        work: deque[Request] = deque(plan.requests)
        done: list[Request] = []
        stop_quality: int | None = None
        changed = recovered = False
        while work:
            req = work.popleft()
            if stop_quality is not None:
                fail_into(req, value, tsa, quality, stop_quality, time.time())
                done.append(req)
                continue
            failing = req.failures > 0
            outcome = await self._execute(req, value, tsa, quality)
            if outcome is None:  # split: run the halves next, in this same poll
                changed = True
                halves = split_request(req)
                for half in halves:
                    half.failures = max(0, req.failures - 1)
                work.extendleft(reversed(halves))
                continue
            done.append(req)
            if outcome.stop:
                stop_quality = outcome.quality
            elif failing and outcome.quality is None:
                recovered = True  # it may merge with its neighbours again
        if stop_quality is None and (changed or recovered):
            # Every request ran this poll, so each one's failure count is current: merge the
            # working ones again around those still failing (no reload needed).
            plan.requests = remerge(
                done,
                max_registers=self.config.max_registers_per_request,
                max_bits=self.config.max_bits_per_request,
                max_gap=self.config.max_gap,
            )
            log.debug("modbus.replanned", device=self.device_id, requests=plan.request_count)
        elif changed:
            plan.requests = done
        self._last_ok = stop_quality is None
        return result

    async def _execute(self, req: Request, value: Any, tsa: Any, quality: Any) -> _Outcome | None:
        """Run one request into the result arrays. None means: split it and retry the halves."""
        link = self._link
        if not link.connected:
            fail_into(req, value, tsa, quality, _COMM, time.time())
            return _Outcome(_COMM, True)
        link.in_flight += 1
        try:
            if link.lean:
                response = await link.read(req.fc, req.start, req.count, self.config.unit_id)
            else:
                call = self._readers[req.fc](
                    req.start, count=req.count, device_id=self.config.unit_id
                )
                # Modbus TCP (no queue) awaits directly: no extra coroutine layer
                response = await (call if link.queue is None else link.exchange(call))
        except ConnectionException as exc:
            link.lost(str(exc))
            fail_into(req, value, tsa, quality, _COMM, time.time())
            return _Outcome(_COMM, True)
        except ModbusIOException as exc:
            if not link.connected:
                link.lost(str(exc))
                fail_into(req, value, tsa, quality, _COMM, time.time())
                return _Outcome(_COMM, True)
            fail_into(req, value, tsa, quality, _TIMEOUT, time.time())
            self._note_failure(req, "timeout", str(exc))
            return _Outcome(_TIMEOUT, True)
        except ModbusException as exc:
            fail_into(req, value, tsa, quality, _DEVICE, time.time())
            self._note_failure(req, "protocol_error", str(exc))
            return _Outcome(_DEVICE, False)
        finally:
            link.in_flight -= 1
        ts = time.time()
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            if req.splittable() and (code in _ADDRESS_CODES or req.failures + 1 >= SPLIT_AFTER):
                log.debug(
                    "modbus.request_split",
                    device=self.device_id,
                    request=req.address_text,
                    error=exception_text(code),
                )
                # a persistent fault is already proven: the halves split at their first failure
                req.failures = 0 if code in _ADDRESS_CODES else SPLIT_AFTER
                return None
            if code in _ADDRESS_CODES:
                fail_into(req, value, tsa, quality, _CONFIG, ts)
                if not req.reported:
                    log.warning(
                        "modbus.bad_address",
                        device=self.device_id,
                        points=[s.point_id for s in req.specs],
                        address=req.specs[0].address_text,
                        error=exception_text(code),
                    )
                req.reported = True
                req.failures += 1
                return _Outcome(_CONFIG, False)
            fail_into(req, value, tsa, quality, _DEVICE, ts)
            self._note_failure(req, "exception", exception_text(code))
            return _Outcome(_DEVICE, False)
        raw = None if req.bits else getattr(response, "raw", None)
        if raw is not None and len(raw) == 2 * req.count:
            payload: Any = ()  # decoded from the wire bytes; the register list is not built
        else:
            raw = None  # more registers than asked for (or fewer): the register list decides
            payload = response.bits if req.bits else response.registers
            if len(payload) < req.count:
                fail_into(req, value, tsa, quality, _DEVICE, ts)
                self._note_failure(req, "short_response", f"{len(payload)} of {req.count}")
                return _Outcome(_DEVICE, False)
        decode_into(req, payload, raw, value, tsa, quality, ts)
        if req.reported:
            log.info("modbus.request_recovered", device=self.device_id, request=req.address_text)
            req.reported = False
        req.failures = 0
        return _OK

    def _note_failure(self, req: Request, kind: str, detail: str) -> None:
        req.failures += 1
        if not req.reported:
            log.warning(
                "modbus.request_failed",
                device=self.device_id,
                request=req.address_text,
                kind=kind,
                detail=detail,
                points=len(req.specs),
            )
            req.reported = True

    # ------------------------------------------------------------------ writing
    def _address(self, point: Point) -> ModbusAddress:
        address = point.address
        if not isinstance(address, ModbusAddress):
            raise WriteError(f"{point.point_id}: {address} is not a Modbus address")
        return address

    async def _connected_for(self, point: Point) -> None:
        if not await self._link.ensure():
            raise WriteError(
                f"{point.point_id}: device {self.device_id} at {self._link.endpoint} is not "
                f"connected (next attempt in {max(0.0, self._link.next_attempt - time.monotonic()):.1f} s)"
            )

    async def _call(self, point: Point, what: str, coro: Any) -> Any:
        self._link.in_flight += 1
        try:
            response = await self._link.exchange(coro)
        except ConnectionException as exc:
            self._link.lost(str(exc))
            raise WriteError(f"{point.point_id}: connection lost during {what}: {exc}") from None
        except ModbusIOException as exc:
            if not self._link.connected:
                self._link.lost(str(exc))
            raise WriteError(
                f"{point.point_id}: no answer from {self.device_id} to {what} "
                f"within {self.config.timeout} s x {self.config.retries + 1} attempts"
            ) from None
        except ModbusException as exc:
            raise WriteError(f"{point.point_id}: {what} failed: {exc}") from None
        finally:
            self._link.in_flight -= 1
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            raise WriteError(
                f"{point.point_id}: device {self.device_id} refused {what}: {exception_text(code)}"
            )
        return response

    async def write(self, point: Point, value: float, priority: int | None = None) -> None:
        """Write an engineering value. Holding registers: multi-register types go in one
        write-multiple request, bitN is a read-modify-write of its register; coils: one
        write-single-coil. ``priority`` is a BACnet notion and ignored here."""
        address = self._address(point)
        unit = self.config.unit_id
        client = self._link.client
        if address.table not in ("hr", "coil"):
            raise WriteError(
                f"{point.point_id}: {address} is in the {TABLE_NAME[address.table]}, which are "
                "read-only in Modbus"
            )
        if value != value:
            raise WriteError(f"{point.point_id}: cannot write NaN")
        await self._connected_for(point)
        async with self._link.lock:
            if address.table == "coil":
                await self._call(
                    point,
                    f"write of coil {address.address}",
                    client.write_coil(address.address, bool(value), device_id=unit),
                )
            elif address.bit is not None:
                what = f"read-modify-write of {address}"
                current = await self._call(
                    point,
                    what,
                    client.read_holding_registers(address.address, count=1, device_id=unit),
                )
                word = int(current.registers[0])
                raw = point.to_raw(value)
                mask = 1 << address.bit
                word = word | mask if raw else word & ~mask
                await self._call(
                    point, what, client.write_register(address.address, word, device_id=unit)
                )
            else:
                data_type = point.data_type or DataType.UINT16
                try:
                    registers = encode_registers(data_type, point.byte_order, point.to_raw(value))
                except EncodeError as exc:
                    raise WriteError(f"{point.point_id}: cannot write {value}: {exc}") from None
                what = f"write of {address} ({data_type.value})"
                if len(registers) == 1:
                    call = client.write_register(address.address, registers[0], device_id=unit)
                else:
                    call = client.write_registers(address.address, registers, device_id=unit)
                await self._call(point, what, call)
        log.info(
            "modbus.write",
            device=self.device_id,
            point=point.point_id,
            value=value,
            address=str(address),
        )

    async def read_back(self, point: Point) -> float:
        """Read just ``point`` now and return its engineering value (to verify a write).
        Raises WriteError when the read fails or the value is bad."""
        try:
            spec = compile_point(0, point)
        except PlanError as exc:
            raise WriteError(f"{point.point_id}: {exc}") from None
        req = build_request(spec.table, [spec], [point])
        result = PollResult.empty(1)
        await self._connected_for(point)
        outcome = await self._execute(req, result.value, result.ts, result.quality)
        if outcome is None:  # a one-point request is never split; keep the type checker honest
            raise WriteError(f"{point.point_id}: read-back failed")
        code = result.quality[0]
        if code >= Quality.BAD:
            raise WriteError(f"{point.point_id}: read-back failed: {QUALITY_LABEL[code]}")
        return float(result.value[0])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._link.users -= 1
        if self._link.users <= 0:
            await self._link.aclose()
            if self.context.resources.get(self._key) is self._link:
                del self.context.resources[self._key]
