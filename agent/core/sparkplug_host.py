"""The agent side of the Sparkplug node: what ``cloud.sparkplug.node.NodeHost`` asks of the
running agent, read from the runtime's point table, coordinators, local control and buffer.

Kept apart from the runtime so that the runtime only starts the node (``make_node``), and the
cloud package never imports the agent."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from outpost.agent.control.local import ControlRefused, LocalControl
from outpost.agent.core.config import AgentConfig
from outpost.agent.core.coordinator import DeviceCoordinator
from outpost.agent.core.points import NEVER, PointTable
from outpost.buffer.store import Buffer
from outpost.cloud.sparkplug.node import AlarmState, SparkplugNode, WriteRefusedError
from outpost.point_schedules.model import Point, Schedule
from outpost.point_schedules.quality import Quality


class _Runtime(Protocol):
    @property
    def config(self) -> AgentConfig: ...

    @property
    def schedule(self) -> Schedule | None: ...

    @property
    def table(self) -> PointTable | None: ...

    @property
    def coordinators(self) -> Mapping[str, DeviceCoordinator]: ...

    @property
    def control(self) -> LocalControl | None: ...

    @property
    def buffer(self) -> Buffer | None: ...

    def emit(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None: ...


class RuntimeNodeHost:
    def __init__(self, runtime: _Runtime) -> None:
        self._rt = runtime

    def schedule_version(self) -> str | None:
        schedule = self._rt.schedule
        return schedule.version if schedule is not None else None

    def device_points(self) -> dict[str, list[Point]]:
        table = self._rt.table
        out: dict[str, list[Point]] = {d: [] for d in self._rt.coordinators}
        if table is not None:
            for p in table.points:
                if p.device in out:
                    out[p.device].append(p)
        return out

    def device_up(self) -> dict[str, bool]:
        return {d: c.health.connected for d, c in self._rt.coordinators.items()}

    def live(self) -> dict[str, tuple[float | None, int, float | None]]:
        table = self._rt.table
        if table is None:
            return {}
        out: dict[str, tuple[float | None, int, float | None]] = {}
        for i, pid in enumerate(table.ids):
            v, q, ts = table.value[i], table.quality[i], table.ts[i]
            out[pid] = (
                None if math.isnan(v) else v,
                int(Quality.BAD) if q == NEVER else int(q),
                None if math.isnan(ts) else ts,
            )
        return out

    def alarm_states(self) -> list[AlarmState]:
        control, table = self._rt.control, self._rt.table
        if control is None:
            return []
        out = []
        for a in control.list_alarms(include_inactive=True):
            device = a.device
            if device is None and a.point_id is not None and table is not None:
                i = table.index.get(a.point_id)
                device = table.points[i].device if i is not None else None
            if device is None:
                continue
            owner = a.point_id or device
            out.append(AlarmState(a.id, device, f"Alarms/{owner}/{a.kind}", a.state, a.priority))
        return out

    def point_keys(self, point_ids: Sequence[str]) -> list[int]:
        assert self._rt.buffer is not None
        return self._rt.buffer.point_keys(point_ids)

    async def write(self, point_id: str, value: float, *, actor: str) -> str:
        control = self._rt.control
        if control is None:
            raise WriteRefusedError("local control is not running")
        try:
            outcome = await control.write(point_id, value, actor=actor)
        except ControlRefused as exc:
            raise WriteRefusedError(str(exc)) from None
        return str(outcome.result)

    def emit(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        self._rt.emit(ts, kind, source, actor, detail)


def make_node(runtime: _Runtime) -> SparkplugNode | None:
    """The Sparkplug node for ``[sparkplug]`` (None when the section is absent)."""
    cfg = runtime.config
    sp = cfg.sparkplug
    if sp is None:
        return None
    assert runtime.buffer is not None
    if sp.ca_file is not None and not sp.ca_file.is_absolute():
        sp = sp.model_copy(update={"ca_file": (cfg.config_dir / sp.ca_file).resolve()})
    state = sp.cursor_file if sp.cursor_file.is_absolute() else cfg.agent.data_dir / sp.cursor_file
    return SparkplugNode(
        sp,
        edge_node_id=sp.edge_node_id or cfg.agent.id,
        source=runtime.buffer,
        host=RuntimeNodeHost(runtime),
        state_path=Path(state),
    )
