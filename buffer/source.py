"""What the uplink needs of a store: :class:`SyncSource`.

The uplink depends on this Protocol, never on the concrete :class:`outpost.buffer.store.Buffer`,
so a different storage (the columnar buffer of issue 14, a test double, a read-only replay of
a buffer file) can be synced by the same uplink.

Contract every implementation keeps (the uplink's exactly-once guarantee rests on it):

- ``seq`` numbers are contiguous per commit, strictly increasing and never reused, even after
  the file was replaced (corruption) or reset; event ids likewise.
- ``read_unsynced`` returns rows above the cursor oldest first, skipping ranges already
  acknowledged; ``read_latest`` the newest unsynced rows, in seq order.
- ``mark_range_synced`` / ``add_rejected`` may be called out of order and more than once for
  the same range (a replay); both are idempotent. ``add_rejected`` keeps the payload and counts
  the range as handled.
- ``mark_events_synced`` never moves the events cursor backwards or past the last event id.
- Every method may block (SQLite I/O): the uplink calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from outpost.buffer.models import BufferStats, EventRow, ReadingColumns, ReadingRows


@runtime_checkable
class SyncSource(Protocol):
    @property
    def last_seq(self) -> int:
        """Highest committed seq (cheap, no I/O)."""
        ...

    def read_unsynced(self, limit: int, after_seq: int | None = None) -> ReadingRows: ...

    def read_latest(self, limit: int) -> ReadingRows: ...

    def read_unsynced_columns(self, limit: int, after_seq: int | None = None) -> ReadingColumns: ...

    def read_latest_columns(self, limit: int) -> ReadingColumns: ...

    def mark_range_synced(self, first_seq: int, last_seq: int) -> None: ...

    def add_rejected(
        self, first_seq: int, last_seq: int, status: int, reason: str, payload: bytes
    ) -> None: ...

    def read_unsynced_events(self, limit: int) -> list[EventRow]: ...

    def mark_events_synced(self, through_id: int) -> None: ...

    def stats(self) -> BufferStats:
        """Depth and age of the backlog (``unsynced_rows``, ``oldest_unsynced_age_s``,
        ``unsynced_events``, ``rejected_batches``) for the status page and heartbeat."""
        ...
