"""What changes between two loaded schedules (``outpost schedule diff``).

Points are matched by ``point_id``. A point is "changed" when any field other than its source
location differs; moving a row to another line or file is not a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum

from outpost.point_schedules.model import Point, Schedule

__all__ = ["FieldChange", "PointChange", "ScheduleDiff", "diff_schedules", "format_diff"]

_COMPARED: tuple[str, ...] = tuple(
    f.name for f in fields(Point) if f.name not in ("point_id", "source")
)


@dataclass(frozen=True, slots=True)
class FieldChange:
    name: str
    old: object
    new: object


@dataclass(frozen=True, slots=True)
class PointChange:
    point_id: str
    old: Point
    new: Point
    changes: tuple[FieldChange, ...]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.changes)


@dataclass(frozen=True, slots=True)
class ScheduleDiff:
    old_version: str
    new_version: str
    added: tuple[Point, ...] = ()
    removed: tuple[Point, ...] = ()
    changed: tuple[PointChange, ...] = ()
    unchanged: int = 0

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_schedules(old: Schedule, new: Schedule) -> ScheduleDiff:
    """Added, removed and changed points of ``new`` relative to ``old``, in ``new``'s order
    (removed ones in ``old``'s order)."""
    old_by_id = old.by_id()
    new_ids = {p.point_id for p in new.points}
    added: list[Point] = []
    changed: list[PointChange] = []
    unchanged = 0
    for point in new.points:
        before = old_by_id.get(point.point_id)
        if before is None:
            added.append(point)
            continue
        changes = tuple(
            FieldChange(name, getattr(before, name), getattr(point, name))
            for name in _COMPARED
            if getattr(before, name) != getattr(point, name)
        )
        if changes:
            changed.append(PointChange(point.point_id, before, point, changes))
        else:
            unchanged += 1
    removed = tuple(p for p in old.points if p.point_id not in new_ids)
    return ScheduleDiff(
        old_version=old.version,
        new_version=new.version,
        added=tuple(added),
        removed=removed,
        changed=tuple(changed),
        unchanged=unchanged,
    )


def _value(v: object) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(v, Mapping):
        return ";".join(f"{k}={val}" if val else k for k, val in v.items()) or "(none)"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _where(p: Point) -> str:
    return f"  [{p.source}]" if p.source is not None else ""


def _summary(p: Point) -> str:
    parts = [p.device, str(p.address)]
    if p.data_type is not None:
        parts.append(p.data_type.value)
    if p.units:
        parts.append(p.units)
    return " ".join(parts)


def format_diff(diff: ScheduleDiff) -> str:
    """Human text: ``+`` added, ``-`` removed, ``~`` changed (one indented line per field)."""
    lines = [f"schedule {diff.old_version} -> {diff.new_version}"]
    for p in diff.added:
        lines.append(f"+ {p.point_id}  ({_summary(p)}){_where(p)}")
    for p in diff.removed:
        lines.append(f"- {p.point_id}  ({_summary(p)}){_where(p)}")
    for c in diff.changed:
        lines.append(f"~ {c.point_id}{_where(c.new)}")
        for fc in c.changes:
            lines.append(f"    {fc.name}: {_value(fc.old)} -> {_value(fc.new)}")
    if diff.is_empty:
        lines.append("no point changes")
    lines.append(
        f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed, "
        f"{diff.unchanged} unchanged"
    )
    return "\n".join(lines)
