"""Where the agent's resident memory sits, as the allocators see it, and giving free heap back.

RSS alone cannot tell a leak from a cache filling up to its bound. Two counters can:

- glibc's ``mallinfo2``: bytes malloc has handed out (C extensions, SQLite, large Python
  objects) and free bytes it keeps for reuse. Small Python objects live in pymalloc's own
  arenas, outside these figures.
- SQLite's ``sqlite3_memory_used`` and page-cache bytes, summed over every connection of the
  process: each connection's page cache grows to its ``cache_size`` as the buffer file grows,
  then stays there (measured at 100,000 points: +13 MB over the first ~8 minutes with the
  buffer's 8 + 4 + 2 MB caches, see ``bench/soak.py --probe``).

Both are read through ``ctypes`` from the libraries already loaded (the ``sqlite3`` module's
shared libsqlite3; the C library). Where one is not there (musl, a statically linked
SQLite), :meth:`HeapProbe.read` leaves its fields ``None`` instead of failing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
from dataclasses import dataclass

#: sqlite3_status64 verb: page-cache bytes taken from malloc (all of them when, as in the
#: agent, no static page-cache buffer is configured).
_SQLITE_STATUS_PAGECACHE_OVERFLOW = 2


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True, slots=True)
class HeapUse:
    """Bytes, or ``None`` where the library does not tell."""

    malloc_used: int | None  # handed out by malloc (heap and mmapped chunks)
    malloc_free: int | None  # free but kept by malloc (reused, or given back by a trim)
    sqlite_used: int | None  # held by SQLite, all connections (page caches included)
    sqlite_page_cache: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "malloc_used": self.malloc_used,
            "malloc_free": self.malloc_free,
            "sqlite_used": self.sqlite_used,
            "sqlite_page_cache": self.sqlite_page_cache,
        }


class HeapProbe:
    """Reads :class:`HeapUse` and trims malloc's free memory; cheap enough for every scrape
    (``mallinfo2`` walks malloc's arenas: tens of microseconds at the agent's heap size)."""

    def __init__(self) -> None:
        self._libc = _load_libc()
        self._sqlite = _load_sqlite()

    @property
    def available(self) -> bool:
        return self._libc is not None or self._sqlite is not None

    def read(self) -> HeapUse:
        used = free = sq_used = sq_cache = None
        if self._libc is not None:
            info = self._libc.mallinfo2()
            used = int(info.uordblks + info.hblkhd)
            free = int(info.fordblks)
        if self._sqlite is not None:
            sq_used = int(self._sqlite.sqlite3_memory_used())
            cur, high = ctypes.c_int64(), ctypes.c_int64()
            rc = self._sqlite.sqlite3_status64(
                _SQLITE_STATUS_PAGECACHE_OVERFLOW, ctypes.byref(cur), ctypes.byref(high), 0
            )
            sq_cache = int(cur.value) if rc == 0 else None
        return HeapUse(used, free, sq_used, sq_cache)

    def trim(self) -> bool:
        """Give malloc's free pages back to the kernel (``malloc_trim(0)``); True when some
        memory was released. Costs a walk of the heap (milliseconds at 100 MB): call it
        after a known burst (a schedule reload), not on a timer."""
        if self._libc is None:
            return False
        return bool(self._libc.malloc_trim(0))


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2  # glibc >= 2.33
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _Mallinfo2
    mallinfo2.argtypes = []
    malloc_trim.restype = ctypes.c_int
    malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def _load_sqlite() -> ctypes.CDLL | None:
    """The libsqlite3 the ``sqlite3`` module uses: loading the same soname again returns the
    copy already mapped, so the counters are the agent's own. A statically linked SQLite
    (the module's version differs from the shared library's) is not it: None."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.sqlite3_libversion.restype = ctypes.c_char_p
        version = lib.sqlite3_libversion().decode()
        memory_used = lib.sqlite3_memory_used
        status64 = lib.sqlite3_status64
    except (OSError, AttributeError):
        return None
    if version != sqlite3.sqlite_version:
        return None
    memory_used.restype = ctypes.c_int64
    memory_used.argtypes = []
    status64.restype = ctypes.c_int
    status64.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_int,
    ]
    return lib
