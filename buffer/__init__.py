"""SQLite store-and-forward buffer: readings and events, sync cursor, size bound, retention.

``outpost.buffer.store.Buffer`` is the row layout (a facade over ``writer``,
``recovery``, ``maintenance``, ``sync``, ``history``, ``points``, ``files``; its docstring
lists the guarantees and which module keeps each); ``outpost.buffer.source.SyncSource`` is what
the uplink needs of it; ``outpost.buffer.inspect`` reads a buffer file directly (CLI stats and
exports, safe while the agent runs). ``columnar_store.ColumnarBuffer`` (with ``chunks`` and
``columnar``) is the columnar storage of issue 14: same API, what the agent uses by default
(``[buffer] layout``).
"""

from outpost.buffer.models import BufferStats, EventRow, ReadingRows
from outpost.buffer.schema import BufferFileError
from outpost.buffer.source import SyncSource
from outpost.buffer.store import Buffer, BufferClosedError

__all__ = [
    "Buffer",
    "BufferClosedError",
    "BufferFileError",
    "BufferStats",
    "EventRow",
    "ReadingRows",
    "SyncSource",
]
