"""The daemon: one asyncio process that wires schedule, drivers, pipeline, buffer, local
control, uplink, command channel and local API together, and answers to systemd.

Where things are: ``run()`` builds the parts (``_make_drivers``, ``_make_control`` → a
``control.local.LocalControl``, ``_install_schedule`` → point table, pipeline and one
``DeviceCoordinator`` per device, ``_make_uplink``, ``_make_commands``); ``_main()`` runs them
as supervised tasks; ``_build_scheduler()`` is where each device gets read (scheduler jobs
calling ``coordinator.poll`` for polled drivers, ``coordinator.stream`` tasks for push
drivers). The read-only views the local API and the uplink use (``status``, ``live_points``,
``heartbeat``, ``point_metadata`` …) satisfy ``api.view.AgentView``.

Lifecycle: start → first poll cycle → READY=1 → run until SIGTERM/SIGINT → stop polling,
flush the buffer, close drivers → exit. SIGHUP (or `outpost reload`) reloads the schedule
files: the new schedule is validated first; on error the running one stays and the error is
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from outpost.agent.api.app import create_app
from outpost.agent.api.schedule import ScheduleRejected
from outpost.agent.api.server import LocalApiServer
from outpost.agent.api.users import UserStore, is_loopback_bind, lan_bind_problem, users_path
from outpost.agent.control.local import ControlRefused, LocalControl
from outpost.agent.control.writes import WriteOutcome
from outpost.agent.core.config import AgentConfig
from outpost.agent.core.coordinator import DeviceCoordinator, DeviceHealth
from outpost.agent.core.metrics import AgentMetrics, bind_token, metrics_http_app
from outpost.agent.core.pipeline import Pipeline
from outpost.agent.core.points import PointTable
from outpost.agent.core.scheduler import (
    Job,
    JobStats,
    Scheduler,
    freeze_long_lived,
    stagger_offset,
)
from outpost.agent.core.supervise import supervise
from outpost.agent.core.systemd import SystemdNotifier
from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.store import Buffer
from outpost.cloud.commands.schedule_apply import (
    ProbeSnapshot,
    ScheduleApplier,
    pushed_schedule_files,
)
from outpost.cloud.wire import PointMeta
from outpost.cloud.wire_commands import ScheduleApplyArgs, ScheduleApplyCommand, Verification
from outpost.drivers.base import Driver, DriverContext, PointGroup
from outpost.drivers.probe import probe_points
from outpost.drivers.registry import driver_class
from outpost.point_schedules.loader import ScheduleError, load_schedule, parse_schedule
from outpost.point_schedules.model import Schedule
from outpost.point_schedules.quality import Quality

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from outpost.cloud.commands.client import CommandChannel
    from outpost.cloud.sparkplug.node import SparkplugNode
    from outpost.cloud.uplink import Uplink

log = structlog.get_logger(__name__)

EX_CONFIG = 78  # sysexits: configuration error (systemd: RestartPreventExitStatus=78)


class StartupError(Exception):
    """The agent cannot start with this configuration/schedule (exit code 78)."""


class _Stop(Exception):
    pass


SYSTEM_ACTOR = "system"


class Runtime:
    def __init__(
        self,
        config: AgentConfig,
        *,
        notifier: SystemdNotifier | None = None,
        clock: Callable[[], float] = time.time,
        install_signal_handlers: bool = True,
    ) -> None:
        self.config = config
        self.notifier = notifier or SystemdNotifier()
        self.clock = clock
        self.install_signal_handlers = install_signal_handlers
        self.started_at = clock()
        self.context = DriverContext()
        self.drivers: dict[str, Driver] = {}
        self.coordinators: dict[str, DeviceCoordinator] = {}
        self.schedule: Schedule | None = None
        self.table: PointTable | None = None
        self.pipeline: Pipeline | None = None
        self.scheduler: Scheduler | None = None
        self.buffer: Buffer | None = None
        self.uplink: Uplink | None = None
        self.control: LocalControl | None = None
        self.commands: CommandChannel | None = None
        # the schedule files in force: the config's, or the last verified push
        self.schedule_paths: list[Path] = list(config.schedules.files)
        self._reload_done: asyncio.Future[ScheduleError | None] | None = None
        self._reload_cause: tuple[str, str] = (SYSTEM_ACTOR, "reload")
        self._install_lock = asyncio.Lock()
        # one applier for the command channel and `outpost schedule load` (one lock, one history)
        self.applier = ScheduleApplier(self, config.agent.data_dir)
        self.ready = asyncio.Event()
        self.reloads = 0
        self.reload_errors = 0
        self.last_reload_error: list[str] | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._api: Starlette | None = None
        # per-job poll counters outlive a schedule reload (Prometheus counters never go back)
        self._job_stats: dict[str, JobStats] = {}
        self.metrics = AgentMetrics(self)
        self.sparkplug: SparkplugNode | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self, actor: str = SYSTEM_ACTOR) -> None:
        """Re-read the schedule files (SIGHUP, `outpost reload`, the command channel); the
        ``schedule.load`` event names ``actor``."""
        log.info("schedule.reload_requested", actor=actor)
        if self._reload_done is None:  # install_schedule() has set its own actor and reason
            self._reload_cause = (actor, "reload")
        self._reload.set()

    def emit(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        """Record an event (alarm/mode/operator/system) in the buffer; never dropped silently."""
        if self.buffer is not None:
            self.buffer.append_event(ts, kind, source, actor, dict(detail))
        log.info(
            "event",
            kind=kind,
            source=source,
            actor=actor,
            **{k: v for k, v in detail.items() if k != "kind"},
        )

    # ------------------------------------------------------------------ set-up

    def _load_schedule(self) -> Schedule:
        # Nothing in the agent shows a point's declaration (load errors carry their own file and
        # line): the schedule it keeps for its lifetime drops them (≈ 85 bytes a point).
        return load_schedule(self.schedule_paths, self.config.device_protocols(), keep_source=False)

    def _make_drivers(self) -> None:
        problems = []
        for device_id, dev in self.config.devices.items():
            if not dev.enabled:
                continue
            cls = driver_class(dev.protocol)
            try:
                self.drivers[device_id] = cls(device_id, dev, self.context)
            except (ValueError, OSError) as exc:  # e.g. a secret's env var or file is missing
                problems.append(f"devices.{device_id}: {exc}")
                log.error("device.config_error", device=device_id, error=str(exc))
        if problems:
            raise StartupError("; ".join(problems))

    def _install_schedule(self, schedule: Schedule) -> None:
        """Build point table, pipeline groups and coordinators for ``schedule``."""
        assert self.buffer is not None
        keys = self.buffer.point_keys([p.point_id for p in schedule.points])
        table = PointTable(schedule, keys)
        if self.table is not None:
            table.carry_over(self.table)
        alarms = self.control.alarms if self.control is not None else None
        pipeline = Pipeline(
            table, self.buffer, alarm_hook=alarms.update if alarms is not None else None
        )
        if alarms is not None:
            pipeline.set_alarm_points(alarms.alarm_point_ids)
        if self.pipeline is not None:
            pipeline.stats = self.pipeline.stats  # counters carry over a reload
        coordinators: dict[str, DeviceCoordinator] = {}
        by_device: dict[str, dict[float, list[int]]] = defaultdict(lambda: defaultdict(list))
        # The table's id -> position dict already holds one int object per position (in
        # schedule order, ids are unique): the groups' index lists share them rather than
        # making 100,000 more.
        for p, i in zip(table.points, table.index.values(), strict=True):
            driver = self.drivers.get(p.device)
            if driver is None:
                continue  # device disabled in the config
            interval = p.poll_interval or self.config.devices[p.device].poll_interval
            by_device[p.device][interval].append(i)
        for device_id, intervals in by_device.items():
            if not self.drivers[device_id].polled:
                # A push driver streams one subscription set per device; each point's
                # poll_interval still drives its stale detection inside the driver.
                merged = sorted(i for idx in intervals.values() for i in idx)
                intervals = {self.config.devices[device_id].poll_interval: merged}
            coord = self.coordinators.get(device_id)
            health = coord.health if coord is not None else None
            coord = DeviceCoordinator(device_id, self.drivers[device_id], pipeline)
            if health is not None:
                coord.health = health
            groups = [
                PointGroup(
                    device=device_id,
                    points=[table.points[i] for i in idx],
                    interval=interval,
                    index=idx,
                )
                for interval, idx in sorted(intervals.items())
            ]
            coord.set_groups(groups)
            coordinators[device_id] = coord
        self.schedule, self.table, self.pipeline, self.coordinators = (
            schedule,
            table,
            pipeline,
            coordinators,
        )

    def _build_scheduler(
        self,
    ) -> tuple[Scheduler, list[tuple[str, Callable[[], Awaitable[None]]]]]:
        """Who reads each device: for a polled driver the scheduler calls
        ``coordinator.poll(group)`` at the group's aligned slots (one job per device and
        interval); a push driver runs ``coordinator.stream(group)``, in which the driver calls
        ``coordinator.push`` as values arrive (one supervised task per device)."""
        scheduler = Scheduler(clock=self.clock)
        streams: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        stagger = self.config.scheduler.stagger_s
        for device_id, coord in self.coordinators.items():
            for group in coord.groups:
                if coord.driver.polled:
                    key = f"{device_id}@{group.interval:g}s"
                    scheduler.add(
                        Job(
                            key=key,
                            interval=group.interval,
                            action=self.metrics.timed_poll(device_id, partial(coord.poll, group)),
                            offset=stagger_offset(device_id, group.interval, stagger),
                            stats=self._job_stats.setdefault(key, JobStats()),
                        )
                    )
                else:
                    streams.append((f"stream:{device_id}", partial(coord.stream, group)))
        return scheduler, streams

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        cfg = self.config
        _prepare_data_dir(cfg.agent.data_dir)
        problem = lan_bind_problem(cfg.api.bind, users_path(cfg.agent.data_dir))
        if problem is not None:
            raise StartupError(problem)
        pushed = pushed_schedule_files(cfg.agent.data_dir, cfg.schedules.files)
        if pushed is not None:
            self.schedule_paths = pushed
        try:
            schedule = self._load_schedule()
        except ScheduleError as exc:
            for issue in exc.issues:
                log.error("schedule.invalid", issue=str(issue))
            raise StartupError(f"schedule invalid: {len(exc.issues)} problem(s)") from None

        layout = ColumnarBuffer if cfg.buffer.layout == "columnar" else Buffer
        self.buffer = layout(
            cfg.buffer.path,
            max_size_mb=cfg.buffer.max_size_mb,
            retention_days=cfg.buffer.retention_days,
            commit_interval=cfg.buffer.commit_interval_s,
            commit_rows=cfg.buffer.commit_rows,
            on_unsynced_evicted=self._on_unsynced_evicted,
            on_unsynced_events_evicted=self._on_unsynced_events_evicted,
            on_corrupt_recovered=self._on_corrupt_recovered,
        )
        self.buffer.open()
        try:
            self._make_drivers()
            self.control = self._make_control(schedule)
            self._install_schedule(schedule)
            self.emit(
                self.clock(),
                "schedule.load",
                schedule.version,
                SYSTEM_ACTOR,
                {
                    "points": len(schedule.points),
                    "files": [str(f) for f in schedule.files],
                    "reason": "start",
                },
            )
            self.uplink = self._make_uplink()
            self.commands = self._make_commands()
            log.info(
                "agent.start",
                gateway=cfg.agent.id,
                points=len(schedule.points),
                devices=len(self.coordinators),
                schedule_version=schedule.version,
                socket=str(cfg.api.socket),
                uplink=cfg.cloud is not None,
            )
            await self._main()
        finally:
            await self._shutdown()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        if self.install_signal_handlers:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._polling(), name="polling")
                tg.create_task(self._serve_api(), name="api")
                if self.config.api.bind is not None:
                    # the status page, with /metrics on the same listener
                    tg.create_task(self._serve_page(self.config.api.bind), name="page")
                tg.create_task(self._health_loop(), name="health")
                if self.control is not None:
                    tg.create_task(supervise("control", self.control.run), name="control")
                if self.uplink is not None:
                    tg.create_task(supervise("uplink", self.uplink.run), name="uplink")
                if self.commands is not None:
                    tg.create_task(supervise("commands", self._command_channel), name="commands")
                if self.config.sparkplug is not None:
                    # imported only when configured: protobuf, aiomqtt and paho cost ~2 MB RSS
                    from outpost.agent.core.sparkplug_host import make_node

                    self.sparkplug = make_node(self)
                if self.sparkplug is not None:
                    # births need device health: after the first poll cycle, like commands
                    tg.create_task(
                        supervise("sparkplug", partial(self._when_ready, self.sparkplug.run)),
                        name="sparkplug",
                    )
                tg.create_task(self._wait_stop(), name="stop")
        except* _Stop:
            pass
        finally:
            if self.install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

    async def _when_ready(self, run: Callable[[], Awaitable[None]]) -> None:
        await self.ready.wait()
        await run()

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        log.info("agent.stopping")
        self.notifier.stopping()
        raise _Stop

    async def _polling(self) -> None:
        """Run the scheduler for the current schedule; rebuild it when a reload succeeds."""
        while True:
            scheduler, streams = self._build_scheduler()
            self.scheduler = scheduler
            freeze_long_lived()
            async with asyncio.TaskGroup() as tg:
                sched_task = tg.create_task(scheduler.run(), name="scheduler")
                push_tasks = [
                    tg.create_task(supervise(name, stream), name=name) for name, stream in streams
                ]
                if not self.ready.is_set():
                    tg.create_task(self._announce_ready(scheduler), name="ready")
                await self._reload.wait()
                self._reload.clear()
                reloaded = await self._reload_schedule()
                if not reloaded:
                    # keep polling the old schedule; wait for the next SIGHUP
                    while True:
                        await self._reload.wait()
                        self._reload.clear()
                        if await self._reload_schedule():
                            break
                sched_task.cancel()
                for t in push_tasks:
                    t.cancel()

    async def _reload_schedule(self) -> bool:
        self.notifier.reloading()
        try:
            schedule = await asyncio.to_thread(self._load_schedule)
        except ScheduleError as exc:
            self.reload_errors += 1
            self.last_reload_error = [str(i) for i in exc.issues]
            for issue in exc.issues:
                log.error("schedule.reload_rejected", issue=str(issue))
            actor, reason = self._reload_cause
            # event kinds: "operator." exactly when a person acted (control/events.py)
            self.emit(
                self.clock(),
                "schedule.rejected" if actor == SYSTEM_ACTOR else "operator.schedule.rejected",
                self.schedule.version if self.schedule else "",
                actor,
                {
                    "reason": reason,
                    "problems": len(exc.issues),
                    "errors": self.last_reload_error[:20],
                    "files": [str(f) for f in self.schedule_paths],
                },
            )
            self.notifier.notify("READY=1")
            self._reload_finished(exc)
            return False
        old_version = self.schedule.version if self.schedule else None
        if self.control is not None:
            self.control.on_schedule(schedule)
        self._install_schedule(schedule)
        self.reloads += 1
        self.last_reload_error = None
        actor, reason = self._reload_cause
        self.emit(
            self.clock(),
            "schedule.load",
            schedule.version,
            actor,
            {
                "points": len(schedule.points),
                "previous": old_version,
                "reason": reason,
                "files": [str(f) for f in schedule.files],
            },
        )
        log.info(
            "schedule.reloaded",
            version=schedule.version,
            previous=old_version,
            points=len(schedule.points),
        )
        self.notifier.notify("READY=1")
        self._reload_finished(None)
        return True

    def _reload_finished(self, error: ScheduleError | None) -> None:
        done, self._reload_done = self._reload_done, None
        self._reload_cause = (SYSTEM_ACTOR, "reload")
        if done is not None and not done.done():
            done.set_result(error)

    # ------------------------------------------------------------------ schedule host
    # (cloud.commands.schedule_apply.ScheduleHost: schedule_apply and reload commands)

    def device_protocols(self) -> dict[str, str]:
        return dict(self.config.device_protocols())

    def schedule_files(self) -> list[Path]:
        return list(self.schedule_paths)

    async def install_schedule(
        self, files: Sequence[Path] | None, *, actor: str, reason: str
    ) -> str:
        """Swap the schedule live through the reload path (``files`` None: the files in force
        again). Raises ScheduleError and keeps the running schedule when they do not load."""
        async with self._install_lock:
            previous = self.schedule_paths
            if files is not None:
                self.schedule_paths = list(files)
            done: asyncio.Future[ScheduleError | None] = asyncio.get_running_loop().create_future()
            self._reload_done, self._reload_cause = done, (actor, reason)
            self.request_reload(actor)
            error = await done
            if error is not None:
                self.schedule_paths = previous
                raise error
            assert self.schedule is not None
            return self.schedule.version

    # ------------------------------------------------------------------ schedule service
    # (api.schedule.ScheduleService: outpost schedule probe/load, outpost reload)

    def running_schedule(self) -> dict[str, Any]:
        files = []
        for path in self.schedule_paths:
            try:
                text: str | None = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):  # gone meanwhile, or a workbook
                text = None
            files.append({"name": str(path), "text": text})
        return {
            "version": self.schedule.version if self.schedule else None,
            "points": len(self.schedule.points) if self.schedule else 0,
            "files": files,
        }

    async def reload_schedule(self, actor: str) -> dict[str, Any]:
        previous = self.schedule.version if self.schedule else None
        try:
            version = await self.install_schedule(None, actor=actor, reason="reload")
        except ScheduleError as exc:
            raise ScheduleRejected([str(i) for i in exc.issues]) from None
        return {"version": version, "previous": previous}

    async def load_schedule(
        self, files: dict[str, str], *, actor: str, within_s: float
    ) -> dict[str, Any]:
        """``outpost schedule load``: the command channel's apply (validate, install under
        data_dir/schedules/pushed, verify, roll back), recorded as ``operator.schedule.apply``."""
        previous = self.schedule.version if self.schedule else None
        command = ScheduleApplyCommand(
            kind="schedule_apply",
            args=ScheduleApplyArgs(files=files, verification=Verification(within_s=within_s)),
        )
        result = await self.applier.apply(command, actor=actor)
        detail = dict(result.detail or {})
        self.emit(
            self.clock(),
            "operator.schedule.apply",
            str(detail.get("version") or previous or ""),
            actor,
            {
                "status": result.status,
                "outcome": detail.get("outcome"),
                "message": result.message,
                "previous": previous,
                "errors": list(detail.get("errors") or [])[:20],
            },
        )
        return {"status": result.status, "message": result.message, "previous": previous, **detail}

    async def probe_schedule(
        self, files: dict[str, str], *, device: str | None, progress: Callable[[int], None]
    ) -> dict[str, Any]:
        protocols = self.config.device_protocols()
        sources = [(name, text.encode("utf-8")) for name, text in sorted(files.items())]
        schedule, issues = await asyncio.to_thread(parse_schedule, sources, protocols)
        if schedule is None:
            raise ScheduleRejected([str(i) for i in issues])
        points = [p for p in schedule.points if device is None or p.device == device]
        report = await probe_points(self.drivers, points, protocols=protocols, progress=progress)
        return report.to_dict()

    def probe(self) -> ProbeSnapshot:
        table = self.table
        points: dict[str, tuple[int, float | None]] = {}
        if table is not None:
            for i, pid in enumerate(table.ids):
                ts = table.ts[i]
                points[pid] = (table.quality[i], None if math.isnan(ts) else ts)
        devices = {d: c.health.connected for d, c in self.coordinators.items()}
        return ProbeSnapshot(points=points, devices=devices)

    async def _announce_ready(self, scheduler: Scheduler) -> None:
        await scheduler.first_cycle_done.wait()
        self.ready.set()
        self.notifier.ready(self.status_line())
        log.info("agent.ready", status=self.status_line())

    async def _health_loop(self) -> None:
        """Pet the systemd watchdog only while polling and the buffer writer make progress."""
        interval = self.notifier.watchdog_interval_s
        period = min(interval / 2, 5.0) if interval else 5.0
        stall = self.config.scheduler.watchdog_stall_s
        while True:
            await asyncio.sleep(period)
            healthy, why = self.healthy(stall)
            if healthy:
                self.notifier.watchdog()
            else:
                log.error("agent.unhealthy", reason=why)
            self.notifier.status(self.status_line())

    def healthy(self, stall_s: float) -> tuple[bool, str]:
        now = time.monotonic()
        if self.buffer is None or not self.buffer.writer_alive:
            return False, "buffer writer not running"
        if now - self.buffer.last_commit_monotonic > stall_s:
            if self.buffer.commit_failing:
                return (
                    False,
                    f"buffer cannot commit for {now - self.buffer.last_commit_monotonic:.0f}s",
                )
            return (
                False,
                f"buffer writer made no progress for {now - self.buffer.last_commit_monotonic:.0f}s",
            )
        if (
            self.scheduler is not None
            and self.scheduler.jobs
            and now - self.scheduler.last_progress > stall_s
        ):
            return False, f"no poll completed for {now - self.scheduler.last_progress:.0f}s"
        return True, "ok"

    def status_line(self) -> str:
        devices = len(self.coordinators)
        up = sum(1 for c in self.coordinators.values() if c.health.connected)
        points = len(self.table) if self.table is not None else 0
        return f"mode={self._mode()} devices={up}/{devices} up points={points}"

    # ------------------------------------------------------------------ local control

    def _make_control(self, schedule: Schedule) -> LocalControl:
        cfg = self.config
        uplink_last_success: Callable[[], float | None] | None = None
        if cfg.cloud is not None:
            # The uplink is made after local control; read it when asked, not now.
            uplink_last_success = self._uplink_last_success
        return LocalControl(
            schedule,
            alarms_config=cfg.alarms,
            modes_config=cfg.modes,
            devices=cfg.devices,
            drivers=self.drivers,
            emit=self.emit,
            device_health=self.device_health,
            uplink_last_success=uplink_last_success,
            live_values=self._good_values,
            state_dir=cfg.agent.data_dir,
            storage_fault=self._buffer_fault,
            on_read_back=self._on_read_back,
        )

    def device_health(self) -> dict[str, DeviceHealth]:
        return {d: c.health for d, c in self.coordinators.items()}

    def _uplink_last_success(self) -> float | None:
        if self.uplink is None:
            return None
        last = self.uplink.status().get("last_success_ts")
        return None if last is None else float(last)

    def _on_read_back(self, outcome: WriteOutcome) -> None:
        """A write's read-back is the newest value of the point: `outpost read` and the
        status page show it at once (the next poll stores it as usual)."""
        table = self.table
        i = None if table is None else table.index.get(outcome.point_id)
        if table is None or i is None or outcome.read_back is None:
            return
        if not math.isfinite(outcome.read_back):
            return
        table.value[i] = outcome.read_back
        table.ts[i] = outcome.ts
        table.quality[i] = Quality.GOOD

    def _buffer_fault(self) -> str | None:
        buf = self.buffer
        if buf is None or not buf.commit_failing:
            return None
        since = buf.commit_failing_since
        age = 0.0 if since is None else time.monotonic() - since
        return f"buffer: cannot commit for {age:.0f}s, {buf.pending_rows} rows only in memory"

    def _good_values(self) -> dict[str, float]:
        return self.table.good_values() if self.table is not None else {}

    def _mode(self) -> str:
        return self.control.mode_name() if self.control is not None else "normal"

    def _on_unsynced_evicted(self, count: int) -> None:
        # Called from the buffer writer thread: log now, record the event via the loop-safe path.
        log.error("buffer.evicted_unsynced", rows=count)
        if self.buffer is not None:
            self.buffer.append_event(
                time.time(),
                "system",
                "buffer",
                SYSTEM_ACTOR,
                {"event": "evicted_unsynced", "rows": count},
            )

    def _on_unsynced_events_evicted(self, count: int) -> None:
        # Writer thread, like _on_unsynced_evicted: the size bound dropped unsynced events.
        log.error("buffer.evicted_unsynced_events", events=count)
        if self.buffer is not None:
            self.buffer.append_event(
                time.time(),
                "system",
                "buffer",
                SYSTEM_ACTOR,
                {"event": "evicted_unsynced_events", "events": count},
            )

    def _on_corrupt_recovered(self, moved_to: Path) -> None:
        # Writer (or open()) thread: the buffer already logged buffer.corrupt; record an event
        # so the technician and the fleet see it, not only the journal.
        if self.buffer is not None:
            self.buffer.append_event(
                time.time(),
                "system",
                "buffer",
                SYSTEM_ACTOR,
                {"event": "corrupt_file_moved_aside", "moved_to": str(moved_to)},
            )

    # ------------------------------------------------------------------ uplink

    def _make_uplink(self) -> Uplink | None:
        if self.config.cloud is None:
            return None
        # imported only with [cloud]: httpx and the uplink cost an edge-only agent ≈ 3 MB RSS
        from outpost.cloud.uplink import Uplink

        assert self.buffer is not None
        return Uplink(
            self.config.cloud,
            gateway_id=self.config.agent.id,
            data_dir=self.config.agent.data_dir,
            buffer=self.buffer,
            heartbeat_source=self.heartbeat,
            point_metadata=self.point_metadata,
        )

    async def _command_channel(self) -> None:
        # Commands act on live state (device health, alarms): take none before the first poll
        # cycle has told us what that state is.
        await self.ready.wait()
        assert self.commands is not None
        await self.commands.run()

    def _make_commands(self) -> CommandChannel | None:
        cloud = self.config.cloud
        if cloud is None:
            return None
        from outpost.cloud.commands.client import CommandChannel
        from outpost.cloud.commands.executor import CommandExecutor, Policy

        assert self.control is not None
        executor = CommandExecutor(
            self.control,
            self.applier,
            policy=Policy(cloud.allow_remote_writes, cloud.allow_remote_modes),
            refusals=(ControlRefused,),
        )
        return CommandChannel(
            cloud,
            gateway_id=self.config.agent.id,
            data_dir=self.config.agent.data_dir,
            executor=executor,
            emit=self.emit,
        )

    def heartbeat(self) -> dict[str, Any]:
        return {
            "site": self.config.agent.site or None,
            "mode": self._mode(),
            "agent_version": _version(),
            "schedule_version": self.schedule.version if self.schedule else None,
            "active_alarms": self._alarm_counts() or {},
            "devices": {
                d: {
                    "connected": c.health.connected,
                    "last_ok_ts": c.health.last_ok_ts,
                    "error": c.health.last_error,
                }
                for d, c in self.coordinators.items()
            },
        }

    def point_metadata(self) -> list[dict[str, Any]]:
        """Every point's metadata in its wire form (``PointMeta.from_point``, the one source);
        a point whose metadata the wire refuses is left out and logged."""
        if self.schedule is None:
            return []
        version = self.schedule.version
        out = []
        for p in self.schedule.points:
            try:
                meta = PointMeta.from_point(p, version)
            except ValidationError as exc:
                log.warning(
                    "point_meta.invalid", point_id=p.point_id, error=str(exc).replace("\n", " ")
                )
                continue
            out.append(meta.model_dump(mode="json"))
        return out

    # ------------------------------------------------------------------ API

    def _api_app(self) -> Starlette:
        """The local API app: served on the Unix socket, and mounted by the status page under
        ``/api`` (one app, so the page can do nothing the CLI cannot)."""
        if self._api is None:
            assert self.control is not None
            self._api = create_app(
                self,
                self.control,
                request_reload=self.request_reload,
                schedules=self,
                gateway=self.config.agent.id,
            )
            self._api.add_route("/metrics", self.metrics.endpoint, include_in_schema=False)
        return self._api

    async def _serve_api(self) -> None:
        await LocalApiServer(self._api_app(), self.config.api.socket).serve()

    async def _serve_page(self, bind: str) -> None:
        """The status page on ``[api] bind`` (``api.page``); imported only when enabled, so
        an agent without it never loads Jinja2 and the templates."""
        from outpost.agent.api.page import create_page_app, serve_page

        assert self.control is not None
        token = bind_token(bind, self.config.api.token_env)  # /metrics: the metrics' own rule
        app = create_page_app(
            self,
            self.control,
            self._api_app(),
            users=UserStore(users_path(self.config.agent.data_dir)),
            force_login=not is_loopback_bind(bind),
            metrics_app=metrics_http_app(self.metrics, token),
        )
        await serve_page(app, bind)

    @property
    def gateway_id(self) -> str:
        return self.config.agent.id

    def point_meta(self, point_id: str) -> dict[str, Any] | None:
        table = self.table
        i = None if table is None else table.index.get(point_id)
        if table is None or i is None:
            return None
        p = table.points[i]
        return {
            "point_id": p.point_id,
            "device": p.device,
            "units": p.units,
            "description": p.description,
            "writable": p.writable,
            "min": p.min,
            "max": p.max,
            "alarm_hh": p.alarm_hh,
            "alarm_h": p.alarm_h,
            "alarm_l": p.alarm_l,
            "alarm_ll": p.alarm_ll,
            "alarm_priority": p.alarm_priority.value,
        }

    async def point_history(self, point_id: str, since_ts: float, limit: int) -> dict[str, Any]:
        if self.buffer is None:
            return {"t": [], "value": [], "quality": []}
        await self.buffer.flush()
        rows = await asyncio.to_thread(self.buffer.history, point_id, since_ts, None, limit)
        return {"t": rows.ts, "value": rows.value, "quality": rows.quality}

    # ------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        now = self.clock()
        devices = {}
        for device_id, dev in self.config.devices.items():
            coord = self.coordinators.get(device_id)
            entry: dict[str, Any] = {"protocol": dev.protocol, "enabled": dev.enabled}
            if coord is not None:
                entry.update(coord.health.as_dict())
                entry["points"] = sum(len(g.points) for g in coord.groups)
                entry.update(self._poll_stats(device_id))
            devices[device_id] = entry
        return {
            "gateway_id": self.config.agent.id,
            "site": self.config.agent.site,
            "agent_version": _version(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": round(now - self.started_at, 1),
            "ready": self.ready.is_set(),
            "mode": self.control.mode_state() if self.control is not None else {"mode": "normal"},
            "schedule": {
                "version": self.schedule.version if self.schedule else None,
                "points": len(self.schedule.points) if self.schedule else 0,
                "files": [str(f) for f in self.schedule_paths],
                "reloads": self.reloads,
                "reload_errors": self.reload_errors,
                "last_reload_error": self.last_reload_error,
            },
            "devices": devices,
            "scheduler": self.scheduler.summary() if self.scheduler else None,
            "pipeline": {
                "readings": self.pipeline.stats.readings if self.pipeline else 0,
                "stored": self.pipeline.stats.stored if self.pipeline else 0,
            },
            "alarms": self._alarm_counts(),
            "uplink": self.uplink.status() if self.uplink is not None else None,
            "commands": self.commands.status() if self.commands is not None else None,
            "sparkplug": self.sparkplug.status() if self.sparkplug is not None else None,
        }

    def metrics_info(self) -> dict[str, str]:
        return {
            "gateway": self.config.agent.id,
            "version": _version(),
            "schedule_version": self.schedule.version if self.schedule else "",
        }

    def metrics_parts(
        self,
    ) -> tuple[LocalControl | None, Uplink | None, CommandChannel | None, SparkplugNode | None]:
        return self.control, self.uplink, self.commands, self.sparkplug

    def _poll_stats(self, device_id: str) -> dict[str, Any]:
        """Poll timing of one device over its scheduler jobs (one per poll interval)."""
        jobs = (
            [j for key, j in self.scheduler.jobs.items() if key.startswith(f"{device_id}@")]
            if self.scheduler is not None
            else []
        )
        durations = [j.stats.last_duration_s for j in jobs if j.stats.last_duration_s is not None]
        return {
            "polls": sum(j.stats.polls for j in jobs),
            "overruns": sum(j.stats.overruns for j in jobs),
            "last_poll_ms": round(max(durations) * 1e3, 1) if durations else None,
        }

    def _alarm_counts(self) -> dict[str, int] | None:
        return None if self.control is None else self.control.alarms.counts()

    async def buffer_stats(self) -> dict[str, Any] | None:
        if self.buffer is None:
            return None
        stats = await asyncio.to_thread(self.buffer.stats)
        return stats.to_dict()

    @property
    def events(self) -> Buffer | None:
        return self.buffer

    def knows_device(self, device_id: str) -> bool:
        return device_id in self.config.devices

    def live_points(self, device: str | None = None) -> list[dict[str, Any]]:
        if self.table is None:
            return []
        out = []
        for i, p in enumerate(self.table.points):
            if device is not None and p.device != device:
                continue
            out.append(_live_dict(self.table, i))
        return out

    def live_point(self, point_id: str) -> dict[str, Any] | None:
        if self.table is None:
            return None
        i = self.table.index.get(point_id)
        return None if i is None else _live_dict(self.table, i)

    # ------------------------------------------------------------------ shutdown

    async def _shutdown(self) -> None:
        t0 = time.monotonic()
        for driver in self.drivers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(driver.close(), timeout=1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.context.aclose(), timeout=1.0)
        if self.control is not None:
            with contextlib.suppress(Exception):
                self.control.close()
        if self.commands is not None:
            self.commands.close()
        if self.buffer is not None:
            await asyncio.to_thread(self.buffer.close)
        self.notifier.close()
        log.info("agent.stopped", shutdown_ms=round((time.monotonic() - t0) * 1e3, 1))


def _prepare_data_dir(path: Path) -> None:
    """State, buffer and socket live here: only the agent's user and group may enter."""
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o007:
        log.warning(
            "data_dir.world_accessible",
            path=str(path),
            mode=oct(mode),
            hint="chmod 0750 it (systemd: StateDirectoryMode=0750)",
        )


def _live_dict(table: PointTable, i: int) -> dict[str, Any]:
    lv = table.live(i)
    return {
        "point_id": lv.point_id,
        "device": lv.device,
        "value": lv.value,
        "quality": lv.quality,
        "ts": _iso(lv.ts),
        "units": lv.units,
        "last_change": _iso(lv.changed),
    }


def _iso(ts: float | None) -> str | None:
    if ts is None or math.isnan(ts):
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _version() -> str:
    try:
        return version("outpost")
    except PackageNotFoundError:
        return "0+unknown"
