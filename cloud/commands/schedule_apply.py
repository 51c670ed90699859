"""``schedule_apply`` and ``reload`` at the agent: validate, keep the previous version, apply
live, verify by probe, roll back by itself.

1. The pushed files are validated with the same loader as ``outpost schedule validate``
   (``parse_schedule`` with this agent's devices); any error refuses the command with the
   loader's messages verbatim, and nothing is written or loaded.
2. The files are written (fsync'd) under ``data_dir/schedules/pushed/<hash>/``; the running
   schedule's files are remembered as the previous version.
3. The runtime installs the new files live (the same path as a reload: alarms keep state).
4. The probe: within ``within_s``, at least ``min_good_ratio`` of the new schedule's points
   must have been read with good quality since the apply, and (``no_new_device_down``) no
   device that was up before may be down.
5. Passed: ``data_dir/schedules/active.json`` names the pushed files, so a restart runs
   them too (until the config's own schedule files change). Failed: the previous files are
   installed again and the result is ``failed`` with outcome ``rolled_back`` and the probe's
   findings.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from outpost.cloud.wire_commands import (
    MAX_MESSAGE,
    CommandResult,
    ScheduleApplyCommand,
    Verification,
)
from outpost.point_schedules.loader import ScheduleError, parse_schedule, schedule_version
from outpost.point_schedules.quality import Quality

log = structlog.get_logger(__name__)

ACTIVE_FILE = "active.json"
PUSHED_DIR = "pushed"
KEEP_PUSHED = 4  # pushed versions kept on disk (the active one, its predecessors)
_PROBE_EVERY_S = 0.5
MAX_ERRORS = 200  # loader errors carried back in one result


@dataclass(frozen=True)
class ProbeSnapshot:
    """``points``: point_id -> (quality code, wall time of its latest reading or None);
    ``devices``: device id -> connected."""

    points: Mapping[str, tuple[int, float | None]]
    devices: Mapping[str, bool]


class ScheduleHost(Protocol):
    """What the applier needs of the running agent (``agent.core.runtime.Runtime``)."""

    def device_protocols(self) -> Mapping[str, str]: ...

    def schedule_files(self) -> list[Path]:
        """The files of the schedule running now."""
        ...

    async def install_schedule(
        self, files: Sequence[Path] | None, *, actor: str, reason: str
    ) -> str:
        """Load ``files`` (None: the running schedule's own files again) and swap the
        schedule live; returns the new version. Raises ``ScheduleError``, leaving the
        running schedule in place."""
        ...

    def probe(self) -> ProbeSnapshot: ...


Outcome = Literal["applied", "unchanged", "rolled_back", "invalid", "reloaded"]


class ScheduleApplier:
    def __init__(self, host: ScheduleHost, data_dir: Path) -> None:
        self.host = host
        self.root = data_dir / "schedules"
        self._lock = asyncio.Lock()

    @staticmethod
    def _result(
        status: Literal["succeeded", "failed", "refused"],
        message: str,
        outcome: Outcome,
        **detail: Any,
    ) -> CommandResult:
        if isinstance(detail.get("errors"), list):  # a broken file can have thousands
            detail["errors"] = detail["errors"][:MAX_ERRORS]
        return CommandResult(
            status=status,
            message=message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…",
            detail={"outcome": outcome, **detail},
            executed_at=int(time.time() * 1000),
        )

    async def reload(self, *, actor: str) -> CommandResult:
        async with self._lock:
            try:
                version = await self.host.install_schedule(None, actor=actor, reason="reload")
            except ScheduleError as exc:
                errors = [str(i) for i in exc.issues]
                return self._result(
                    "failed",
                    f"reload rejected, the running schedule stays: {errors[0] if errors else ''}",
                    "invalid",
                    errors=errors,
                )
            return self._result(
                "succeeded", f"schedule {version} loaded", "reloaded", version=version
            )

    async def apply(self, command: ScheduleApplyCommand, *, actor: str) -> CommandResult:
        async with self._lock:
            return await self._apply(command.args.files, command.args.verification, actor)

    async def _apply(
        self, files: Mapping[str, str], rule: Verification, actor: str
    ) -> CommandResult:
        sources = [(name, text.encode("utf-8")) for name, text in sorted(files.items())]
        schedule, issues = parse_schedule(sources, self.host.device_protocols())
        if schedule is None:
            errors = [str(i) for i in issues]
            return self._result(
                "refused",
                f"schedule invalid ({len(errors)} problem(s)); nothing loaded: {errors[0]}",
                "invalid",
                errors=errors,
            )
        warnings = [str(i) for i in issues]
        previous_files = self.host.schedule_files()
        previous = self._running_version()
        if schedule.version == previous:
            return self._result(
                "succeeded",
                f"schedule {schedule.version} is already running",
                "unchanged",
                version=schedule.version,
                previous_version=previous,
            )
        new_files = await asyncio.to_thread(self._write_files, schedule.version, sources)
        before = self.host.probe()
        up_before = {d for d, up in before.devices.items() if up}
        t_apply = time.time()
        try:
            version = await self.host.install_schedule(new_files, actor=actor, reason="push")
        except ScheduleError as exc:  # e.g. a device vanished from the config meanwhile
            errors = [str(i) for i in exc.issues]
            return self._result(
                "refused", f"schedule rejected at load: {errors[0]}", "invalid", errors=errors
            )
        passed, findings = await self._verify(
            [p.point_id for p in schedule.points], up_before, t_apply, rule
        )
        base = {"version": version, "previous_version": previous, "probe": findings}
        if passed:
            await asyncio.to_thread(self._activate, version, new_files, previous_files)
            log.info("schedule.push_applied", version=version, previous=previous, actor=actor)
            return self._result(
                "succeeded",
                f"schedule {version} applied and verified ({findings['good_ratio']:.0%} good)",
                "applied",
                warnings=warnings,
                **base,
            )
        log.warning("schedule.push_rolling_back", version=version, findings=findings)
        try:
            restored = await self.host.install_schedule(
                previous_files, actor=actor, reason="rollback"
            )
        except ScheduleError as exc:  # the previous files changed on disk meanwhile
            return self._result(
                "failed",
                f"verification failed and the rollback was rejected: {exc.issues[0]}",
                "rolled_back",
                rollback_error=[str(i) for i in exc.issues],
                **base,
            )
        return self._result(
            "failed",
            f"rolled_back: {findings['summary']}; running {restored} again",
            "rolled_back",
            running_version=restored,
            **base,
        )

    def _running_version(self) -> str | None:
        files = self.host.schedule_files()
        try:
            return schedule_version([f.read_bytes() for f in files])
        except OSError:
            return None

    async def _verify(
        self, point_ids: list[str], up_before: set[str], since: float, rule: Verification
    ) -> tuple[bool, dict[str, Any]]:
        deadline = time.monotonic() + rule.within_s
        while True:
            snap = self.host.probe()
            fresh: dict[str, int] = {}
            for pid in point_ids:
                entry = snap.points.get(pid)
                if entry is not None and entry[1] is not None and entry[1] >= since:
                    fresh[pid] = entry[0]
            good = sum(1 for q in fresh.values() if q == Quality.GOOD)
            ratio = good / len(point_ids) if point_ids else 1.0
            down = sorted(d for d in up_before if not snap.devices.get(d, False))
            ok = ratio >= rule.min_good_ratio and (not rule.no_new_device_down or not down)
            if ok or time.monotonic() >= deadline:
                bad = sorted(
                    (pid, _label(fresh.get(pid)))
                    for pid in point_ids
                    if fresh.get(pid) != Quality.GOOD
                )
                summary = (
                    f"{good}/{len(point_ids)} points good ({ratio:.0%}, need "
                    f"{rule.min_good_ratio:.0%})"
                    + (f"; devices down: {', '.join(down)}" if down else "")
                )
                return ok, {
                    "good_ratio": ratio,
                    "good": good,
                    "points": len(point_ids),
                    "devices_down": down,
                    "not_good": [{"point_id": p, "quality": q} for p, q in bad[:20]],
                    "summary": summary,
                    "within_s": rule.within_s,
                }
            await asyncio.sleep(_PROBE_EVERY_S)

    # --- files ------------------------------------------------------------------------------

    def _write_files(self, version: str, sources: list[tuple[str, bytes]]) -> list[Path]:
        folder = self.root / PUSHED_DIR / version.replace("sha256:", "")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in sources:
            path = folder / Path(name).name
            _atomic_write(path, data)
            paths.append(path)
        return paths

    def _activate(self, version: str, files: list[Path], replaced: list[Path]) -> None:
        # "base": the config's own files this push stands in for (see pushed_schedule_files)
        base = [str(p) for p in replaced]
        previous = read_active(self.root.parent)
        if previous is not None and any(self.root / PUSHED_DIR in p.parents for p in replaced):
            base = previous.get("base", base)
        body = {"version": version, "files": [str(f) for f in files], "base": base}
        _atomic_write(self.root / ACTIVE_FILE, json.dumps(body, indent=1).encode())
        self._prune(keep={f.parent for f in files})

    def _prune(self, keep: set[Path]) -> None:
        pushed = self.root / PUSHED_DIR
        folders = sorted(
            (p for p in pushed.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
        )
        for folder in folders[:-KEEP_PUSHED]:
            if folder in keep:
                continue
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()


def read_active(data_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((data_dir / "schedules" / ACTIVE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pushed_schedule_files(data_dir: Path, config_files: Sequence[Path]) -> list[Path] | None:
    """The files of the schedule last pushed and verified here, if the runtime should run them
    instead of the config's: only while the config still names the files the push replaced
    (an engineer who edits ``[schedules] files`` on site wins) and they all exist."""
    active = read_active(data_dir)
    if active is None:
        return None
    if [str(p) for p in config_files] != active.get("base"):
        return None
    files = [Path(f) for f in active.get("files", [])]
    if not files or not all(f.is_file() for f in files):
        return None
    return files


def _label(code: int | None) -> str:
    if code is None:
        return "not read"
    try:
        return Quality(code).label
    except ValueError:
        return str(code)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
