"""Command-channel wire models shared by the receiver and the agent.

The set of kinds is closed: a command is one member of :data:`CommandSpec`, a discriminated
union on ``kind`` whose ``args`` are validated strictly on both sides. An unknown kind or a
bad argument is a 422 at the receiver and is never stored; an agent that meets a kind it does
not know (an older agent) refuses it with a reason.

Endpoints (JSON):

- ``POST /api/v1/gateways/{id}/commands`` (operator): one :data:`CommandSpec`
  (``{"kind": ..., "args": {...}, "expires_in_s": ...}``) -> :class:`CommandView`.
- ``GET /api/v1/gateways/{id}/commands?after=ID&wait=S`` (gateway token): long-poll,
  :class:`CommandPoll` with the commands newer than ``after`` that are not final.
- ``POST /api/v1/gateways/{id}/commands/{cid}/result`` (gateway token): :class:`CommandResult`
  -> :class:`CommandView`; idempotent (a result for a final command changes nothing).

Lifecycle at the receiver: ``queued -> delivered -> succeeded | failed | refused | expired``.
A queued command whose ``expires_at`` passed is marked ``expired`` instead of being delivered;
the agent also refuses to start a command after its expiry and reports ``expired``.

This module depends on pydantic and the standard library only (the receiver imports it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

#: Same rule as the schedule's point_id and the agent's gateway id.
ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
#: Alarm ids are the engine's (``point_id:kind`` and similar): printable, bounded.
ALARM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$"
#: A central user as recorded on the agent: ``alice@fleet``.
ACTOR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$"

CommandKind = Literal[
    "ack",
    "shelve",
    "unshelve",
    "mode_set",
    "mode_clear",
    "write",
    "relinquish",
    "reload",
    "schedule_apply",
]
KINDS: tuple[str, ...] = CommandKind.__args__  # type: ignore[attr-defined]  # Literal's members

CommandState = Literal["queued", "delivered", "succeeded", "failed", "refused", "expired"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "refused", "expired"})
ResultStatus = Literal["succeeded", "failed", "refused", "expired"]

#: Default lifetime of a queued command, per kind (seconds). A schedule push may wait longer
#: for a gateway that is briefly offline; a setpoint write must not land an hour late.
DEFAULT_EXPIRY_S: dict[str, float] = {
    "ack": 300.0,
    "shelve": 300.0,
    "unshelve": 300.0,
    "mode_set": 300.0,
    "mode_clear": 300.0,
    "write": 300.0,
    "relinquish": 300.0,
    "reload": 300.0,
    "schedule_apply": 900.0,
}
MAX_EXPIRY_S = 7 * 86_400.0
MAX_MESSAGE = 4000


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


# --- arguments, one model per kind -----------------------------------------------------------


class AckArgs(_Strict):
    alarm_id: str = Field(pattern=ALARM_ID_PATTERN, max_length=256)
    note: str | None = Field(default=None, max_length=1000)


class ShelveArgs(_Strict):
    alarm_id: str = Field(pattern=ALARM_ID_PATTERN, max_length=256)
    duration_s: float | None = Field(
        default=None, gt=0, le=30 * 86_400, description="None with one_shot = until it clears"
    )
    reason: str = Field(min_length=1, max_length=1000)
    one_shot: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> ShelveArgs:
        if self.one_shot == (self.duration_s is not None):
            raise ValueError("give either duration_s (timed shelve) or one_shot=true, not both")
        return self


class UnshelveArgs(_Strict):
    alarm_id: str = Field(pattern=ALARM_ID_PATTERN, max_length=256)
    note: str | None = Field(default=None, max_length=1000)


class ModeSetArgs(_Strict):
    mode: str = Field(pattern=ID_PATTERN, max_length=64)
    duration_s: float = Field(gt=0, le=30 * 86_400)
    reason: str = Field(min_length=1, max_length=1000)


class ModeClearArgs(_Strict):
    reason: str | None = Field(default=None, max_length=1000)


class WriteArgs(_Strict):
    point_id: str = Field(pattern=ID_PATTERN, max_length=256)
    value: float
    priority: int | None = Field(default=None, ge=1, le=16)


class RelinquishArgs(_Strict):
    point_id: str = Field(pattern=ID_PATTERN, max_length=256)
    priority: int | None = Field(default=None, ge=1, le=16)


class ReloadArgs(_Strict):
    pass


class Verification(_Strict):
    """What "the new schedule works" means after a schedule_apply."""

    min_good_ratio: float = Field(
        default=0.95, ge=0, le=1, description="share of points reading good quality"
    )
    no_new_device_down: bool = Field(
        default=True, description="no device that was up before the apply is down after it"
    )
    within_s: float = Field(
        default=60.0, gt=0, le=600, description="the probe must pass within this time"
    )


class ScheduleApplyArgs(_Strict):
    files: dict[str, str] = Field(
        min_length=1,
        max_length=64,
        description="file name -> CSV text; names appear in the loader's errors",
    )
    verification: Verification = Field(default_factory=Verification)
    rollout_id: int | None = None


class _Cmd(_Strict):
    expires_in_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_EXPIRY_S,
        description="lifetime in the queue; default per kind (5 min for most)",
    )


class AckCommand(_Cmd):
    kind: Literal["ack"]
    args: AckArgs


class ShelveCommand(_Cmd):
    kind: Literal["shelve"]
    args: ShelveArgs


class UnshelveCommand(_Cmd):
    kind: Literal["unshelve"]
    args: UnshelveArgs


class ModeSetCommand(_Cmd):
    kind: Literal["mode_set"]
    args: ModeSetArgs


class ModeClearCommand(_Cmd):
    kind: Literal["mode_clear"]
    args: ModeClearArgs = Field(default_factory=ModeClearArgs)


class WriteCommand(_Cmd):
    kind: Literal["write"]
    args: WriteArgs


class RelinquishCommand(_Cmd):
    kind: Literal["relinquish"]
    args: RelinquishArgs


class ReloadCommand(_Cmd):
    kind: Literal["reload"]
    args: ReloadArgs = Field(default_factory=ReloadArgs)


class ScheduleApplyCommand(_Cmd):
    kind: Literal["schedule_apply"]
    args: ScheduleApplyArgs


CommandSpec = Annotated[
    AckCommand
    | ShelveCommand
    | UnshelveCommand
    | ModeSetCommand
    | ModeClearCommand
    | WriteCommand
    | RelinquishCommand
    | ReloadCommand
    | ScheduleApplyCommand,
    Field(discriminator="kind"),
]
SPEC_ADAPTER: TypeAdapter[CommandSpec] = TypeAdapter(CommandSpec)


def parse_spec(kind: str, args: dict[str, Any]) -> CommandSpec:
    """Validate ``kind`` + ``args`` into a typed command (``pydantic.ValidationError``)."""
    return SPEC_ADAPTER.validate_python({"kind": kind, "args": args})


# --- requests and views ----------------------------------------------------------------------


class CommandResult(_Strict):
    """The agent's outcome of one command."""

    status: ResultStatus
    message: str = Field(default="", max_length=MAX_MESSAGE)
    value: float | None = Field(default=None, description="read-back value of a write")
    detail: dict[str, Any] = Field(default_factory=dict)
    executed_at: int = Field(description="epoch ms, the agent's clock")


class _Tolerant(BaseModel):
    # What the agent parses from the receiver: a newer receiver may add fields; an older
    # agent must still read its commands (unknown *kinds* are refused one by one instead).
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class WireCommand(_Tolerant):
    """A command as the agent receives it."""

    id: int
    kind: str
    args: dict[str, Any]
    actor: str
    created_at: int  # epoch ms, receiver clock
    expires_at: int  # epoch ms, receiver clock


class CommandPoll(_Tolerant):
    """A long-poll answer; ``now`` (receiver clock, epoch ms) lets the agent judge expiry
    without trusting its own clock to agree with the receiver's."""

    now: int
    commands: list[WireCommand] = Field(default_factory=list)


class CommandView(BaseModel):
    """A command at the receiver, with its lifecycle."""

    id: int
    gateway_id: str
    kind: str
    args: dict[str, Any]
    actor: str
    state: CommandState
    # ISO 8601 UTC, like every time the read API answers (the gateway's own protocol,
    # WireCommand and CommandPoll, keeps epoch ms: it compares them with its clock)
    created_at: datetime
    expires_at: datetime
    delivered_at: datetime | None = None
    finished_at: datetime | None = None
    result: CommandResult | None = None
    rollout_id: int | None = None
