"""Local control: the alarm engine, the mode machine and guarded writes of one agent, and the
operator actions on them.

Built from explicit inputs (the schedule, the config sections, the drivers, an event sink and
three read-only views of the daemon: device health, the uplink's last success, live values),
so it neither knows nor imports the runtime. Per poll, alarmed points' readings reach
``alarms.update`` through the pipeline's alarm hook. Per tick (1 s, ``run()``): device comms
health, ``AlarmEngine.tick`` (delays, shelve expiry, stale, flood, persistence), then the mode
machine re-decides from the facts (comms loss, uplink age, active alarms, live values).

Operator actions (the CLI through the local API, and the command channel) call the methods
below with an explicit ``actor``; each returns what it did (``AlarmView``, the mode state,
``WriteOutcome``) or raises ``ControlRefused`` with one sentence saying why nothing happened.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, ParamSpec, Protocol

import structlog

from outpost.agent.control.writes import UnknownPoint, WriteOutcome, WriteRefused, WriteService
from outpost.drivers.base import DeviceConfig, Driver
from outpost.fsm.alarms import AlarmActionRefused, AlarmEngine, AlarmView, UnknownAlarm
from outpost.fsm.clock import Clock, Emit, SystemClock
from outpost.fsm.config import AlarmsConfig, ModesConfig, Scope
from outpost.fsm.modes import EMERGENCY, ModeMachine, ModeRefused
from outpost.fsm.persist import JsonFileStore
from outpost.point_schedules.model import Schedule

log = structlog.get_logger(__name__)

TICK_S = 1.0
# base states an acknowledgement applies to (fsm.alarms: unacknowledged, active or returned)
WAITING_FOR_ACK = frozenset({"unack_active", "rtn_unack"})

P = ParamSpec("P")

MaintenanceScope = str | list[str] | dict[str, list[str]] | Scope | None


class DeviceHealthView(Protocol):
    """What local control reads of a device's health (``core.coordinator.DeviceHealth``)."""

    @property
    def connected(self) -> bool: ...

    @property
    def last_poll_ts(self) -> float | None: ...


class ControlRefused(Exception):
    """The action was not carried out and nothing changed. ``reason``: ``unknown`` (no such
    alarm or point) or ``refused`` (it does not apply now: nothing to acknowledge, write out
    of range, emergency still active …). The message is one sentence for the operator."""

    def __init__(self, message: str, reason: Literal["unknown", "refused"] = "refused") -> None:
        super().__init__(message)
        self.reason = reason


class LocalControl:
    def __init__(
        self,
        schedule: Schedule,
        *,
        alarms_config: AlarmsConfig,
        modes_config: ModesConfig,
        devices: Mapping[str, DeviceConfig],
        drivers: Mapping[str, Driver],
        emit: Emit,
        device_health: Callable[[], Mapping[str, DeviceHealthView]],
        uplink_last_success: Callable[[], float | None] | None,
        live_values: Callable[[], Mapping[str, float]],
        state_dir: Path,
        clock: Clock | None = None,
        storage_fault: Callable[[], str | None] | None = None,
        on_read_back: Callable[[WriteOutcome], None] | None = None,
    ) -> None:
        """``devices``: the configured devices (enabled or not; their poll intervals time the
        stale alarms). ``drivers``: the running drivers by device id, read at each write.
        ``uplink_last_success``: wall time of the last successful sync (None before the
        first), or None when the agent has no uplink. ``live_values``: the latest good value
        of every point (read only when a custom mode has point triggers). ``storage_fault``:
        why the buffer cannot commit right now, or None when it can (the ``buffer:commit_failed``
        system alarm and a ``degraded`` reason while it says so). ``on_read_back``:
        told every write outcome that carries a read-back (the live cache shows what the
        device now holds at once, not the value of the last poll)."""
        self._clock = clock or SystemClock()
        self._on_read_back = on_read_back
        self._storage_fault = storage_fault
        self._devices = devices
        self._device_health = device_health
        self._uplink_last_success = uplink_last_success
        self._live_values = live_values
        self._wants_values = any(m.triggers for m in modes_config.custom)
        self.alarms = AlarmEngine(
            schedule.points,
            alarms_config,
            clock=self._clock,
            emit=emit,
            state_store=JsonFileStore(state_dir / alarms_config.state_file),
            device_poll_intervals={d: dev.poll_interval for d, dev in devices.items()},
            devices=self._enabled_devices(),
        )
        self.writes = WriteService(
            schedule.points_by_id(),
            drivers,
            emit=emit,
            device_up=self._device_up,
            clock=self._clock,
        )
        self.modes = ModeMachine(
            modes_config,
            clock=self._clock,
            emit=emit,
            write=self._failsafe_write,
            has_uplink=uplink_last_success is not None,
            state_store=JsonFileStore(state_dir / modes_config.state_file),
            on_suppression=self.alarms.set_suppression,
        )

    # ------------------------------------------------------------------ daemon side

    def on_schedule(self, schedule: Schedule) -> None:
        """A reloaded schedule: alarms keep the state of definitions that still exist."""
        self.alarms.reload(schedule.points, self._enabled_devices())
        self.writes.set_points(schedule.points_by_id())

    async def run(self) -> None:
        """The 1 s tick: comms health → alarm timers → mode decision. Runs until cancelled;
        alarm state is flushed to disk on the way out."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        try:
            while True:
                next_tick += TICK_S
                await asyncio.sleep(max(0.0, next_tick - loop.time()))
                await self.tick()
        finally:
            self.alarms.flush()

    async def tick(self) -> None:
        now = self._clock.now()
        for device_id, health in self._device_health().items():
            if health.last_poll_ts is not None:
                self.alarms.device_comms(device_id, health.connected, now)
        fault = self._storage_fault() if self._storage_fault is not None else None
        self.alarms.buffer_commit(fault is not None, now)
        self.alarms.tick()
        active = self.alarms.active_alarms()
        in_loss = {a.device for a in active if a.kind == "comms_loss" and a.device}
        await self.modes.evaluate(
            devices_in_comms_loss=in_loss,
            uplink_ok_age_s=self._uplink_age(now),
            active_alarms=active,
            point_values=self._live_values() if self._wants_values else None,
            system_faults=() if fault is None else (fault,),
        )

    def close(self) -> None:
        self.alarms.flush()

    def mode_name(self) -> str:
        return self.modes.mode

    # ------------------------------------------------------------------ views

    def list_alarms(self, *, include_inactive: bool = False) -> builtins.list[AlarmView]:
        return self.alarms.list(include_inactive=include_inactive)

    def get_alarm(self, alarm_id: str) -> AlarmView:
        return self._alarm_action(self.alarms.get, alarm_id)

    def mode_state(self) -> dict[str, Any]:
        return self.modes.state()

    def mode_graph(self, fmt: Literal["text", "mermaid"] = "text") -> str:
        return self.modes.graph(fmt)

    # ------------------------------------------------------------------ operator actions

    def ack(self, alarm_id: str, *, actor: str, note: str | None = None) -> AlarmView:
        return self._alarm_action(self.alarms.ack, alarm_id, actor, note)

    def ack_many(
        self,
        ids: builtins.list[str] | None,
        *,
        actor: str,
        device: str | None = None,
        priority: str | None = None,
        note: str | None = None,
    ) -> tuple[builtins.list[AlarmView], builtins.list[dict[str, str]]]:
        """Acknowledge ``ids``, or (None) every alarm waiting for acknowledgement, narrowed by
        ``device`` and ``priority``; each is its own recorded ``operator.ack``. Returns what
        was acknowledged and what was not (``{"id", "reason"}``): one refusal does not stop
        the others."""
        if ids is None:
            ids = [
                v.id
                for v in self.alarms.list()
                if v.base_state in WAITING_FOR_ACK
                and (device is None or v.device == device)
                and (priority is None or v.priority == priority)
            ]
        acked: builtins.list[AlarmView] = []
        skipped: builtins.list[dict[str, str]] = []
        for alarm_id in dict.fromkeys(ids):
            try:
                acked.append(self.alarms.ack(alarm_id, actor, note))
            except (UnknownAlarm, AlarmActionRefused) as exc:
                skipped.append({"id": alarm_id, "reason": str(exc)})
        return acked, skipped

    def shelve(
        self, alarm_id: str, *, actor: str, duration_s: float | None, note: str | None = None
    ) -> AlarmView:
        """``duration_s`` None: one-shot, until the alarm next returns to normal. ``note``:
        the reason, required."""
        return self._alarm_action(self.alarms.shelve, alarm_id, actor, duration_s, note)

    def unshelve(self, alarm_id: str, *, actor: str, note: str | None = None) -> AlarmView:
        return self._alarm_action(self.alarms.unshelve, alarm_id, actor, note)

    def set_out_of_service(
        self, alarm_id: str, on: bool, *, actor: str, note: str | None = None
    ) -> AlarmView:
        return self._alarm_action(self.alarms.set_out_of_service, alarm_id, on, actor, note)

    async def set_maintenance(
        self,
        duration_s: float,
        reason: str,
        *,
        actor: str,
        scope: MaintenanceScope = None,
    ) -> dict[str, Any]:
        try:
            return await self.modes.set_maintenance(duration_s, reason, actor, scope)
        except ModeRefused as exc:
            raise ControlRefused(str(exc)) from None

    async def clear_mode(self, *, actor: str, reason: str | None = None) -> dict[str, Any]:
        try:
            return await self.modes.clear(actor, reason)
        except ModeRefused as exc:
            raise ControlRefused(str(exc)) from None

    async def write(
        self,
        point_id: str,
        value: float,
        *,
        actor: str,
        priority: int | None = None,
        verify: bool = True,
    ) -> WriteOutcome:
        """A sent write that failed or read back differently is an outcome, not a refusal:
        the action did happen (``outcome.ok`` is False)."""
        self._check_interlock(point_id, actor)
        try:
            outcome = await self.writes.write(
                point_id, value, actor=actor, priority=priority, verify=verify
            )
        except UnknownPoint as exc:
            raise ControlRefused(str(exc), "unknown") from None
        except WriteRefused as exc:
            raise ControlRefused(str(exc)) from None
        return self._read_back(outcome)

    async def relinquish(
        self, point_id: str, *, actor: str, priority: int | None = None
    ) -> WriteOutcome:
        self._check_interlock(point_id, actor)
        try:
            outcome = await self.writes.relinquish(point_id, actor=actor, priority=priority)
        except UnknownPoint as exc:
            raise ControlRefused(str(exc), "unknown") from None
        except WriteRefused as exc:
            raise ControlRefused(str(exc)) from None
        return self._read_back(outcome)

    def _check_interlock(self, point_id: str, actor: str) -> None:
        """While in emergency, the points of the failsafe writes hold their failsafe values: no
        operator, remote or Sparkplug write or relinquish moves them until the emergency is
        cleared. The mode machine's own writes (actor ``mode:...``) do not come through here."""
        if self.modes.mode != EMERGENCY or actor.startswith("mode:"):
            return
        held = {action.point for action in self.modes.config.emergency.failsafe_writes}
        if point_id in held:
            raise ControlRefused(
                f"{point_id} is held by the emergency failsafe; clear the emergency first "
                '(`outpost mode clear --reason "..."`)'
            )

    def _read_back(self, outcome: WriteOutcome) -> WriteOutcome:
        if outcome.read_back is not None and self._on_read_back is not None:
            self._on_read_back(outcome)
        return outcome

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _alarm_action(fn: Callable[P, AlarmView], *args: P.args, **kwargs: P.kwargs) -> AlarmView:
        try:
            return fn(*args, **kwargs)
        except UnknownAlarm as exc:
            raise ControlRefused(str(exc), "unknown") from None
        except AlarmActionRefused as exc:
            raise ControlRefused(str(exc)) from None

    def _enabled_devices(self) -> list[str]:
        return [d for d, dev in self._devices.items() if dev.enabled]

    def _device_up(self, device: str) -> bool:
        health = self._device_health().get(device)
        return health is not None and health.connected

    async def _failsafe_write(self, point_id: str, value: float, actor: str) -> WriteOutcome:
        return self._read_back(await self.writes.write(point_id, value, actor=actor))

    def _uplink_age(self, now: float) -> float | None:
        if self._uplink_last_success is None:
            return None
        last = self._uplink_last_success()
        return None if not last else max(0.0, now - last)
