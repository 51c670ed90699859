"""Time and event plumbing shared by the alarm engine and the mode machine.

Both take their clock as a parameter so tests drive the timing rules (on-delays, shelve
expiry, maintenance expiry, flood windows) by moving a clock instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds (UTC)."""
        ...


class SystemClock:
    """The production clock: wall time, because alarm and mode timestamps are shown to people
    and synced to the receiver as absolute times."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to (tests, simulations, replay tools)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        self._now += seconds
        return self._now

    def set(self, ts: float) -> None:
        self._now = float(ts)


class Emit(Protocol):
    """Same signature as ``buffer.store.Buffer.append_event``."""

    def __call__(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None: ...


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a ``Z``, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m``, ``1d``, or a bare number of seconds → seconds.

    Raises ValueError with the accepted forms in the message.
    """
    raw = text.strip().lower().replace(" ", "")
    if not raw:
        raise ValueError("empty duration; expected e.g. 90s, 30m, 2h, 1h30m")
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if value <= 0:
            raise ValueError(f"duration {text!r} must be positive")
        return value
    total = 0.0
    number = ""
    seen: set[str] = set()
    for ch in raw:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in _UNITS and number and ch not in seen:
            total += float(number) * _UNITS[ch]
            seen.add(ch)
            number = ""
        else:
            raise ValueError(f"invalid duration {text!r}; expected e.g. 90s, 30m, 2h, 1h30m")
    if number or total <= 0:
        raise ValueError(f"invalid duration {text!r}; expected e.g. 90s, 30m, 2h, 1h30m")
    return total


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            count, seconds = divmod(seconds, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)
