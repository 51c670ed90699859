"""Atomic JSON state files for the alarm engine and the mode machine.

Why a JSON file and not SQLite: the state is small (one record per alarm, one for the mode),
written only when something changes (never per reading), read once at start, and a technician
can inspect it with `cat`. Write-to-temp + fsync + rename gives the same crash safety as a
database transaction for a single document: after a kill -9 the file is either the old or the
new version, never half of each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)


class StateStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class JsonFileStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            # A corrupt state file must not stop the site from alarming: keep it for a human,
            # start from a clean state.
            aside = self.path.with_suffix(self.path.suffix + ".corrupt")
            os.replace(self.path, aside)
            log.error("state.corrupt", path=str(self.path), moved_to=str(aside), error=str(exc))
            return None
        return data if isinstance(data, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, separators=(",", ":"), sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
