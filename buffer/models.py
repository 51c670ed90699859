"""Plain data handed out by the buffer: rows for the uplink, events, statistics."""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class ReadingRows:
    """Readings as parallel lists (one list per column, aligned by index).

    ``ts`` is epoch seconds (UTC, millisecond resolution as stored). ``value`` is ``None`` where
    the reading carried no value (NaN on append: SQLite stores NaN as NULL). ``quality`` holds
    ``point_schedules.quality.Quality`` codes.
    """

    seq: list[int] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    point_id: list[str] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def first_seq(self) -> int | None:
        return self.seq[0] if self.seq else None

    @property
    def last_seq(self) -> int | None:
        return self.seq[-1] if self.seq else None

    def slice(self, a: int, b: int) -> ReadingRows:
        return ReadingRows(
            seq=self.seq[a:b],
            ts=self.ts[a:b],
            point_id=self.point_id[a:b],
            value=self.value[a:b],
            quality=self.quality[a:b],
        )

    def to_rows(self) -> ReadingRows:
        return self


def _no_names(keys: Sequence[int]) -> list[str]:
    return [f"#{k}" for k in keys]


@dataclass(slots=True)
class ReadingColumns:
    """Readings as typed arrays (aligned by index) for the uplink's binary body: the columnar
    layout hands out its chunks' arrays cut to the window, without a Python object per
    reading. ``ts_ms`` epoch ms; ``keys`` the buffer's point keys (``names_for`` maps keys to
    point ids); ``value`` NaN where the reading carried no value."""

    seq: array[int] = field(default_factory=lambda: array("q"))
    ts_ms: array[int] = field(default_factory=lambda: array("q"))
    keys: array[int] = field(default_factory=lambda: array("I"))
    value: array[float] = field(default_factory=lambda: array("d"))
    quality: array[int] = field(default_factory=lambda: array("B"))
    names_for: Callable[[Sequence[int]], list[str]] = _no_names

    def __len__(self) -> int:
        return len(self.seq)

    def slice(self, a: int, b: int) -> ReadingColumns:
        return ReadingColumns(
            self.seq[a:b],
            self.ts_ms[a:b],
            self.keys[a:b],
            self.value[a:b],
            self.quality[a:b],
            self.names_for,
        )

    def to_rows(self) -> ReadingRows:
        """The same readings as :class:`ReadingRows` (the JSON body, tools)."""
        return ReadingRows(
            seq=self.seq.tolist(),
            ts=[t / 1000.0 for t in self.ts_ms],
            point_id=self.names_for(self.keys.tolist()),
            value=[None if v != v else v for v in self.value],
            quality=self.quality.tolist(),
        )

    @classmethod
    def from_rows(cls, rows: ReadingRows) -> ReadingColumns:
        """Columns of :class:`ReadingRows` (the row layout), keys a per-call dictionary."""
        index: dict[str, int] = {}
        keys = [index.setdefault(p, len(index)) for p in rows.point_id]
        ids = list(index)
        nan = math.nan
        return cls(
            array("q", rows.seq),
            array("q", [round(t * 1000.0) for t in rows.ts]),
            array("I", keys),
            array("d", [nan if v is None else v for v in rows.value]),
            array("B", rows.quality),
            lambda ks: [ids[k] for k in ks],
        )


@dataclass(slots=True, frozen=True)
class EventRow:
    id: int
    ts: float  # epoch seconds, UTC
    kind: str
    source: str
    actor: str | None
    detail: dict[str, Any]


@dataclass(slots=True)
class BufferStats:
    """Depth and health of one buffer file.

    ``synced_through``: every seq at or below it is handled — acknowledged by the receiver,
    dead-lettered (``rejected_batches``) or evicted unsynced under the size bound (counted in
    ``evicted_unsynced``). ``unsynced_rows`` also excludes rows above it that were acknowledged
    out of order (live-first). ``pending_rows``/``dropped_rows`` are only known to the running
    agent (0 when read from the file).
    """

    path: str
    rows: int
    unsynced_rows: int
    oldest_unsynced_age_s: float | None
    size_bytes: int
    free_bytes: int
    evicted_synced: int
    evicted_unsynced: int
    expired_rows: int
    rejected_batches: int
    corrupt_recoveries: int
    events: int
    unsynced_events: int
    last_seq: int
    synced_through: int
    last_event_id: int
    events_synced_through: int
    pending_rows: int = 0
    dropped_rows: int = 0
    #: Events removed by the size bound: synced ones, and unsynced ones (lost, counted).
    evicted_events: int = 0
    evicted_unsynced_events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
