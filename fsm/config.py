"""Configuration models for ``[alarms]`` and ``[modes]`` of the agent config.

The agent's settings include these as sub-models; every key has a default so an agent config
without the tables behaves sensibly. Relative file names are resolved by the agent against its
data directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from outpost.point_schedules.model import AlarmPriority

BUILTIN_MODES: tuple[str, ...] = ("starting", "normal", "degraded", "maintenance", "emergency")
_MODE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlarmsConfig(_Model):
    comms_loss_after_s: float = Field(
        30.0, ge=0, description="a device failing every poll this long raises <device>:comms_loss"
    )
    stale_after_factor: float = Field(
        3.0, gt=0, description="<point>:stale when no usable value for factor x poll interval"
    )
    stale_default_interval_s: float = Field(
        5.0, gt=0, description="poll interval assumed for stale detection when none is known"
    )
    stale_alarms: bool = Field(True, description="create <point>:stale for every alarmed point")
    shelve_max_s: float = Field(8 * 3600.0, gt=0, description="longest allowed timed shelve")
    allow_shelve_critical: bool = Field(
        False,
        description="operators may shelve critical alarms (off: a critical alarm stays in view)",
    )
    flood_threshold: int = Field(10, ge=1, description="more new alarms than this in the window")
    flood_window_s: float = Field(600.0, gt=0)
    flood_clear_below: int = Field(5, ge=0, description="flood clears when the count drops below")
    state_file: str = Field("alarms.json", description="alarm + shelve state, in data_dir")
    comms_loss_priority: AlarmPriority = AlarmPriority.HIGH
    stale_priority: AlarmPriority = AlarmPriority.LOW
    flood_priority: AlarmPriority = AlarmPriority.HIGH

    @model_validator(mode="after")
    def _flood_hysteresis(self) -> AlarmsConfig:
        if self.flood_clear_below > self.flood_threshold:
            raise ValueError(
                "alarms.flood_clear_below must not exceed alarms.flood_threshold "
                f"({self.flood_clear_below} > {self.flood_threshold})"
            )
        return self


class Scope(_Model):
    """Which alarms a maintenance period suppresses: all (both lists empty), or the alarms of
    the listed devices and of points carrying any listed tag (``safety`` or ``equip=cdu``)."""

    devices: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def is_all(self) -> bool:
        return not self.devices and not self.tags

    @classmethod
    def parse(cls, value: Any) -> Scope:
        """``"all"``/None, ``{"devices": [...], "tags": [...]}``, or a list/comma string of
        ``device`` and ``tag:NAME`` items (the CLI form)."""
        if value is None or value == "all" or value == "":
            return cls()
        if isinstance(value, Scope):
            return value
        if isinstance(value, Mapping):
            return cls.model_validate(dict(value))
        items = value.split(",") if isinstance(value, str) else list(value)
        devices, tags = [], []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            if item.startswith("tag:"):
                tags.append(item[4:])
            else:
                devices.append(item.removeprefix("device:"))
        return cls(devices=tuple(devices), tags=tuple(tags))

    def describe(self) -> str:
        if self.is_all:
            return "all"
        parts = [*self.devices, *(f"tag:{t}" for t in self.tags)]
        return ",".join(parts)


class MaintenanceConfig(_Model):
    default_scope: Scope = Field(default_factory=Scope)
    max_duration_s: float = Field(7 * 86400.0, gt=0, description="longest maintenance period")

    @field_validator("default_scope", mode="before")
    @classmethod
    def _scope(cls, value: Any) -> Any:
        return Scope.parse(value)


class WriteAction(_Model):
    point: str
    value: float


class EmergencyConfig(_Model):
    """An alarm triggers emergency when its point carries one of ``trigger_tags`` (if any are
    given) AND its priority is one of ``trigger_priorities`` (if any are given), or when its id
    is listed in ``trigger_alarms``. Both lists empty and no ids: emergency is never entered
    automatically."""

    trigger_tags: tuple[str, ...] = ("safety",)
    trigger_priorities: tuple[AlarmPriority, ...] = (AlarmPriority.CRITICAL,)
    trigger_alarms: tuple[str, ...] = ()
    failsafe_writes: tuple[WriteAction, ...] = ()
    auto_clear: bool = Field(False, description="leave by itself once no trigger is active")
    in_maintenance: bool = Field(True, description="a trigger during maintenance still enters")


class AlarmTrigger(_Model):
    """Matches an active alarm; every given field must match (``id`` may end in ``*``)."""

    on: Literal["alarm"]
    id: str | None = None
    point: str | None = None
    device: str | None = None
    kind: str | None = None
    tag: str | None = None
    priority: AlarmPriority | None = None


class PointTrigger(_Model):
    """Holds while the point's latest good value compares true: ``{on="point", point="x",
    op=">", value=30}``."""

    on: Literal["point"]
    point: str
    op: Literal[">", ">=", "<", "<=", "==", "!="]
    value: float


Trigger = Annotated[AlarmTrigger | PointTrigger, Field(discriminator="on")]


class CustomMode(_Model):
    """A configured mode: entered from normal/degraded (or another custom mode declared later)
    while any trigger holds; runs ``entry_writes``; left for ``exit_to`` when no trigger holds
    (``auto_clear``) or by an operator's ``mode clear``. Precedence: emergency > maintenance >
    custom modes in declaration order > degraded > normal."""

    name: str
    description: str = ""
    triggers: tuple[Trigger, ...] = Field(..., min_length=1)
    entry_writes: tuple[WriteAction, ...] = ()
    exit_to: str = "normal"
    auto_clear: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _MODE_NAME.match(value):
            raise ValueError(f"mode name {value!r} must match [a-z][a-z0-9_]*")
        if value in BUILTIN_MODES:
            raise ValueError(f"mode name {value!r} is a built-in mode")
        return value


class ModesConfig(_Model):
    degraded_uplink_after_s: float = Field(
        300.0, gt=0, description="no successful sync for this long → degraded (uplink configured)"
    )
    degraded_on_comms_loss: bool = True
    state_file: str = Field("mode.json", description="persisted mode, in data_dir")
    maintenance: MaintenanceConfig = Field(
        default_factory=lambda: MaintenanceConfig.model_validate({})
    )
    emergency: EmergencyConfig = Field(default_factory=lambda: EmergencyConfig.model_validate({}))
    custom: tuple[CustomMode, ...] = ()

    @model_validator(mode="after")
    def _custom_names(self) -> ModesConfig:
        names = [m.name for m in self.custom]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"modes.custom: duplicate mode name(s) {', '.join(duplicates)}")
        known = set(BUILTIN_MODES) | set(names)
        for mode in self.custom:
            if mode.exit_to not in known or mode.exit_to in (
                "starting",
                "maintenance",
                "emergency",
            ):
                raise ValueError(
                    f"modes.custom[{mode.name}].exit_to: {mode.exit_to!r} is not a mode to exit"
                    " to; expected normal, degraded or a custom mode"
                )
        return self
