"""Wires the alarm engine, the mode machine and guarded writes into the runtime.

Kept apart from runtime.py so the runtime reads as plumbing and this file as the local-control
policy. Per poll: alarmed points' readings go to ``AlarmEngine.update`` (through the pipeline's
alarm hook, only for points that have alarm definitions). Per tick (1 s): device comms health,
``AlarmEngine.tick`` (delays, shelve expiry, stale, flood, persistence), then the mode machine
re-decides from the facts (comms loss, uplink age, active alarms, live values).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import structlog

from outpost.agent.control.writes import WriteService
from outpost.fsm.alarms import AlarmEngine
from outpost.fsm.clock import SystemClock
from outpost.fsm.modes import ModeMachine
from outpost.fsm.persist import JsonFileStore
from outpost.point_schedules.model import Schedule

if TYPE_CHECKING:
    from outpost.agent.core.runtime import Runtime

log = structlog.get_logger(__name__)

TICK_S = 1.0


def setup(runtime: Runtime, schedule: Schedule) -> None:
    cfg = runtime.config
    clock = SystemClock()
    data_dir = cfg.agent.data_dir
    devices = [d for d, dev in cfg.devices.items() if dev.enabled]
    engine = AlarmEngine(
        schedule.points,
        cfg.alarms,
        clock=clock,
        emit=runtime.emit,
        state_store=JsonFileStore(data_dir / cfg.alarms.state_file),
        device_poll_intervals={d: dev.poll_interval for d, dev in cfg.devices.items()},
        devices=devices,
    )

    def device_up(device: str) -> bool:
        coord = runtime.coordinators.get(device)
        return coord is not None and coord.health.connected

    writes = WriteService(
        schedule.by_id(), runtime.drivers, emit=runtime.emit, device_up=device_up, clock=clock
    )

    async def failsafe_write(point_id: str, value: float, actor: str) -> Any:
        return await writes.write(point_id, value, actor=actor)

    modes = ModeMachine(
        cfg.modes,
        clock=clock,
        emit=runtime.emit,
        write=failsafe_write,
        has_uplink=cfg.cloud is not None,
        state_store=JsonFileStore(data_dir / cfg.modes.state_file),
        on_suppression=engine.set_suppression,
    )
    runtime.alarms, runtime.modes, runtime.writes = engine, modes, writes


def on_schedule(runtime: Runtime, schedule: Schedule) -> None:
    """A reloaded schedule: alarms keep the state of definitions that still exist."""
    if runtime.alarms is not None:
        runtime.alarms.reload(
            schedule.points, [d for d, dev in runtime.config.devices.items() if dev.enabled]
        )
    if runtime.writes is not None:
        runtime.writes.set_points(schedule.by_id())


def _uplink_age(runtime: Runtime, now: float) -> float | None:
    if runtime.uplink is None:
        return None
    last = runtime.uplink.status().get("last_success_ts")
    return None if not last else max(0.0, now - float(last))


def _live_values(runtime: Runtime) -> dict[str, float]:
    table = runtime.table
    if table is None:
        return {}
    out = {}
    for i, pid in enumerate(table.ids):
        v = table.value[i]
        if table.quality[i] < 64 and not math.isnan(v):
            out[pid] = v
    return out


async def run(runtime: Runtime) -> None:
    engine: AlarmEngine = runtime.alarms
    modes: ModeMachine = runtime.modes
    wants_values = any(getattr(m, "triggers", None) for m in runtime.config.modes.custom)
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    try:
        while True:
            next_tick += TICK_S
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            now = runtime.clock()
            for device_id, coord in runtime.coordinators.items():
                if coord.health.last_poll_ts is not None:
                    engine.device_comms(device_id, coord.health.connected, now)
            engine.tick()
            active = engine.active_alarms()
            in_loss = {a.device for a in active if a.kind == "comms_loss" and a.device}
            await modes.evaluate(
                devices_in_comms_loss=in_loss,
                uplink_ok_age_s=_uplink_age(runtime, now),
                active_alarms=active,
                point_values=_live_values(runtime) if wants_values else None,
            )
    finally:
        engine.flush()
