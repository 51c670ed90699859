"""Plain data handed out by the buffer: rows for the uplink, events, statistics."""

from __future__ import annotations

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
