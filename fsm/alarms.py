"""The alarm engine: ISA-18.2 / IEC 62682 alarm states for every alarm of the point schedule,
plus built-in device comms-loss, per-point stale-data and alarm-flood alarms.

State model. Each alarm has a *base* state — normal, unack_active, ack_active, rtn_unack —
driven by three stimuli (the condition activates, the condition clears, an operator
acknowledges), and three independent *overlays*: shelved (timed with a maximum, or one-shot until
the next return to normal), suppressed (by design: the current mode says so) and
out_of_service. The base state keeps being evaluated under an overlay, so removing the overlay
shows the truth at once. The displayed ``state`` is the strongest overlay
(out_of_service > shelved > suppressed) or else the base state; ``base_state`` is always there.

Why an explicit transition table and not ``transitions``: the base model is 4 states x 3
stimuli x (overlaid or not) = 24 cells, small enough to write down whole and to test every cell
(tests/test_alarms_table.py). A site has thousands of alarms evaluated on every poll; a dict
lookup per state change costs nothing, whereas a ``transitions`` model per alarm adds a bound
trigger method per event and callback dispatch per reading for no behaviour we need. The
*mode* machine, which has few states, callbacks and a graph to print, does use ``transitions``.

Rules chosen where the standard leaves a choice (documented for operators in the README):
- Analog limits: high alarms activate on ``value > limit`` and return when
  ``value <= limit - alarm_deadband``; low alarms mirror that. Each limit is its own alarm,
  ``<point>:hihi``, ``:hi``, ``:lo``, ``:lolo``.
- HH implies H: both show. Each limit has its own operator response, and when the HH returns
  the operator still sees the H that remains; hiding H would make the list lie for a moment.
- Priorities: ``alarm_priority`` for H/L and discrete alarms, one step up for HH/LL.
- On-delay / clear-delay: the raw condition must hold continuously for ``alarm_delay`` /
  ``alarm_clear_delay`` seconds (judged on readings and on ``tick``).
- Bad quality (or NaN) neither raises nor clears limit alarms and cancels a pending delay; the
  comms-loss alarm covers the device. Uncertain values are evaluated (they are real readings).
- A return to normal while overlaid goes straight to normal (nobody was asked to see it); an
  activation while overlaid still goes to unack_active, so it is unacknowledged when revealed.
- Stale: no usable value (quality not bad, not stale) for ``stale_after_factor`` x the point's
  poll interval; it holds its state while its device is failing (one cause, one alarm).
- Flood: activations that were annunciated (not overlaid) in the last ``flood_window_s``;
  more than ``flood_threshold`` raises ``system:flood``, fewer than ``flood_clear_below`` clears.
"""

from __future__ import annotations

import builtins
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from outpost.fsm.clock import Clock, Emit, iso
from outpost.fsm.config import AlarmsConfig
from outpost.fsm.persist import StateStore
from outpost.point_schedules.model import AlarmPriority, Point
from outpost.point_schedules.quality import Quality

log = structlog.get_logger(__name__)

STATE_VERSION = 1


class AlarmState(StrEnum):
    NORMAL = "normal"
    UNACK_ACTIVE = "unack_active"
    ACK_ACTIVE = "ack_active"
    RTN_UNACK = "rtn_unack"


class Stimulus(StrEnum):
    ACTIVATE = "activate"
    CLEAR = "clear"
    ACK = "ack"


N, UA, AA, RU = (
    AlarmState.NORMAL,
    AlarmState.UNACK_ACTIVE,
    AlarmState.ACK_ACTIVE,
    AlarmState.RTN_UNACK,
)

#: (base state, stimulus, overlaid) → next base state; None = the stimulus is refused there
#: (only ACK can be refused: there is nothing to acknowledge). Every cell is listed on purpose.
TRANSITIONS: dict[tuple[AlarmState, Stimulus, bool], AlarmState | None] = {
    (N, Stimulus.ACTIVATE, False): UA,
    (N, Stimulus.CLEAR, False): N,
    (N, Stimulus.ACK, False): None,
    (UA, Stimulus.ACTIVATE, False): UA,
    (UA, Stimulus.CLEAR, False): RU,
    (UA, Stimulus.ACK, False): AA,
    (AA, Stimulus.ACTIVATE, False): AA,
    (AA, Stimulus.CLEAR, False): N,
    (AA, Stimulus.ACK, False): None,
    (RU, Stimulus.ACTIVATE, False): UA,
    (RU, Stimulus.CLEAR, False): RU,
    (RU, Stimulus.ACK, False): N,
    # Overlaid (shelved / suppressed / out of service): a return to normal needs no ack. A
    # return that was already pending acknowledgement before the overlay still is.
    (N, Stimulus.ACTIVATE, True): UA,
    (N, Stimulus.CLEAR, True): N,
    (N, Stimulus.ACK, True): None,
    (UA, Stimulus.ACTIVATE, True): UA,
    (UA, Stimulus.CLEAR, True): N,
    (UA, Stimulus.ACK, True): AA,
    (AA, Stimulus.ACTIVATE, True): AA,
    (AA, Stimulus.CLEAR, True): N,
    (AA, Stimulus.ACK, True): None,
    (RU, Stimulus.ACTIVATE, True): UA,
    (RU, Stimulus.CLEAR, True): RU,
    (RU, Stimulus.ACK, True): N,
}

ACTIVE_STATES = frozenset({UA, AA})
LIMIT_KINDS = ("hihi", "hi", "lo", "lolo")
_PRIORITY_RANK = {
    AlarmPriority.CRITICAL: 0,
    AlarmPriority.HIGH: 1,
    AlarmPriority.MEDIUM: 2,
    AlarmPriority.LOW: 3,
}
_STALE_QUALITY = int(Quality.UNCERTAIN_STALE)
_BAD = int(Quality.BAD)
FLOOD_ID = "system:flood"
#: Built-in system alarm: the agent's buffer cannot commit (disk full, I/O error); new readings
#: are held only in memory until it can.
BUFFER_COMMIT_ID = "buffer:commit_failed"


class AlarmError(Exception):
    """Base of the operator-facing errors; the message is for the operator."""


class UnknownAlarm(AlarmError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AlarmActionRefused(AlarmError):
    """The action does not apply in the alarm's current state (e.g. ack of an acked alarm)."""


@dataclass(slots=True, eq=False)
class Alarm:
    """One alarm: its definition and its runtime state. Mutated only by the engine."""

    id: str
    kind: str
    priority: AlarmPriority
    point_id: str | None = None
    device: str | None = None
    limit: float | None = None
    deadband: float = 0.0
    delay: float = 0.0
    clear_delay: float = 0.0
    tags: Mapping[str, str] = field(default_factory=dict)
    units: str = ""
    description: str = ""
    # runtime
    state: AlarmState = AlarmState.NORMAL
    condition: bool = False
    pending_since: float | None = None
    value: float | None = None
    activated_at: float | None = None
    cleared_at: float | None = None
    acked_at: float | None = None
    acked_by: str | None = None
    ack_note: str | None = None
    last_change: float | None = None
    shelved: bool = False
    shelved_until: float | None = None
    shelved_at: float | None = None
    shelved_by: str | None = None
    shelve_note: str | None = None
    suppressed: bool = False
    out_of_service: bool = False
    out_of_service_by: str | None = None

    @property
    def overlaid(self) -> bool:
        return self.shelved or self.suppressed or self.out_of_service

    @property
    def display_state(self) -> str:
        if self.out_of_service:
            return "out_of_service"
        if self.shelved:
            return "shelved"
        if self.suppressed:
            return "suppressed"
        return self.state.value

    _RUNTIME = (
        "condition",
        "value",
        "activated_at",
        "cleared_at",
        "acked_at",
        "acked_by",
        "ack_note",
        "last_change",
        "shelved",
        "shelved_until",
        "shelved_at",
        "shelved_by",
        "shelve_note",
        "out_of_service",
        "out_of_service_by",
        "suppressed",  # so a restart in maintenance does not re-announce every suppression
    )

    def copy_runtime(self, other: Alarm) -> None:
        self.state = other.state
        for name in self._RUNTIME:
            setattr(self, name, getattr(other, name))

    def is_pristine(self) -> bool:
        return (
            self.state is AlarmState.NORMAL
            and not self.condition
            and not self.shelved
            and not self.out_of_service
        )

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self._RUNTIME}
        data["state"] = self.state.value
        return data

    def restore(self, data: Mapping[str, Any]) -> None:
        self.state = AlarmState(data.get("state", "normal"))
        for name in self._RUNTIME:
            if name in data:
                setattr(self, name, data[name])
        # Invariant: condition active ⇔ base state active; trust the state if they disagree.
        self.condition = self.state in ACTIVE_STATES


@dataclass(frozen=True, slots=True)
class AlarmView:
    """A read-only copy of one alarm for the API, CLI and the mode machine."""

    id: str
    point_id: str | None
    device: str | None
    kind: str
    state: str
    base_state: str
    active: bool
    priority: str
    value: float | None
    limit: float | None
    units: str
    description: str
    activated_at: float | None
    cleared_at: float | None
    acked_at: float | None
    acked_by: str | None
    ack_note: str | None
    last_change: float | None
    shelved: bool
    shelved_until: float | None
    shelved_by: str | None
    shelve_note: str | None
    one_shot: bool
    suppressed: bool
    out_of_service: bool
    tags: Mapping[str, str]

    @classmethod
    def of(cls, a: Alarm) -> AlarmView:
        return cls(
            id=a.id,
            point_id=a.point_id,
            device=a.device,
            kind=a.kind,
            state=a.display_state,
            base_state=a.state.value,
            active=a.state in ACTIVE_STATES,
            priority=a.priority.value,
            value=a.value,
            limit=a.limit,
            units=a.units,
            description=a.description,
            activated_at=a.activated_at,
            cleared_at=a.cleared_at,
            acked_at=a.acked_at,
            acked_by=a.acked_by,
            ack_note=a.ack_note,
            last_change=a.last_change,
            shelved=a.shelved,
            shelved_until=a.shelved_until,
            shelved_by=a.shelved_by,
            shelve_note=a.shelve_note,
            one_shot=a.shelved and a.shelved_until is None,
            suppressed=a.suppressed,
            out_of_service=a.out_of_service,
            tags=dict(a.tags),
        )

    def to_dict(self) -> dict[str, Any]:
        """The machine form (CLI ``--json``, API): timestamps ISO 8601 UTC or null."""
        value = self.value if self.value is None or math.isfinite(self.value) else None
        return {
            "id": self.id,
            "point_id": self.point_id,
            "device": self.device,
            "kind": self.kind,
            "state": self.state,
            "base_state": self.base_state,
            "active": self.active,
            "priority": self.priority,
            "value": value,
            "limit": self.limit,
            "units": self.units,
            "description": self.description,
            "activated_at": iso(self.activated_at),
            "cleared_at": iso(self.cleared_at),
            "acked_at": iso(self.acked_at),
            "acked_by": self.acked_by,
            "ack_note": self.ack_note,
            "last_change": iso(self.last_change),
            "shelved": self.shelved,
            "shelved_until": iso(self.shelved_until),
            "shelved_by": self.shelved_by,
            "shelve_note": self.shelve_note,
            "one_shot": self.one_shot,
            "suppressed": self.suppressed,
            "out_of_service": self.out_of_service,
            "tags": dict(self.tags),
        }


@dataclass(slots=True, eq=False)
class _PointEntry:
    """The alarms evaluated for one point's readings (hot path: one dict lookup per reading)."""

    point: Point
    limits: tuple[Alarm, ...]
    stale: Alarm | None
    stale_after: float
    last_fresh: float


def _tag_matches(tags: Mapping[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    if key not in tags:
        return False
    return not sep or tags[key] == value


class AlarmEngine:
    """All alarms of one agent. Not thread-safe: call from the event loop only."""

    def __init__(
        self,
        points: Sequence[Point],
        config: AlarmsConfig,
        *,
        clock: Clock,
        emit: Emit,
        state_store: StateStore | None = None,
        device_poll_intervals: Mapping[str, float] | None = None,
        devices: Iterable[str] = (),
    ) -> None:
        self.config = config
        self._clock = clock
        self._emit = emit
        self._store = state_store
        self._poll = dict(device_poll_intervals or {})
        self._alarms: dict[str, Alarm] = {}
        self._points: dict[str, _PointEntry] = {}
        self._comms: dict[str, Alarm] = {}
        self._pending: set[Alarm] = set()
        self._shelved: set[Alarm] = set()
        self._activations: deque[float] = deque()
        self._suppress: Callable[[Alarm], bool] | None = None
        self._dirty = False
        self._restored: dict[str, Mapping[str, Any]] = {}
        self._flood = Alarm(
            id=FLOOD_ID,
            kind="flood",
            priority=config.flood_priority,
            limit=float(config.flood_threshold),
            description="alarm flood: too many new alarms in the flood window",
        )
        self._buffer_commit = Alarm(
            id=BUFFER_COMMIT_ID,
            kind="buffer_commit_failed",
            priority=AlarmPriority.HIGH,
            description="buffer cannot commit (disk full or I/O error): new readings are only "
            "in memory",
        )
        self.alarm_point_ids: frozenset[str] = frozenset()
        self._build(points, devices, initial=True)
        self._load()

    # ------------------------------------------------------------------------ definitions

    def _build(self, points: Sequence[Point], devices: Iterable[str], *, initial: bool) -> None:
        now = self._clock.now()
        cfg = self.config
        old = self._alarms
        old_points = self._points
        alarms: dict[str, Alarm] = {FLOOD_ID: self._flood, BUFFER_COMMIT_ID: self._buffer_commit}
        entries: dict[str, _PointEntry] = {}
        device_ids = set(devices) | {p.device for p in points} | set(self._comms)
        comms: dict[str, Alarm] = {}
        for device in sorted(device_ids):
            alarm = Alarm(
                id=f"{device}:comms_loss",
                kind="comms_loss",
                priority=cfg.comms_loss_priority,
                device=device,
                delay=cfg.comms_loss_after_s,
                description=f"device {device} unreachable",
            )
            comms[device] = alarm
            alarms[alarm.id] = alarm
        for p in points:
            if not p.has_alarms:
                continue
            limits: list[Alarm] = []

            def limit_alarm(
                kind: str, priority: AlarmPriority, limit: float, p: Point = p
            ) -> Alarm:
                return Alarm(
                    id=f"{p.point_id}:{kind}",
                    kind=kind,
                    priority=priority,
                    limit=limit,
                    point_id=p.point_id,
                    device=p.device,
                    deadband=p.alarm_deadband,
                    delay=p.alarm_delay,
                    clear_delay=p.alarm_clear_delay,
                    tags=dict(p.tags),
                    units=p.units,
                    description=p.description,
                )

            for kind, limit in zip(
                LIMIT_KINDS, (p.alarm_hh, p.alarm_h, p.alarm_l, p.alarm_ll), strict=True
            ):
                if limit is None:
                    continue
                priority = (
                    p.alarm_priority.one_step_up() if kind in ("hihi", "lolo") else p.alarm_priority
                )
                limits.append(limit_alarm(kind, priority, limit))
            if p.alarm_state is not None:
                limits.append(limit_alarm("state", p.alarm_priority, p.alarm_state))
            stale = None
            interval = p.poll_interval or self._poll.get(p.device) or cfg.stale_default_interval_s
            if cfg.stale_alarms:
                stale = Alarm(
                    id=f"{p.point_id}:stale",
                    kind="stale",
                    priority=cfg.stale_priority,
                    point_id=p.point_id,
                    device=p.device,
                    tags=dict(p.tags),
                    units=p.units,
                    description=f"no fresh value for {p.point_id}",
                )
            previous = old_points.get(p.point_id)
            entries[p.point_id] = _PointEntry(
                point=p,
                limits=tuple(limits),
                stale=stale,
                stale_after=cfg.stale_after_factor * interval,
                last_fresh=previous.last_fresh if previous else now,
            )
            for alarm in (*limits, *((stale,) if stale else ())):
                alarms[alarm.id] = alarm
        # Keep the runtime state of alarms that survive the reload.
        for alarm_id, alarm in alarms.items():
            before = old.get(alarm_id)
            if before is not None and before is not alarm:
                alarm.copy_runtime(before)
                alarm.suppressed = before.suppressed
                if before.pending_since is not None:
                    alarm.pending_since = before.pending_since
        if not initial:
            for alarm_id in sorted(set(old) - set(alarms)):
                gone = old[alarm_id]
                if not gone.is_pristine():
                    self._send(
                        now,
                        "alarm",
                        alarm_id,
                        None,
                        self._detail(gone, gone.display_state, gone.state, note=None)
                        | {"to": "removed", "cause": "schedule"},
                    )
                    self._dirty = True
        self._alarms = alarms
        self._points = entries
        self._comms = comms
        self._pending = {a for a in alarms.values() if a.pending_since is not None}
        self._shelved = {a for a in alarms.values() if a.shelved}
        self.alarm_point_ids = frozenset(entries)
        if self._suppress is not None:
            self._apply_suppression(now)

    def reload(self, points: Sequence[Point], devices: Iterable[str] = ()) -> None:
        """New schedule: alarms that still exist keep their state; removed ones are dropped
        (an event records the removal of any that were not normal)."""
        self._build(points, devices, initial=False)
        self._flush()

    # ---------------------------------------------------------------------------- hot path

    def update(self, point_id: str, ts: float, value: float, quality: int) -> None:
        """One reading of an alarmed point (see ``alarm_point_ids``)."""
        entry = self._points.get(point_id)
        if entry is None:
            return
        if quality >= _BAD or value != value:  # NaN check without a call
            for alarm in entry.limits:
                if alarm.pending_since is not None:
                    alarm.pending_since = None
                    self._pending.discard(alarm)
            return
        if quality != _STALE_QUALITY:
            entry.last_fresh = ts
            stale = entry.stale
            if stale is not None and (stale.condition or stale.pending_since is not None):
                self._evaluate(stale, False, ts)
        for alarm in entry.limits:
            alarm.value = value
            kind = alarm.kind
            limit: float = alarm.limit  # type: ignore[assignment]  # always set on limit alarms
            if kind == "hi" or kind == "hihi":
                raw = value > (limit - alarm.deadband if alarm.condition else limit)
            elif kind == "lo" or kind == "lolo":
                raw = value < (limit + alarm.deadband if alarm.condition else limit)
            else:
                raw = abs(value - limit) < 1e-9
            if raw != alarm.condition or alarm.pending_since is not None:
                self._evaluate(alarm, raw, ts)

    def device_comms(self, device: str, ok: bool, ts: float) -> None:
        """After each poll of a device: ``ok`` when the device answered at all."""
        alarm = self._comms.get(device)
        if alarm is None:
            alarm = self._add_comms_alarm(device)
        if (not ok) != alarm.condition or alarm.pending_since is not None:
            self._evaluate(alarm, not ok, ts)

    def buffer_commit(self, failing: bool, ts: float) -> None:
        """The buffer's commit health, each tick: ``failing`` while it cannot commit."""
        alarm = self._buffer_commit
        if failing != alarm.condition or alarm.pending_since is not None:
            self._evaluate(alarm, failing, ts)

    def tick(self) -> None:
        """About once a second: delays, shelve expiry, stale data, flood, persistence."""
        now = self._clock.now()
        for alarm in builtins.list(self._pending):
            since = alarm.pending_since
            if since is None:
                self._pending.discard(alarm)
                continue
            delay = alarm.clear_delay if alarm.condition else alarm.delay
            if now - since >= delay:
                self._latch(alarm, not alarm.condition, now)
        for alarm in builtins.list(self._shelved):
            if alarm.shelved_until is not None and now >= alarm.shelved_until:
                self._unshelve(alarm, now, actor=None, note=None, cause="shelve_expired")
        comms = self._comms
        for entry in self._points.values():
            stale = entry.stale
            if stale is None:
                continue
            device_alarm = comms.get(entry.point.device)
            # While the device is failing (comms-loss active or about to be) stale holds:
            # the comms-loss alarm is the one cause to show.
            if device_alarm is not None and device_alarm.condition != (
                device_alarm.pending_since is not None
            ):
                continue
            raw = now - entry.last_fresh > entry.stale_after
            if raw != stale.condition:
                self._evaluate(stale, raw, now)
        self._check_flood(now)
        self._flush()

    # ------------------------------------------------------------------------- evaluation

    def _evaluate(self, alarm: Alarm, raw: bool, ts: float) -> None:
        if raw == alarm.condition:
            if alarm.pending_since is not None:
                alarm.pending_since = None
                self._pending.discard(alarm)
            return
        if alarm.pending_since is None:
            alarm.pending_since = ts
        delay = alarm.delay if raw else alarm.clear_delay
        if ts - alarm.pending_since >= delay:
            self._latch(alarm, raw, ts)
        else:
            self._pending.add(alarm)

    def _latch(self, alarm: Alarm, raw: bool, ts: float) -> None:
        alarm.pending_since = None
        self._pending.discard(alarm)
        alarm.condition = raw
        stimulus = Stimulus.ACTIVATE if raw else Stimulus.CLEAR
        before_state, before_display = alarm.state, alarm.display_state
        overlaid = alarm.overlaid
        after = TRANSITIONS[(before_state, stimulus, overlaid)]
        assert after is not None  # ACTIVATE/CLEAR are never refused
        if raw:
            if before_state not in ACTIVE_STATES:
                alarm.activated_at = ts
                alarm.acked_at = alarm.acked_by = alarm.ack_note = None
                alarm.cleared_at = None
        else:
            alarm.cleared_at = ts
        alarm.state = after
        alarm.last_change = ts
        self._dirty = True
        self._send(
            ts,
            "alarm",
            alarm.id,
            None,
            self._detail(alarm, before_display, before_state, note=None)
            | {"cause": "condition_active" if raw else "condition_cleared"},
        )
        if (
            raw
            and after is UA
            and before_state is not UA
            and not overlaid
            and alarm is not self._flood
        ):
            self._activations.append(ts)
            self._check_flood(ts)
        if not raw and alarm.shelved and alarm.shelved_until is None:
            self._unshelve(alarm, ts, actor=None, note=None, cause="one_shot_returned_to_normal")

    def _check_flood(self, now: float) -> None:
        window_start = now - self.config.flood_window_s
        activations = self._activations
        while activations and activations[0] < window_start:
            activations.popleft()
        count = len(activations)
        flood = self._flood
        flood.value = float(count)
        if not flood.condition and count > self.config.flood_threshold:
            self._latch(flood, True, now)
        elif flood.condition and count < self.config.flood_clear_below:
            self._latch(flood, False, now)

    # -------------------------------------------------------------------------- operators

    def _get(self, alarm_id: str) -> Alarm:
        alarm = self._alarms.get(alarm_id)
        if alarm is None:
            raise UnknownAlarm(f"unknown alarm {alarm_id!r}")
        return alarm

    def ack(self, alarm_id: str, actor: str, note: str | None = None) -> AlarmView:
        alarm = self._get(alarm_id)
        after = TRANSITIONS[(alarm.state, Stimulus.ACK, alarm.overlaid)]
        if after is None:
            raise AlarmActionRefused(
                f"alarm {alarm_id} is {alarm.state.value}: there is nothing to acknowledge"
            )
        now = self._clock.now()
        before_state, before_display = alarm.state, alarm.display_state
        alarm.state = after
        alarm.acked_at, alarm.acked_by, alarm.ack_note = now, actor, note
        alarm.last_change = now
        self._send(
            now,
            "operator.ack",
            alarm.id,
            actor,
            self._detail(alarm, before_display, before_state, note),
        )
        self._dirty = True
        self._flush()
        return AlarmView.of(alarm)

    def shelve(
        self, alarm_id: str, actor: str, duration_s: float | None, note: str | None = None
    ) -> AlarmView:
        """Timed shelve (``duration_s`` up to ``shelve_max_s``), or one-shot (None): until the
        alarm next returns to normal. ``note`` is the reason, required: ISA-18.2 makes a
        shelve an authorised, recorded act. A critical alarm is shelved only when the config
        allows it (``allow_shelve_critical``)."""
        alarm = self._get(alarm_id)
        if alarm.out_of_service:
            raise AlarmActionRefused(f"alarm {alarm_id} is out of service; it cannot be shelved")
        if note is None or not note.strip():
            raise AlarmActionRefused(
                f"shelving {alarm_id} needs a reason (a shelve is an authorised, recorded act)"
            )
        if alarm.priority == AlarmPriority.CRITICAL and not self.config.allow_shelve_critical:
            raise AlarmActionRefused(
                f"alarm {alarm_id} is critical and critical alarms cannot be shelved here "
                "(alarms.allow_shelve_critical = false)"
            )
        if duration_s is not None:
            if not (duration_s > 0 and math.isfinite(duration_s)):
                raise AlarmActionRefused(f"shelve duration must be positive, got {duration_s}")
            if duration_s > self.config.shelve_max_s:
                raise AlarmActionRefused(
                    f"shelve duration {duration_s:g}s exceeds the maximum of "
                    f"{self.config.shelve_max_s:g}s (alarms.shelve_max_s)"
                )
        now = self._clock.now()
        before_state, before_display = alarm.state, alarm.display_state
        alarm.shelved = True
        alarm.shelved_until = None if duration_s is None else now + duration_s
        alarm.shelved_at, alarm.shelved_by, alarm.shelve_note = now, actor, note
        alarm.last_change = now
        self._shelved.add(alarm)
        self._send(
            now,
            "operator.shelve",
            alarm.id,
            actor,
            self._detail(alarm, before_display, before_state, note)
            | {"until": iso(alarm.shelved_until), "one_shot": duration_s is None},
        )
        self._dirty = True
        self._flush()
        return AlarmView.of(alarm)

    def unshelve(self, alarm_id: str, actor: str, note: str | None = None) -> AlarmView:
        alarm = self._get(alarm_id)
        if not alarm.shelved:
            raise AlarmActionRefused(f"alarm {alarm_id} is not shelved")
        self._unshelve(alarm, self._clock.now(), actor=actor, note=note, cause="operator")
        self._flush()
        return AlarmView.of(alarm)

    def _unshelve(
        self, alarm: Alarm, now: float, *, actor: str | None, note: str | None, cause: str
    ) -> None:
        before_state, before_display = alarm.state, alarm.display_state
        alarm.shelved = False
        alarm.shelved_until = alarm.shelved_at = alarm.shelved_by = alarm.shelve_note = None
        alarm.last_change = now
        self._shelved.discard(alarm)
        kind = "operator.unshelve" if actor is not None else "alarm"
        self._send(
            now,
            kind,
            alarm.id,
            actor,
            self._detail(alarm, before_display, before_state, note) | {"cause": cause},
        )
        self._dirty = True

    def set_out_of_service(
        self, alarm_id: str, on: bool, actor: str, note: str | None = None
    ) -> AlarmView:
        alarm = self._get(alarm_id)
        if alarm.out_of_service == on:
            raise AlarmActionRefused(
                f"alarm {alarm_id} is {'already' if on else 'not'} out of service"
            )
        now = self._clock.now()
        before_state, before_display = alarm.state, alarm.display_state
        alarm.out_of_service = on
        alarm.out_of_service_by = actor if on else None
        if on and alarm.shelved:
            alarm.shelved = False
            alarm.shelved_until = alarm.shelved_at = alarm.shelved_by = alarm.shelve_note = None
            self._shelved.discard(alarm)
        if on and alarm.state is RU:
            # Taking an alarm out of service is a deliberate decision about it: nothing is left
            # to acknowledge for a condition that has already returned.
            alarm.state = N
        alarm.last_change = now
        self._send(
            now,
            "operator.out_of_service",
            alarm.id,
            actor,
            self._detail(alarm, before_display, before_state, note) | {"on": on},
        )
        self._dirty = True
        self._flush()
        return AlarmView.of(alarm)

    # ------------------------------------------------------------------------ suppression

    def set_suppression(self, predicate: Callable[[Alarm], bool] | None) -> None:
        """Suppression by design (the mode machine's ``suppression_predicate()``): re-applied
        to every alarm now and to alarms created later. One summary ``system`` event; alarms
        that are not normal also get their own event."""
        self._suppress = predicate
        self._apply_suppression(self._clock.now())
        self._flush()

    def _apply_suppression(self, now: float) -> None:
        predicate = self._suppress
        changed_on = changed_off = 0
        for alarm in self._alarms.values():
            want = bool(predicate(alarm)) if predicate is not None else False
            if want == alarm.suppressed:
                continue
            before_state, before_display = alarm.state, alarm.display_state
            alarm.suppressed = want
            if want:
                changed_on += 1
            else:
                changed_off += 1
            if alarm.state is not N or alarm.condition:
                alarm.last_change = now
                self._send(
                    now,
                    "alarm",
                    alarm.id,
                    None,
                    self._detail(alarm, before_display, before_state, note=None)
                    | {"cause": "suppressed_by_mode" if want else "suppression_ended"},
                )
                self._dirty = True
        if changed_on or changed_off:
            suppressed = sum(1 for a in self._alarms.values() if a.suppressed)
            self._send(
                now,
                "system",
                "alarms",
                None,
                {
                    "message": "alarm suppression changed",
                    "suppressed_now": changed_on,
                    "released_now": changed_off,
                    "suppressed_total": suppressed,
                },
            )

    def _add_comms_alarm(self, device: str) -> Alarm:
        alarm = Alarm(
            id=f"{device}:comms_loss",
            kind="comms_loss",
            priority=self.config.comms_loss_priority,
            device=device,
            delay=self.config.comms_loss_after_s,
            description=f"device {device} unreachable",
        )
        restored = self._restored.pop(alarm.id, None)
        if restored is not None:
            alarm.restore(restored)
        if self._suppress is not None:
            alarm.suppressed = bool(self._suppress(alarm))
        self._comms[device] = alarm
        self._alarms[alarm.id] = alarm
        return alarm

    # ----------------------------------------------------------------------------- queries

    def get(self, alarm_id: str) -> AlarmView:
        return AlarmView.of(self._get(alarm_id))

    def __contains__(self, alarm_id: object) -> bool:
        return alarm_id in self._alarms

    def list(self, include_inactive: bool = False) -> builtins.list[AlarmView]:
        """Alarms for people, most urgent first. Without ``include_inactive``: the ones that are
        not normal, plus shelved and out-of-service ones (which must stay visible)."""
        alarms = [
            a
            for a in self._alarms.values()
            if include_inactive or a.state is not N or a.shelved or a.out_of_service
        ]
        alarms.sort(
            key=lambda a: (
                a.state is N,
                _PRIORITY_RANK[a.priority],
                -(a.activated_at or 0.0),
                a.id,
            )
        )
        return [AlarmView.of(a) for a in alarms]

    def active_alarms(self) -> builtins.list[AlarmView]:
        """Alarms whose condition is active (unack_active or ack_active), whatever overlay."""
        return [AlarmView.of(a) for a in self._alarms.values() if a.state in ACTIVE_STATES]

    def counts(self) -> dict[str, int]:
        """Active alarms by priority, for status lines and the heartbeat (overlaid excluded)."""
        result = {p.value: 0 for p in AlarmPriority}
        for a in self._alarms.values():
            if a.state in ACTIVE_STATES and not a.overlaid:
                result[a.priority.value] += 1
        result["unacked"] = sum(
            1 for a in self._alarms.values() if a.state in (UA, RU) and not a.overlaid
        )
        return result

    # ------------------------------------------------------------------------- persistence

    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "saved_at": self._clock.now(),
            "alarms": {a.id: a.snapshot() for a in self._alarms.values() if not a.is_pristine()},
            "flood_activations": builtins.list(self._activations),
        }

    def _load(self) -> None:
        if self._store is None:
            return
        data = self._store.load()
        if not data:
            return
        if data.get("version") != STATE_VERSION:
            log.warning("alarms.state_version", found=data.get("version"), expected=STATE_VERSION)
            return
        restored = 0
        for alarm_id, record in (data.get("alarms") or {}).items():
            alarm = self._alarms.get(alarm_id)
            if alarm is None:
                if alarm_id.endswith(":comms_loss"):
                    self._restored[alarm_id] = record
                continue
            try:
                alarm.restore(record)
            except (ValueError, TypeError) as exc:
                log.warning("alarms.restore_failed", alarm=alarm_id, error=str(exc))
                continue
            restored += 1
            if alarm.shelved:
                self._shelved.add(alarm)
        self._activations.extend(float(t) for t in data.get("flood_activations") or ())
        log.info("alarms.restored", alarms=restored)

    def _flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        if self._store is None:
            return
        try:
            self._store.save(self._snapshot())
        except OSError as exc:
            self._dirty = True  # retry on the next tick
            log.error("alarms.save_failed", error=str(exc))

    def flush(self) -> None:
        """Persist now if anything changed (the agent calls this on shutdown)."""
        self._flush()

    save = flush

    # ------------------------------------------------------------------------------ events

    def _detail(
        self, alarm: Alarm, before_display: str, before_state: AlarmState, note: str | None
    ) -> dict[str, Any]:
        value = alarm.value if alarm.value is None or math.isfinite(alarm.value) else None
        return {
            "point_id": alarm.point_id,
            "device": alarm.device,
            "kind": alarm.kind,
            "from": before_display,
            "to": alarm.display_state,
            "base_from": before_state.value,
            "base_to": alarm.state.value,
            "value": value,
            "limit": alarm.limit,
            "priority": alarm.priority.value,
            "note": note,
        }

    def _send(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        try:
            self._emit(ts, kind, source, actor, detail)
        except Exception as exc:
            # The alarm state stays right even if the event sink fails; the log keeps the event.
            log.error(
                "alarms.event_failed",
                kind=kind,
                source=source,
                error=str(exc),
                **{"detail": dict(detail)},
            )
