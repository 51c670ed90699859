"""SQLite store-and-forward buffer: readings and events, sync cursor, size bound, retention.

``buffer.store.Buffer`` is what the running agent uses; ``outpost.buffer.inspect`` reads a buffer file
directly (CLI stats and exports, safe while the agent runs).
"""

from outpost.buffer.models import BufferStats, EventRow, ReadingRows
from outpost.buffer.schema import BufferFileError
from outpost.buffer.store import Buffer, BufferClosedError

__all__ = [
    "Buffer",
    "BufferClosedError",
    "BufferFileError",
    "BufferStats",
    "EventRow",
    "ReadingRows",
]
