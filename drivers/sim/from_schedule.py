"""A simulator built from a site's own schedule: ``outpost sim --schedule FILE... -c agent.toml``.

Every Modbus, BACnet and SNMP device that the schedule and the agent config name is served
on loopback, with registers, objects and OIDs at exactly the schedule's addresses, data types
and byte orders, so the real agent can run the site's real schedule, alarms and modes before
the hardware exists. MQTT devices are left to a broker (they publish; nothing to serve).

Values: each point wanders slowly (a sine with its own period and phase, plus a little
noise) inside its normal band: ``min``..``max`` narrowed by the alarm limits (no alarm
unless asked), or around the alarm limits when there is no range, or 0..100; discrete points
(bool, bits, coils, binary and multi-state objects, ``alarm_state`` points) hold their normal
state. Every value is what the wire can carry: quantised to the point's type (an int16 with
scale 0.1 moves in steps of 0.1, a float32 is a float32), so a reader decodes exactly the
value the simulator reports. Writable points accept writes and hold the written value;
``outpost sim set POINT VALUE`` forces any point (e.g. over ``alarm_hh``) until released.

Control: the same line-JSON endpoint as the demo site (``drivers.sim.site``), so ``outpost
sim status|set|release`` work unchanged.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import random
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from outpost.drivers.base import DeviceConfig
from outpost.drivers.modbus.codec import INT_RANGE
from outpost.drivers.sim.physics import UnknownSignal
from outpost.drivers.sim.site import SimConfig, SimSite
from outpost.point_schedules.model import (
    BacnetAddress,
    DataType,
    ModbusAddress,
    Point,
    Schedule,
)

log = structlog.get_logger(__name__)

SIM_COMMUNITY = "public"
SERVED = ("modbus", "bacnet", "snmp")
_BINARY_TYPES = ("binary-input", "binary-output", "binary-value")
_MULTI_TYPES = ("multi-state-input", "multi-state-output", "multi-state-value")
_ANALOG_TYPES = ("analog-input", "analog-output", "analog-value")
BACNET_TYPES = _ANALOG_TYPES + _BINARY_TYPES + _MULTI_TYPES
MULTI_STATES = 4
_INT32 = (-(2**31), 2**31 - 1)


# ------------------------------------------------------------------------------ signals


def discrete(point: Point, protocol: str) -> bool:
    a = point.address
    if point.data_type is DataType.BOOL or point.alarm_state is not None:
        return True
    if isinstance(a, ModbusAddress) and (a.is_bit_table or a.bit is not None):
        return True
    return isinstance(a, BacnetAddress) and a.object_type in _BINARY_TYPES + _MULTI_TYPES


def _f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def quantise(point: Point, protocol: str, value: float) -> float:
    """The engineering value a reader decodes when the simulator serves ``value``."""
    a = point.address
    raw = point.to_raw(value)
    if isinstance(a, BacnetAddress) and a.object_type in _BINARY_TYPES:
        return point.to_engineering(1.0 if raw >= 0.5 else 0.0)
    if isinstance(a, BacnetAddress) and a.object_type in _MULTI_TYPES:
        return point.to_engineering(float(min(max(round(raw), 1), MULTI_STATES)))
    if isinstance(a, ModbusAddress) and (
        a.is_bit_table or a.bit is not None or point.data_type is DataType.BOOL
    ):
        return point.to_engineering(1.0 if raw >= 0.5 else 0.0)
    kind = point.data_type
    if protocol == "snmp":
        lo, hi = _INT32
        raw = float(min(max(round(raw), lo), hi))
    elif protocol == "bacnet":
        raw = _f32(raw)
    elif kind in INT_RANGE:
        lo, hi = INT_RANGE[kind]
        raw = float(min(max(round(raw), lo), hi))
    elif kind is DataType.FLOAT32:
        raw = _f32(raw)
    return point.to_engineering(raw)


def _raw_span(point: Point, protocol: str) -> tuple[float, float] | None:
    if protocol == "snmp":
        lo, hi = _INT32
    elif point.data_type in INT_RANGE:
        lo, hi = INT_RANGE[point.data_type]
    else:
        return None
    a, b = point.to_engineering(lo), point.to_engineering(hi)
    return (min(a, b), max(a, b))


def normal_band(point: Point, protocol: str) -> tuple[float, float]:
    """Where the point wanders: inside min/max, away from the alarm limits."""
    lows = [v for v in (point.alarm_l, point.alarm_ll) if v is not None]
    highs = [v for v in (point.alarm_h, point.alarm_hh) if v is not None]
    lo = point.min
    hi = point.max
    if lows:
        lo = max(lows) if lo is None else max(lo, max(lows))
    if highs:
        hi = min(highs) if hi is None else min(hi, min(highs))
    if lo is None and hi is None:
        lo, hi = 0.0, 100.0
    elif lo is None:
        assert hi is not None
        lo = hi - max(abs(hi) * 0.5, 10.0)
    elif hi is None:
        hi = lo + max(abs(lo) * 0.5, 10.0)
    if hi < lo:  # contradictory limits: sit between them
        lo, hi = hi, lo
    span = _raw_span(point, protocol)
    if span is not None:
        lo, hi = max(lo, span[0]), min(hi, span[1])
        if hi < lo:
            lo = hi = span[0]
    return lo, hi


@dataclass
class SimSignal:
    point: Point
    protocol: str
    band: tuple[float, float]
    period: float
    phase: float
    value: float = 0.0


@dataclass
class SchedulePhysics:
    """The ``SitePhysics`` surface ``SimSite`` drives (value/force/release/command/step/run),
    for the points of a schedule."""

    points: Sequence[tuple[Point, str]]
    seed: int | None = None
    clock: Callable[[], float] = time.monotonic
    signals: dict[str, float] = field(default_factory=dict)
    forced: dict[str, float] = field(default_factory=dict)
    commands: dict[str, float] = field(default_factory=dict)
    scenarios: dict[str, Any] = field(default_factory=dict)
    scenario_listeners: list[Any] = field(default_factory=list)
    _state: dict[str, SimSignal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self._rng = rng
        self._t0 = self.clock()
        for point, protocol in self.points:
            self._state[point.point_id] = SimSignal(
                point,
                protocol,
                normal_band(point, protocol),
                period=rng.uniform(120.0, 600.0),
                phase=rng.uniform(0.0, 2 * math.pi),
            )
        self.step(0.0)

    def value(self, name: str) -> float:
        try:
            return self.signals[name]
        except KeyError:
            raise UnknownSignal(name) from None

    def _check(self, name: str) -> SimSignal:
        state = self._state.get(name)
        if state is None:
            raise UnknownSignal(f"unknown point {name!r}; not in the simulated schedule")
        return state

    def force(self, name: str, value: float) -> None:
        state = self._check(name)
        self.forced[name] = quantise(state.point, state.protocol, float(value))
        self.signals[name] = self.forced[name]

    def release(self, name: str | None = None) -> list[str]:
        if name is None:
            released = sorted(self.forced)
            self.forced.clear()
            return released
        self._check(name)
        return [name] if self.forced.pop(name, None) is not None else []

    def command(self, name: str, value: float) -> None:
        """A write through a device protocol: the point holds the written value."""
        state = self._check(name)
        if not state.point.writable:
            raise UnknownSignal(f"{name!r} is not writable")
        self.commands[name] = quantise(state.point, state.protocol, float(value))
        self.signals[name] = self.commands[name]

    def set_scenario(self, name: str, active: bool = True, **_: Any) -> None:
        raise ValueError(
            "a simulator built from a schedule has no scenarios; force points with "
            "`outpost sim set POINT VALUE`"
        )

    def step(self, dt: float) -> None:
        t = self.clock() - self._t0
        for pid, s in self._state.items():
            if pid in self.forced:
                self.signals[pid] = self.forced[pid]
            elif pid in self.commands:
                self.signals[pid] = self.commands[pid]
            else:
                self.signals[pid] = quantise(s.point, s.protocol, self._natural(s, t))

    def _natural(self, s: SimSignal, t: float) -> float:
        p = s.point
        if discrete(p, s.protocol):
            # the normal state: multi-state 1, binary inactive, unless that is the alarm state
            a = p.address
            multi = isinstance(a, BacnetAddress) and a.object_type in _MULTI_TYPES
            states = [p.to_engineering(r) for r in ((1.0, 2.0) if multi else (0.0, 1.0))]
            if p.min is not None and p.max is not None and p.min < p.max:
                states = [p.min, p.max]  # e.g. an SNMP status 1=on, 2=off
            return next((v for v in states if v != p.alarm_state), states[0])
        lo, hi = s.band
        mid, amp = (lo + hi) / 2, (hi - lo) * 0.3
        wave = math.sin(2 * math.pi * t / s.period + s.phase)
        noise = self._rng.uniform(-0.02, 0.02) * (hi - lo)
        return min(max(mid + amp * wave + noise, lo), hi)

    async def run(self, tick: float, refresh: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(tick)
            self.step(tick)
            await refresh()


# ------------------------------------------------------------------------------ servers


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Prefixed:
    """``ModbusSimDevice`` asks for ``<device>.<signal>``; the signals here are point ids."""

    def __init__(self, physics: SchedulePhysics, device: str) -> None:
        self.physics = physics
        self.prefix = f"{device}."

    def value(self, name: str) -> float:
        return self.physics.value(name.removeprefix(self.prefix))

    def command(self, name: str, value: float) -> None:
        self.physics.command(name.removeprefix(self.prefix), value)


def _ranges(addresses: set[int]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for a in sorted(addresses):
        if out and out[-1][0] + out[-1][1] == a:
            out[-1][1] += 1
        else:
            out.append([a, 1])
    return tuple((s, n) for s, n in out)


def _bit_ranges(addresses: set[int]) -> tuple[tuple[int, int], ...]:
    # pymodbus keeps bits in 16-bit words: serve whole aligned words
    words = {a // 16 * 16 + i for a in addresses for i in range(16)}
    return _ranges(words)


async def _serve_modbus(
    name: str, points: list[Point], physics: SchedulePhysics, unit_id: int
) -> Any:
    from outpost.drivers.sim.modbus_devices import DeviceModel, ModbusSimDevice, Register

    registers = []
    used: dict[str, set[int]] = defaultdict(set)
    for p in points:
        a = p.address
        assert isinstance(a, ModbusAddress)
        kind = p.data_type or DataType.UINT16
        reg = Register(p.point_id, a, kind, p.byte_order, p.scale, p.offset, p.writable)
        registers.append(reg)
        used[a.table].update(range(a.address, a.address + reg.size))
    blocks = {t: (_bit_ranges(used[t]) if t in ("coil", "di") else _ranges(used[t])) for t in used}
    model = DeviceModel("schedule", f"{name} from its schedule", registers, blocks)
    device = ModbusSimDevice(name, model, _Prefixed(physics, name), unit_id=unit_id)  # type: ignore[arg-type]  # the physics surface it uses
    await device.start()
    return device


class _BacnetDevice:
    def __init__(self, name: str, points: list[Point], physics: SchedulePhysics, instance: int):
        self.name = name
        self.points = points
        self.physics = physics
        self.instance = instance
        self.port = free_udp_port()
        self.app: Any = None
        self.objects: dict[str, Any] = {}
        self.served: dict[str, float] = {}

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        from outpost.drivers.sim.bacnet_ahu import build_device_app, wait_bound

        objects = []
        seen: set[tuple[str, int]] = set()
        for p in self.points:
            a = p.address
            assert isinstance(a, BacnetAddress)
            key = (a.object_type, a.instance)
            if key in seen or a.object_type not in BACNET_TYPES:
                continue
            seen.add(key)
            obj = _bacnet_object(p, a, self.physics.value(p.point_id))
            self.objects[p.point_id] = obj
            objects.append(obj)
        self.app = build_device_app(self.endpoint, self.instance, objects, name=f"sim-{self.name}")
        await wait_bound(self.app)
        self.refresh()

    def refresh(self) -> None:
        for pid, obj in self.objects.items():
            point = self.physics._state[pid].point
            if point.writable and pid in self.served:
                current = _from_pv(obj)
                if current is not None and current != self.served[pid]:
                    # a client wrote (or relinquished): that is the point's value now
                    with contextlib.suppress(UnknownSignal):
                        self.physics.command(pid, point.to_engineering(current))
            value = self.physics.value(pid)
            raw = point.to_raw(value)
            _set_pv(obj, raw)
            self.served[pid] = _from_pv(obj) or 0.0

    def stop(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None


def _bacnet_object(p: Point, a: BacnetAddress, value: float) -> Any:
    from bacpypes3.local.analog import (
        AnalogInputObject,
        AnalogOutputObject,
        AnalogValueObject,
        AnalogValueObjectCmd,
    )
    from bacpypes3.local.binary import (
        BinaryInputObject,
        BinaryOutputObject,
        BinaryValueObject,
        BinaryValueObjectCmd,
    )
    from bacpypes3.local.multistate import (
        MultiStateInputObject,
        MultiStateOutputObject,
        MultiStateValueObject,
    )

    raw = p.to_raw(value)
    common: dict[str, Any] = {
        "objectIdentifier": (a.object_type, a.instance),
        "objectName": p.point_id,
        "description": p.description or p.point_id,
        "statusFlags": [0, 0, 0, 0],
    }
    t = a.object_type
    if t in _ANALOG_TYPES:
        cls = {
            "analog-input": AnalogInputObject,
            "analog-output": AnalogOutputObject,
            "analog-value": AnalogValueObjectCmd if p.writable else AnalogValueObject,
        }[t]
        extra: dict[str, Any] = {"units": "noUnits"}
        if t == "analog-output" or (t == "analog-value" and p.writable):
            extra["relinquishDefault"] = float(raw)
        return cls(presentValue=float(raw), **common, **extra)
    if t in _BINARY_TYPES:
        bcls = {
            "binary-input": BinaryInputObject,
            "binary-output": BinaryOutputObject,
            "binary-value": BinaryValueObjectCmd if p.writable else BinaryValueObject,
        }[t]
        pv = "active" if raw >= 0.5 else "inactive"
        extra = {}
        if t == "binary-output" or (t == "binary-value" and p.writable):
            extra["relinquishDefault"] = pv
        return bcls(presentValue=pv, **common, **extra)
    mcls = {
        "multi-state-input": MultiStateInputObject,
        "multi-state-output": MultiStateOutputObject,
        "multi-state-value": MultiStateValueObject,
    }[t]
    extra = {"numberOfStates": MULTI_STATES, "stateText": [f"state-{i}" for i in range(1, 5)]}
    if t == "multi-state-output":
        extra["relinquishDefault"] = int(min(max(round(raw), 1), MULTI_STATES))
    return mcls(presentValue=int(min(max(round(raw), 1), MULTI_STATES)), **common, **extra)


def _from_pv(obj: Any) -> float | None:
    from outpost.drivers.bacnet.codec import to_number

    return to_number(obj.presentValue)


def _set_pv(obj: Any, raw: float) -> None:
    t = obj.objectIdentifier[0]
    name = str(t)
    if name in _BINARY_TYPES:
        obj.presentValue = "active" if raw >= 0.5 else "inactive"
    elif name in _MULTI_TYPES:
        obj.presentValue = int(min(max(round(raw), 1), MULTI_STATES))
    else:
        obj.presentValue = float(raw)


class _SnmpDevice:
    def __init__(self, name: str, points: list[Point], physics: SchedulePhysics) -> None:
        self.name = name
        self.points = {_oid(str(p.address)): p for p in points}
        self.physics = physics
        self.port = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(ready), name=f"sim-snmp-{self.name}")
        task = self._task
        waitables: list[asyncio.Future[Any]] = [ready, task]
        await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # failed before it listened: raise that
        self.port = ready.result()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task

    async def _serve(self, ready: asyncio.Future[int]) -> None:
        from pysnmp.carrier.asyncio.dgram import udp
        from pysnmp.entity import config, engine
        from pysnmp.entity.rfc3413 import cmdrsp, context

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        snmp_engine = engine.SnmpEngine()
        try:
            config.add_transport(
                snmp_engine,
                udp.DOMAIN_NAME,
                udp.UdpAsyncioTransport().open_server_mode(sock=sock),
            )
            config.add_v1_system(snmp_engine, "sim-area", SIM_COMMUNITY)
            snmp_context = context.SnmpContext(snmp_engine)
            snmp_context.unregister_context_name(b"")
            snmp_context.register_context_name(b"", _instrum(self))
            cmdrsp.GetCommandResponder(snmp_engine, snmp_context)
            cmdrsp.NextCommandResponder(snmp_engine, snmp_context)
            cmdrsp.BulkCommandResponder(snmp_engine, snmp_context)
            cmdrsp.SetCommandResponder(snmp_engine, snmp_context)
            ready.set_result(int(sock.getsockname()[1]))
            await self._stop.wait()
        finally:
            snmp_engine.close_dispatcher()
            sock.close()

    def get(self, oid: tuple[int, ...]) -> int | None:
        p = self.points.get(oid)
        if p is None:
            return None
        return round(p.to_raw(self.physics.value(p.point_id)))


def _oid(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _instrum(device: _SnmpDevice) -> Any:
    from pysnmp.proto import rfc1902, rfc1905
    from pysnmp.smi import error as smi_error
    from pysnmp.smi.instrum import AbstractMibInstrumController

    order = sorted(device.points)

    class Instrum(AbstractMibInstrumController):
        def read_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
            out = []
            for name, _ in var_binds:
                value = device.get(tuple(name))
                out.append(
                    (name, rfc1905.noSuchObject if value is None else rfc1902.Integer32(value))
                )
            return out

        def read_next_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
            out = []
            for name, _ in var_binds:
                i = bisect.bisect_right(order, tuple(name))
                if i >= len(order):
                    out.append((name, rfc1905.endOfMibView))
                else:
                    value = device.get(order[i])
                    out.append((rfc1902.ObjectName(order[i]), rfc1902.Integer32(value or 0)))
            return out

        def write_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
            for idx, (name, _value) in enumerate(var_binds):
                p = device.points.get(tuple(name))
                if p is None:
                    raise smi_error.NoCreationError(name=name, idx=idx)
                if not p.writable:
                    raise smi_error.NotWritableError(name=name, idx=idx)
            for name, value in var_binds:
                p = device.points[tuple(name)]
                device.physics.command(p.point_id, p.to_engineering(float(int(value))))
            return [
                (name, rfc1902.Integer32(device.get(tuple(name)) or 0)) for name, _ in var_binds
            ]

    return Instrum()


# ------------------------------------------------------------------------------ the site


@dataclass
class Served:
    device: str
    protocol: str
    endpoint: str
    points: int


class ScheduleSite(SimSite):
    """Serve every device of ``schedule`` found in ``devices`` (the agent config's)."""

    def __init__(
        self,
        schedule: Schedule,
        devices: Mapping[str, DeviceConfig],
        *,
        control: str = "127.0.0.1:15029",
        tick: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.schedule = schedule
        self.device_configs = devices
        points = [
            (p, devices[p.device].protocol)
            for p in schedule.points
            if p.device in devices and devices[p.device].protocol in SERVED
        ]
        physics = SchedulePhysics(points, seed=seed)
        super().__init__(SimConfig(control=control, seed=seed, tick=1.0, time_scale=1.0), physics)  # type: ignore[arg-type]  # the physics surface SimSite uses
        self.tick = tick  # any length: tests freeze the values with a long one
        self.sched_physics = physics
        self.served: dict[str, Served] = {}
        self.skipped: dict[str, str] = {}
        self._bacnet: list[_BacnetDevice] = []
        self._snmp: list[_SnmpDevice] = []

    async def run(self, ready: asyncio.Event | None = None) -> None:
        from outpost.drivers.sim.site import split_hostport

        by_device: dict[str, list[Point]] = defaultdict(list)
        for p, _ in self.sched_physics.points:
            by_device[p.device].append(p)
        for device in self.schedule.devices:
            cfg = self.device_configs.get(device)
            if cfg is None:
                self.skipped[device] = "not in the agent config"
            elif cfg.protocol not in SERVED:
                self.skipped[device] = f"{cfg.protocol} devices publish; use a broker"
        host, port = split_hostport(self.config.control)
        control = await asyncio.start_server(self._client, host, port)
        self.control = f"{host}:{control.sockets[0].getsockname()[1]}"
        try:
            for device, points in by_device.items():
                await self._start(device, points)
            self.endpoints = {d: s.endpoint for d, s in self.served.items()}
            self.kinds = {d: s.protocol for d, s in self.served.items()}
            log.info("sim.schedule.ready", devices=self.endpoints, control=self.control)
            if ready is not None:
                ready.set()
            await self.sched_physics.run(self.tick, self._refresh)
        finally:
            for dev in self.modbus.values():
                with contextlib.suppress(Exception):
                    await dev.stop()
            for b in self._bacnet:
                b.stop()
            for s in self._snmp:
                await s.stop()
            control.close()
            with contextlib.suppress(Exception):
                await control.wait_closed()

    async def _start(self, device: str, points: list[Point]) -> None:
        cfg: Any = self.device_configs[device]
        if cfg.protocol == "modbus":
            dev = await _serve_modbus(device, points, self.sched_physics, cfg.unit_id)
            self.modbus[device] = dev
            endpoint = dev.endpoint
        elif cfg.protocol == "bacnet":
            b = _BacnetDevice(device, points, self.sched_physics, cfg.device_instance)
            await b.start()
            self._bacnet.append(b)
            endpoint = b.endpoint
        else:
            s = _SnmpDevice(device, points, self.sched_physics)
            await s.start()
            self._snmp.append(s)
            endpoint = s.endpoint
        self.served[device] = Served(device, cfg.protocol, endpoint, len(points))

    async def _refresh(self) -> None:
        for b in self._bacnet:
            b.refresh()
        await super()._refresh()

    def status(self) -> dict[str, Any]:
        p = self.sched_physics
        return {
            "devices": {
                d: {"kind": s.protocol, "endpoint": s.endpoint, "error": None}
                for d, s in self.served.items()
            },
            "skipped": self.skipped,
            "control": self.control,
            "scenarios": [],
            "known_scenarios": [],
            "forced": dict(p.forced),
            "signals": dict(sorted(p.signals.items())),
        }


# ------------------------------------------------------------------------------ config copy


def sim_agent_config(
    raw: Mapping[str, Any],
    config_dir: Path,
    served: Mapping[str, Served],
    schedule_files: Sequence[Path],
    out_dir: Path,
) -> dict[str, Any]:
    """The agent config (as parsed TOML) pointed at the simulator: served devices on their
    loopback endpoints, the simulated schedule, its own data dir, no cloud."""
    doc = json.loads(json.dumps(raw))  # a deep copy of plain TOML data
    doc.setdefault("agent", {})["data_dir"] = str(out_dir / "sim-data")
    doc["schedules"] = {**doc.get("schedules", {}), "files": [str(f) for f in schedule_files]}
    for section, key in (
        ("buffer", "path"),
        ("api", "socket"),
        ("api", "bind"),
        ("alarms", "state_file"),
        ("modes", "state_file"),
    ):
        doc.get(section, {}).pop(key, None)
    doc.pop("cloud", None)  # a simulated site must not report to the real receiver
    community = out_dir / "sim-community"
    for device, body in doc.get("devices", {}).items():
        for key, value in list(body.items()):
            if key.endswith("_file") and isinstance(value, str):
                body[key] = str((config_dir / value).resolve())
        s = served.get(device)
        if s is None:
            continue
        host, _, port = s.endpoint.rpartition(":")
        if s.protocol == "modbus":
            for key in ("serial_port", "baudrate", "parity", "stopbits", "bytesize"):
                body.pop(key, None)
            body.update(transport="tcp", host=host, port=int(port))
        elif s.protocol == "bacnet":
            body.update(address=s.endpoint, local_address=f"127.0.0.1:{free_udp_port()}")
        else:
            for key in list(body):
                if key.startswith(("community", "auth_", "priv_")) or key in (
                    "user",
                    "context_name",
                ):
                    body.pop(key)
            body.update(host=host, port=int(port), version="2c", community_file=str(community))
    return doc


def dump_toml(doc: Mapping[str, Any]) -> str:
    """TOML for plain config data (tables, arrays, strings, numbers, booleans)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{_key(k)} = {scalar(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def table(prefix: str, body: Mapping[str, Any]) -> None:
        plain = {k: v for k, v in body.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        if prefix and (plain or not nested):
            lines.append(f"\n[{prefix}]")
        for k, v in plain.items():
            lines.append(f"{_key(k)} = {scalar(v)}")
        for k, v in nested.items():
            table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)

    table("", doc)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    bare = k.replace("_", "").replace("-", "").isalnum() and k.isascii()
    return k if bare else json.dumps(k)
