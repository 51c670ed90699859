"""The site's operating mode: a ``transitions`` asyncio state machine.

Built-in modes (DESIGN.md): ``starting`` → ``normal`` / ``degraded`` (any device in comms-loss,
or — with an uplink configured — no successful sync for ``degraded_uplink_after_s``);
``maintenance`` (operator-set with a reason and an expiry; alarms in its scope are suppressed by
design); ``emergency`` (an alarm of a configured class is active: failsafe writes run in order,
each verified by read-back; left by an operator once the condition is gone, or by itself if
``auto_clear``). Custom modes from the config sit between maintenance and degraded in
precedence: emergency > maintenance > custom (declaration order) > degraded > normal.

The agent calls ``evaluate`` about once a second with the current facts; operators call
``set_maintenance`` and ``clear``. Every transition is one event: kind ``mode`` when the machine
decided, ``operator.mode`` when a person did (actor = who); detail ``from, to, cause, reason,
until``. Maintenance (with its expiry), emergency and custom modes that need an operator to
clear survive a restart; normal/degraded are re-evaluated from ``starting``.

Emergency outranks maintenance, but does not end it: a maintenance window that was running when
the emergency began resumes when the emergency clears, if it has not expired meanwhile. An
emergency restored after a restart re-asserts its failsafe writes on the first evaluation (the
devices may have been changed by hand while the agent was down), logged as such.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from transitions import MachineError
from transitions.extensions.asyncio import AsyncMachine

from outpost.fsm.actions import WriteOutcome, WriteRefused
from outpost.fsm.clock import Clock, Emit, format_duration, iso
from outpost.fsm.config import (
    AlarmTrigger,
    CustomMode,
    ModesConfig,
    PointTrigger,
    Scope,
    WriteAction,
)
from outpost.fsm.persist import StateStore

log = structlog.get_logger(__name__)

STARTING, NORMAL, DEGRADED, MAINTENANCE, EMERGENCY = (
    "starting",
    "normal",
    "degraded",
    "maintenance",
    "emergency",
)
STATE_VERSION = 1


@dataclass(frozen=True)
class _PausedMaintenance:
    """The maintenance window an emergency interrupted, resumed when the emergency clears."""

    reason: str | None
    actor: str | None
    until: float
    scope: Scope


WriteCallback = Callable[[str, float, str], Awaitable[WriteOutcome]]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class ModeRefused(Exception):
    """An operator's mode request does not apply now; the message says why."""


class AlarmLike(Protocol):
    """What the machine needs of an alarm (``fsm.alarms.AlarmView`` and ``Alarm`` fit)."""

    # Read-only properties: a frozen dataclass (AlarmView) satisfies them, plain attributes too.
    @property
    def id(self) -> str: ...
    @property
    def point_id(self) -> str | None: ...
    @property
    def device(self) -> str | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def priority(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Edge:
    trigger: str
    source: str
    dest: str
    label: str


def _tag_matches(tags: Mapping[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    if key not in tags:
        return False
    return not sep or tags[key] == value


def _priority(alarm: AlarmLike) -> str:
    value = alarm.priority
    return str(getattr(value, "value", value))


def in_scope(scope: Scope, alarm: AlarmLike) -> bool:
    """Maintenance scope: system alarms (flood) are never in it."""
    if alarm.device is None:
        return False
    if scope.is_all:
        return True
    if alarm.device in scope.devices:
        return True
    return any(_tag_matches(alarm.tags, t) for t in scope.tags)


class _Model:
    """The object ``transitions`` drives; it only carries ``state`` and the trigger methods."""

    state: str


class ModeMachine:
    def __init__(
        self,
        config: ModesConfig,
        *,
        clock: Clock,
        emit: Emit,
        write: WriteCallback | None = None,
        has_uplink: bool = False,
        state_store: StateStore | None = None,
        on_suppression: Callable[[Callable[[Any], bool] | None], None] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._emit = emit
        self._write = write
        self._has_uplink = has_uplink
        self._store = state_store
        self._on_suppression = on_suppression
        self._lock = asyncio.Lock()
        self._custom: dict[str, CustomMode] = {m.name: m for m in config.custom}
        self._created = clock.now()
        self._healthy = True
        self._last_alarms: Sequence[AlarmLike] = ()
        self._last_values: Mapping[str, float] = {}
        self._since = self._created
        self._cause = "agent started"
        self._reason: str | None = None
        self._until: float | None = None
        self._actor: str | None = None
        self._scope: Scope = config.maintenance.default_scope
        self._last_writes: list[dict[str, Any]] = []
        self._paused: _PausedMaintenance | None = None
        self._reassert_failsafe = False
        initial, restored = self._restore()
        self._edges = self._build_edges()
        self._model = _Model()
        self._machine = AsyncMachine(
            model=self._model,
            states=[STARTING, NORMAL, DEGRADED, MAINTENANCE, EMERGENCY, *self._custom],
            initial=initial,
            send_event=True,
            auto_transitions=False,
            after_state_change=self._after_change,
        )
        for edge in self._edges:
            conditions = []
            if edge.label == "healthy":
                conditions = [self._cond_healthy]
            elif edge.label == "unhealthy":
                conditions = [self._cond_unhealthy]
            self._machine.add_transition(
                edge.trigger, edge.source, edge.dest, conditions=conditions
            )
        if on_suppression is not None:
            # Always, so suppression restored with the alarm state matches the restored mode
            # (e.g. maintenance that expired while the agent was stopped is lifted now).
            on_suppression(self.suppression_predicate())
        if restored is not None:
            self._send(
                self._clock.now(),
                "mode",
                initial,
                None,
                {
                    "from": STARTING,
                    "to": initial,
                    "cause": f"restored after restart ({restored})",
                    "reason": self._reason,
                    "until": iso(self._until),
                },
            )

    # -------------------------------------------------------------------------- the graph

    def _build_edges(self) -> list[Edge]:
        custom = list(self._custom)
        edges = [
            Edge("start", STARTING, NORMAL, "healthy"),
            Edge("start", STARTING, DEGRADED, "unhealthy"),
            Edge("degrade", NORMAL, DEGRADED, "device comms-loss or uplink down"),
            Edge("recover", DEGRADED, NORMAL, "all devices reachable, uplink ok"),
        ]
        for source in (STARTING, NORMAL, DEGRADED, MAINTENANCE, *custom):
            label = (
                "operator: extend" if source == MAINTENANCE else "operator: mode set maintenance"
            )
            edges.append(Edge("maintenance", source, MAINTENANCE, label))
        edges += [
            Edge("end_maintenance", MAINTENANCE, NORMAL, "healthy"),
            Edge("end_maintenance", MAINTENANCE, DEGRADED, "unhealthy"),
        ]
        for source in (STARTING, NORMAL, DEGRADED, MAINTENANCE, *custom):
            edges.append(Edge("emergency", source, EMERGENCY, "emergency alarm active"))
        edges += [
            Edge("clear_emergency", EMERGENCY, NORMAL, "healthy"),
            Edge("clear_emergency", EMERGENCY, DEGRADED, "unhealthy"),
            Edge(
                "resume_maintenance", EMERGENCY, MAINTENANCE, "interrupted maintenance not expired"
            ),
        ]
        for index, name in enumerate(custom):
            mode = self._custom[name]
            sources = [NORMAL, DEGRADED, *custom[index + 1 :]]
            for source in sources:
                edges.append(Edge(f"enter_{name}", source, name, "trigger holds"))
            if mode.exit_to == NORMAL:
                edges.append(Edge(f"exit_{name}", name, NORMAL, "healthy"))
                edges.append(Edge(f"exit_{name}", name, DEGRADED, "unhealthy"))
            else:
                edges.append(Edge(f"exit_{name}", name, mode.exit_to, "trigger cleared"))
        return edges

    def graph(self, fmt: str = "text") -> str:
        """The machine as text (one line per transition) or a Mermaid state diagram."""
        labels = {
            "healthy": "[healthy]",
            "unhealthy": "[devices in comms-loss or uplink down]",
        }
        if fmt == "mermaid":
            lines = ["stateDiagram-v2", f"    [*] --> {STARTING}"]
            for e in self._edges:
                cond = labels.get(e.label, e.label)
                lines.append(f"    {e.source} --> {e.dest} : {e.trigger} {cond}".rstrip())
            current = self.mode
            lines.append(f"    note right of {current} : current mode")
            return "\n".join(lines) + "\n"
        if fmt != "text":
            raise ValueError(f"unknown graph format {fmt!r}; expected text or mermaid")
        width = max(len(s) for s in self._machine.states)
        out = [f"modes (current: {self.mode})"]
        for state in self._machine.states:
            marker = "*" if state == self.mode else " "
            out.append(f"{marker} {state}")
            for e in self._edges:
                if e.source != state:
                    continue
                cond = labels.get(e.label, e.label)
                out.append(f"    --{e.trigger}--> {e.dest:<{width}}  {cond}")
        return "\n".join(out) + "\n"

    # ---------------------------------------------------------------------------- queries

    @property
    def mode(self) -> str:
        return self._model.state

    @property
    def modes(self) -> list[str]:
        return list(self._machine.states)

    def state(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "since": iso(self._since),
            "cause": self._cause,
            "reason": self._reason,
            "until": iso(self._until),
            "actor": self._actor,
            "scope": self._scope.describe() if self.mode == MAINTENANCE else None,
            "failsafe_writes": list(self._last_writes) if self.mode == EMERGENCY else [],
            "modes": self.modes,
        }

    def suppression_predicate(self) -> Callable[[Any], bool] | None:
        """For ``AlarmEngine.set_suppression``: in maintenance, alarms in its scope."""
        if self.mode != MAINTENANCE:
            return None
        scope = self._scope

        def predicate(alarm: Any) -> bool:
            return in_scope(scope, alarm)

        return predicate

    # ------------------------------------------------------------------------- evaluation

    def _cond_healthy(self, event: Any) -> bool:
        return self._healthy

    def _cond_unhealthy(self, event: Any) -> bool:
        return not self._healthy

    def emergency_trigger(self, alarms: Sequence[AlarmLike]) -> AlarmLike | None:
        cfg = self.config.emergency
        for alarm in alarms:
            if getattr(alarm, "out_of_service", False):
                continue
            if getattr(alarm, "active", True) is False:
                continue
            if alarm.id in cfg.trigger_alarms:
                return alarm
            if not cfg.trigger_tags and not cfg.trigger_priorities:
                continue
            if cfg.trigger_tags and not any(_tag_matches(alarm.tags, t) for t in cfg.trigger_tags):
                continue
            if cfg.trigger_priorities and _priority(alarm) not in {
                p.value for p in cfg.trigger_priorities
            }:
                continue
            return alarm
        return None

    def _custom_holds(
        self, mode: CustomMode, alarms: Sequence[AlarmLike], values: Mapping[str, float]
    ) -> str | None:
        """The first trigger that holds, described; None when none does."""
        for trigger in mode.triggers:
            if isinstance(trigger, PointTrigger):
                value = values.get(trigger.point)
                if value is not None and value == value and _OPS[trigger.op](value, trigger.value):
                    return f"{trigger.point} {trigger.op} {trigger.value:g} (value {value:g})"
            elif isinstance(trigger, AlarmTrigger):
                for alarm in alarms:
                    if getattr(alarm, "out_of_service", False):
                        continue
                    if _alarm_matches(trigger, alarm):
                        return f"alarm {alarm.id} active"
        return None

    async def evaluate(
        self,
        *,
        devices_in_comms_loss: set[str] | frozenset[str],
        uplink_ok_age_s: float | None,
        active_alarms: Sequence[AlarmLike],
        point_values: Mapping[str, float] | None = None,
        system_faults: Sequence[str] = (),
    ) -> str:
        """Re-decide the mode from the facts; returns the mode afterwards.

        ``system_faults``: reasons the agent itself is impaired (e.g. the buffer cannot
        commit); each one makes the site ``degraded`` like comms loss does.

        ``uplink_ok_age_s``: seconds since the last successful sync, None if none yet (then
        counted from the machine's creation). ``point_values``: latest good values, needed only
        by custom modes with point triggers.
        """
        async with self._lock:
            now = self._clock.now()
            if self._reassert_failsafe:
                self._reassert_failsafe = False
                if self.mode == EMERGENCY and self.config.emergency.failsafe_writes:
                    log.info(
                        "mode.failsafe_reasserted",
                        writes=len(self.config.emergency.failsafe_writes),
                    )
                    self._last_writes = await self._run_writes(
                        EMERGENCY,
                        self.config.emergency.failsafe_writes,
                        cause="failsafe writes re-asserted after restart",
                    )
            self._last_alarms = list(active_alarms)
            self._last_values = point_values or {}
            reasons = []
            if self.config.degraded_on_comms_loss and devices_in_comms_loss:
                reasons.append("comms-loss: " + ", ".join(sorted(devices_in_comms_loss)))
            if self._has_uplink:
                age = uplink_ok_age_s if uplink_ok_age_s is not None else now - self._created
                if age > self.config.degraded_uplink_after_s:
                    reasons.append(f"uplink: no successful sync for {format_duration(age)}")
            reasons.extend(system_faults)
            self._healthy = not reasons
            health_cause = "; ".join(reasons) if reasons else "all devices reachable, uplink ok"
            mode = self.mode

            trigger = self.emergency_trigger(self._last_alarms)
            if mode == EMERGENCY:
                if trigger is None and self.config.emergency.auto_clear:
                    await self._leave_emergency(cause="emergency condition cleared")
                else:
                    return self.mode
            elif trigger is not None and (
                mode != MAINTENANCE or self.config.emergency.in_maintenance
            ):
                await self._fire(
                    "emergency",
                    cause=f"alarm {trigger.id} ({_priority(trigger)}) active",
                    writes=self.config.emergency.failsafe_writes,
                )
                return self.mode

            mode = self.mode
            if mode == MAINTENANCE:
                if self._until is not None and now >= self._until:
                    await self._fire("end_maintenance", cause="maintenance expired")
                else:
                    return self.mode

            mode = self.mode
            if mode in self._custom:
                current = self._custom[mode]
                order = list(self._custom)
                for name in order[: order.index(mode)]:
                    held = self._custom_holds(
                        self._custom[name], self._last_alarms, self._last_values
                    )
                    if held:
                        await self._fire(
                            f"enter_{name}", cause=held, writes=self._custom[name].entry_writes
                        )
                        return self.mode
                if self._custom_holds(current, self._last_alarms, self._last_values):
                    return self.mode
                if not current.auto_clear:
                    return self.mode
                await self._fire(f"exit_{mode}", cause=f"{mode} trigger cleared")
                if self.mode in self._custom:
                    return self.mode

            mode = self.mode
            if mode in (NORMAL, DEGRADED, STARTING):
                for name, custom in self._custom.items():
                    held = self._custom_holds(custom, self._last_alarms, self._last_values)
                    if held and mode != STARTING:
                        await self._fire(f"enter_{name}", cause=held, writes=custom.entry_writes)
                        return self.mode
            mode = self.mode
            if mode == STARTING:
                await self._fire("start", cause=health_cause)
            elif mode == NORMAL and not self._healthy:
                await self._fire("degrade", cause=health_cause)
            elif mode == DEGRADED and self._healthy:
                await self._fire("recover", cause=health_cause)
            return self.mode

    # -------------------------------------------------------------------------- operators

    async def set_maintenance(
        self,
        duration_s: float,
        reason: str,
        actor: str,
        scope: Scope | Mapping[str, Any] | str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        reason = (reason or "").strip()
        if not reason:
            raise ModeRefused('maintenance needs a reason (e.g. --reason "CDU filter change")')
        if not duration_s > 0:
            raise ModeRefused(f"maintenance duration must be positive, got {duration_s}")
        limit = self.config.maintenance.max_duration_s
        if duration_s > limit:
            raise ModeRefused(
                f"maintenance duration {format_duration(duration_s)} exceeds the maximum "
                f"{format_duration(limit)} (modes.maintenance.max_duration_s)"
            )
        try:
            parsed = self.config.maintenance.default_scope if scope is None else Scope.parse(scope)
        except ValueError as exc:
            raise ModeRefused(f"invalid maintenance scope: {exc}") from None
        async with self._lock:
            if self.mode == EMERGENCY:
                raise ModeRefused(
                    "the site is in emergency; clear it first (`outpost mode clear --reason ...`)"
                )
            now = self._clock.now()
            await self._fire(
                "maintenance",
                cause="operator",
                reason=reason,
                actor=actor,
                until=now + duration_s,
                scope=parsed,
            )
        return self.state()

    async def clear(self, actor: str, reason: str | None = None) -> dict[str, Any]:
        """Leave maintenance, emergency (once its condition is gone) or a custom mode."""
        async with self._lock:
            mode = self.mode
            if mode == MAINTENANCE:
                await self._fire("end_maintenance", cause="operator", actor=actor, reason=reason)
            elif mode == EMERGENCY:
                trigger = self.emergency_trigger(self._last_alarms)
                if trigger is not None:
                    raise ModeRefused(
                        f"emergency condition still active: alarm {trigger.id}; it can be cleared "
                        "once the condition is gone"
                    )
                await self._leave_emergency(cause="operator", actor=actor, reason=reason)
            elif mode in self._custom:
                held = self._custom_holds(self._custom[mode], self._last_alarms, self._last_values)
                if held:
                    raise ModeRefused(f"{mode} condition still holds: {held}")
                await self._fire(f"exit_{mode}", cause="operator", actor=actor, reason=reason)
            else:
                raise ModeRefused(f"nothing to clear: the mode is {mode}")
        return self.state()

    # ---------------------------------------------------------------------------- internals

    async def _leave_emergency(
        self, *, cause: str, actor: str | None = None, reason: str | None = None
    ) -> None:
        """Back to the interrupted maintenance window while it lasts, else normal/degraded."""
        paused, self._paused = self._paused, None
        if paused is not None and paused.until > self._clock.now():
            await self._fire(
                "resume_maintenance",
                cause=f"{cause}; maintenance resumes",
                reason=paused.reason,
                actor=actor,
                owner=paused.actor,
                until=paused.until,
                scope=paused.scope,
            )
            return
        await self._fire("clear_emergency", cause=cause, actor=actor, reason=reason)

    async def _fire(
        self,
        trigger: str,
        *,
        cause: str,
        reason: str | None = None,
        actor: str | None = None,
        until: float | None = None,
        scope: Scope | None = None,
        writes: Sequence[WriteAction] = (),
        owner: str | None = None,
    ) -> None:
        """``owner``: who the new mode belongs to when that is not the actor of this change
        (a resumed maintenance window stays its original operator's)."""
        try:
            await self._model.trigger(  # type: ignore[attr-defined]
                trigger,
                cause=cause,
                reason=reason,
                actor=actor,
                owner=owner,
                until=until,
                scope=scope,
                writes=tuple(writes),
            )
        except MachineError as exc:
            raise ModeRefused(f"cannot {trigger} from mode {self.mode}: {exc.value}") from None

    async def _after_change(self, event: Any) -> None:
        source, dest = event.transition.source, event.transition.dest
        kw = event.kwargs
        now = self._clock.now()
        was_maintenance = source == MAINTENANCE
        if was_maintenance and dest == EMERGENCY and self._until is not None:
            self._paused = _PausedMaintenance(self._reason, self._actor, self._until, self._scope)
        if source != dest:  # extending maintenance keeps its start
            self._since = now
        self._cause = kw.get("cause") or event.event.name
        self._reason = kw.get("reason")
        self._actor = kw.get("owner") or kw.get("actor")
        self._until = kw.get("until") if dest == MAINTENANCE else None
        if dest == MAINTENANCE:
            self._scope = kw.get("scope") or self.config.maintenance.default_scope
        actor = kw.get("actor")
        self._send(
            now,
            "operator.mode" if actor else "mode",
            dest,
            actor,
            {
                "from": source,
                "to": dest,
                "trigger": event.event.name,
                "cause": self._cause,
                "reason": self._reason,
                "until": iso(self._until),
                "scope": self._scope.describe() if dest == MAINTENANCE else None,
            },
        )
        log.info("mode.changed", source=source, dest=dest, cause=self._cause, actor=actor)
        self._save()
        if self._on_suppression is not None and (dest == MAINTENANCE or was_maintenance):
            self._on_suppression(self.suppression_predicate())
        writes: tuple[WriteAction, ...] = kw.get("writes") or ()
        if writes:
            self._last_writes = await self._run_writes(dest, writes)

    async def _run_writes(
        self, mode: str, writes: Sequence[WriteAction], cause: str = "entry writes done"
    ) -> list[dict[str, Any]]:
        """In order, each on its own: one failed write must not stop the next failsafe."""
        actor = f"mode:{mode}"
        results: list[dict[str, Any]] = []
        for action in writes:
            entry: dict[str, Any] = {"point": action.point, "value": action.value}
            if self._write is None:
                entry |= {"result": "failed", "message": "no write service configured"}
            else:
                try:
                    outcome = await self._write(action.point, action.value, actor)
                except WriteRefused as exc:
                    entry |= {"result": "refused", "message": str(exc)}
                except Exception as exc:
                    log.exception("mode.write_crashed", point=action.point)
                    entry |= {"result": "failed", "message": f"{type(exc).__name__}: {exc}"}
                else:
                    entry |= {
                        "result": outcome.result,
                        "message": outcome.message,
                        "read_back": outcome.read_back,
                    }
            results.append(entry)
        ok = sum(1 for r in results if r["result"] in ("ok", "sent", "unverified"))
        self._send(
            self._clock.now(),
            "mode",
            mode,
            actor,
            {
                "from": mode,
                "to": mode,
                "cause": cause,
                "writes": results,
                "ok": ok,
                "failed": len(results) - ok,
            },
        )
        return results

    def _send(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        try:
            self._emit(ts, kind, source, actor, detail)
        except Exception as exc:
            log.error("mode.event_failed", kind=kind, error=str(exc), detail=dict(detail))

    def _persistent(self, mode: str) -> bool:
        if mode in (MAINTENANCE, EMERGENCY):
            return True
        custom = self._custom.get(mode)
        return custom is not None and not custom.auto_clear

    def _save(self) -> None:
        if self._store is None:
            return
        state: dict[str, Any] = {"version": STATE_VERSION, "mode": None}
        if self._persistent(self.mode):
            state |= {
                "mode": self.mode,
                "since": self._since,
                "cause": self._cause,
                "reason": self._reason,
                "until": self._until,
                "actor": self._actor,
                "scope": self._scope.model_dump(mode="json"),
            }
            if self.mode == EMERGENCY and self._paused is not None:
                state["paused_maintenance"] = {
                    "reason": self._paused.reason,
                    "actor": self._paused.actor,
                    "until": self._paused.until,
                    "scope": self._paused.scope.model_dump(mode="json"),
                }
        try:
            self._store.save(state)
        except OSError as exc:
            log.error("mode.save_failed", error=str(exc))

    def _restore(self) -> tuple[str, str | None]:
        if self._store is None:
            return STARTING, None
        data = self._store.load() or {}
        mode = data.get("mode")
        if data.get("version") != STATE_VERSION or not mode:
            return STARTING, None
        known = {MAINTENANCE, EMERGENCY, *self._custom}
        if mode not in known or not self._persistent(mode):
            log.warning("mode.restore_skipped", mode=mode)
            return STARTING, None
        now = self._clock.now()
        until = data.get("until")
        if mode == MAINTENANCE and (until is None or until <= now):
            self._send(
                now,
                "mode",
                STARTING,
                None,
                {
                    "from": MAINTENANCE,
                    "to": STARTING,
                    "cause": "maintenance expired while the agent was stopped",
                    "reason": data.get("reason"),
                    "until": iso(until),
                },
            )
            return STARTING, None
        self._since = float(data.get("since") or now)
        self._cause = data.get("cause") or "restored"
        self._reason = data.get("reason")
        self._until = until
        self._actor = data.get("actor")
        try:
            self._scope = Scope.model_validate(data.get("scope") or {})
        except ValueError:
            self._scope = self.config.maintenance.default_scope
        if mode == EMERGENCY:
            self._reassert_failsafe = True
            paused = data.get("paused_maintenance")
            if isinstance(paused, dict) and isinstance(paused.get("until"), int | float):
                try:
                    scope = Scope.model_validate(paused.get("scope") or {})
                except ValueError:
                    scope = self.config.maintenance.default_scope
                self._paused = _PausedMaintenance(
                    paused.get("reason"), paused.get("actor"), float(paused["until"]), scope
                )
        return mode, self._cause


def _alarm_matches(trigger: AlarmTrigger, alarm: AlarmLike) -> bool:
    if trigger.id is not None:
        if trigger.id.endswith("*"):
            if not alarm.id.startswith(trigger.id[:-1]):
                return False
        elif alarm.id != trigger.id:
            return False
    if trigger.point is not None and alarm.point_id != trigger.point:
        return False
    if trigger.device is not None and alarm.device != trigger.device:
        return False
    if trigger.kind is not None and alarm.kind != trigger.kind:
        return False
    if trigger.tag is not None and not _tag_matches(alarm.tags, trigger.tag):
        return False
    return trigger.priority is None or _priority(alarm) == trigger.priority.value
