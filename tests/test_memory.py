"""HeapProbe: the allocator counters it reads move with real allocations, and a trim gives
free heap back to the kernel (RSS from /proc)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from outpost.agent.core.memory import HeapProbe


def _rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_probe_finds_glibc_and_the_sqlite_module_library() -> None:
    use = HeapProbe().read()
    assert HeapProbe().available
    assert use.malloc_used is not None and use.malloc_used > 0
    assert use.malloc_free is not None and use.malloc_free >= 0
    assert use.sqlite_used is not None and use.sqlite_page_cache is not None
    assert set(use.as_dict()) == {"malloc_used", "malloc_free", "sqlite_used", "sqlite_page_cache"}


def test_malloc_used_follows_a_large_allocation() -> None:
    probe = HeapProbe()
    before = probe.read().malloc_used
    block = bytearray(16 * 1024 * 1024)
    during = probe.read().malloc_used
    del block
    after = probe.read().malloc_used
    assert before is not None and during is not None and after is not None
    assert during - before >= 15 * 1024 * 1024
    assert during - after >= 15 * 1024 * 1024


def test_sqlite_page_cache_grows_to_what_a_connection_reads_and_goes_with_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pages.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t(x BLOB)")
        setup.executemany("INSERT INTO t VALUES (?)", [(bytes(1000),)] * 4000)  # ~4 MB
    setup.close()
    probe = HeapProbe()
    before = probe.read().sqlite_page_cache
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA cache_size = -8192")
    assert conn.execute("SELECT count(*), sum(length(x)) FROM t").fetchone() == (4000, 4_000_000)
    full = probe.read().sqlite_page_cache
    conn.close()
    closed = probe.read().sqlite_page_cache
    assert before is not None and full is not None and closed is not None
    assert full - before >= 3 * 1024 * 1024
    assert full - closed >= 3 * 1024 * 1024


def test_trim_gives_free_heap_back_to_the_kernel() -> None:
    probe = HeapProbe()
    # 64 KiB blocks come from the heap (below malloc's mmap threshold); the last one stays so
    # the freed ones sit below the heap's top, where only a trim can release them.
    blocks = [bytearray(64 * 1024) for _ in range(1600)]
    keep = blocks[-1]
    del blocks
    free = probe.read().malloc_free
    assert free is not None and free >= 90 * 1024 * 1024
    rss = _rss_anon_bytes()
    assert probe.trim() is True
    assert rss - _rss_anon_bytes() >= 50 * 1024 * 1024
    assert len(keep) == 64 * 1024
