"""Carries out one command through the agent's local-control paths, never around them.

The executor knows the agent only through :class:`ControlTarget` (what ``LocalControl``
offers the CLI and the local API: the same checks, refusals and events) and the schedule
applier. The actor of every action is the central user the receiver recorded
(``alice@fleet``), never one made up here.

Site policy comes first: remote writes/relinquishes are refused unless
``[cloud] allow_remote_writes = true``; remote mode changes are refused when
``allow_remote_modes = false``. A refusal says why and nothing happens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from outpost.cloud.wire_commands import (
    MAX_MESSAGE,
    AckCommand,
    CommandResult,
    CommandSpec,
    ModeClearCommand,
    ModeSetCommand,
    RelinquishCommand,
    ReloadCommand,
    ScheduleApplyCommand,
    ShelveCommand,
    UnshelveCommand,
    WireCommand,
    WriteCommand,
    parse_spec,
)
from outpost.fsm.actions import WriteOutcome

log = structlog.get_logger(__name__)


class AlarmViewLike(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class ControlTarget(Protocol):
    """The operator actions of ``outpost.agent.control.local.LocalControl``."""

    def ack(self, alarm_id: str, *, actor: str, note: str | None = None) -> AlarmViewLike: ...

    def shelve(
        self, alarm_id: str, *, actor: str, duration_s: float | None, note: str | None = None
    ) -> AlarmViewLike: ...

    def unshelve(self, alarm_id: str, *, actor: str, note: str | None = None) -> AlarmViewLike: ...

    async def set_maintenance(
        self, duration_s: float, reason: str, *, actor: str, scope: Any = None
    ) -> dict[str, Any]: ...

    async def clear_mode(self, *, actor: str, reason: str | None = None) -> dict[str, Any]: ...

    async def write(
        self,
        point_id: str,
        value: float,
        *,
        actor: str,
        priority: int | None = None,
        verify: bool = True,
    ) -> WriteOutcome: ...

    async def relinquish(
        self, point_id: str, *, actor: str, priority: int | None = None
    ) -> WriteOutcome: ...


class Applier(Protocol):
    """Reload and schedule_apply (``schedule_apply.ScheduleApplier``)."""

    async def reload(self, *, actor: str) -> CommandResult: ...

    async def apply(self, command: ScheduleApplyCommand, *, actor: str) -> CommandResult: ...


@dataclass(frozen=True)
class Policy:
    allow_remote_writes: bool = False
    allow_remote_modes: bool = True


class CommandExecutor:
    def __init__(
        self,
        control: ControlTarget,
        applier: Applier | None,
        *,
        policy: Policy,
        refusals: tuple[type[Exception], ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``refusals``: the exception types local control raises when it refuses an
        action (``ControlRefused``); they become ``refused`` results with their message."""
        self.control = control
        self.applier = applier
        self.policy = policy
        self.refusals = refusals
        self.clock = clock

    def _result(self, status: Any, message: str, **extra: Any) -> CommandResult:
        return CommandResult(
            status=status,
            message=_fit(message),
            executed_at=int(self.clock() * 1000),
            **extra,
        )

    def validate(self, cmd: WireCommand) -> CommandSpec | CommandResult:
        """The typed command, or a ``refused`` result (a kind or argument this agent does
        not know: a newer receiver, or a tampered row)."""
        try:
            return parse_spec(cmd.kind, cmd.args)
        except ValidationError as exc:
            first = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'command'}: {e['msg']}"
                for e in exc.errors(include_input=False)[:3]
            )
            return self._result("refused", f"this agent cannot run {cmd.kind!r}: {first}")

    async def execute(self, spec: CommandSpec, actor: str) -> CommandResult:
        try:
            return await self._dispatch(spec, actor)
        except self.refusals as exc:
            return self._result("refused", str(exc))
        except Exception as exc:  # a crash of one command must not stop the channel
            log.exception("command.crashed", kind=spec.kind)
            return self._result("failed", f"{exc.__class__.__name__}: {exc}")

    async def _dispatch(self, spec: CommandSpec, actor: str) -> CommandResult:
        match spec:
            case AckCommand(args=a):
                view = self.control.ack(a.alarm_id, actor=actor, note=a.note)
                return self._alarm("acknowledged", view)
            case ShelveCommand(args=a):
                view = self.control.shelve(
                    a.alarm_id,
                    actor=actor,
                    duration_s=None if a.one_shot else a.duration_s,
                    note=a.reason,
                )
                return self._alarm("shelved", view)
            case UnshelveCommand(args=a):
                view = self.control.unshelve(a.alarm_id, actor=actor, note=a.note)
                return self._alarm("unshelved", view)
            case ModeSetCommand(args=a):
                if not self.policy.allow_remote_modes:
                    return self._result("refused", _MODES_OFF)
                if a.mode != "maintenance":
                    return self._result(
                        "refused",
                        f"mode {a.mode!r} cannot be set by an operator; only 'maintenance' can",
                    )
                state = await self.control.set_maintenance(a.duration_s, a.reason, actor=actor)
                return self._result("succeeded", f"mode is {state.get('mode')}", detail=state)
            case ModeClearCommand(args=a):
                if not self.policy.allow_remote_modes:
                    return self._result("refused", _MODES_OFF)
                state = await self.control.clear_mode(actor=actor, reason=a.reason)
                return self._result("succeeded", f"mode is {state.get('mode')}", detail=state)
            case WriteCommand(args=a):
                if not self.policy.allow_remote_writes:
                    return self._result("refused", _WRITES_OFF)
                outcome = await self.control.write(
                    a.point_id, a.value, actor=actor, priority=a.priority
                )
                return self._write(outcome)
            case RelinquishCommand(args=a):
                if not self.policy.allow_remote_writes:
                    return self._result("refused", _WRITES_OFF)
                outcome = await self.control.relinquish(
                    a.point_id, actor=actor, priority=a.priority
                )
                return self._write(outcome)
            case ReloadCommand():
                if self.applier is None:
                    return self._result("refused", "this agent cannot reload its schedule")
                return await self.applier.reload(actor=actor)
            case ScheduleApplyCommand():
                if self.applier is None:
                    return self._result("refused", "this agent cannot apply schedules")
                return await self.applier.apply(spec, actor=actor)
        return self._result("refused", f"unsupported kind {spec.kind!r}")  # pragma: no cover

    def _alarm(self, done: str, view: AlarmViewLike) -> CommandResult:
        detail = view.to_dict()
        return self._result(
            "succeeded", f"alarm {detail.get('id', '')} {done}".replace("  ", " "), detail=detail
        )

    def _write(self, outcome: WriteOutcome) -> CommandResult:
        read_back = outcome.read_back
        value = read_back if read_back is not None and math.isfinite(read_back) else None
        detail = outcome.to_dict()
        if outcome.ok:
            message = outcome.message or f"{outcome.point_id} written ({outcome.result})"
            return self._result("succeeded", message, value=value, detail=detail)
        message = outcome.message or f"{outcome.point_id}: write {outcome.result}"
        return self._result("failed", message, value=value, detail=detail)


def _fit(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


_WRITES_OFF = (
    "remote writes are disabled on this gateway ([cloud] allow_remote_writes = false); "
    "write from the site or enable them in the agent config"
)
_MODES_OFF = "remote mode changes are disabled on this gateway ([cloud] allow_remote_modes = false)"
