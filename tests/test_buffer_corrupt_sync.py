"""Corrupt buffer files end to end (issue 13, scale of the fault tests): a buffer syncs to a
real receiver, is closed, its file is damaged in one of the ways a power cut or a person can
damage it, and is opened again (moved aside or recovered, never a crash loop). The agent writes
on and syncs. Finally the receiver holds exactly what was synced before the damage plus every
reading and event of the buffer now: nothing doubled, no new event dropped as a duplicate id.

Cases: random bytes over a page in the middle of the file, zero length, a text file, a torn
header (the first page cut short), garbage in the WAL. Both buffer layouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from pathlib import Path

import pytest

from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import (
    Writer,
    all_synced,
    buffer_event_ids,
    buffer_rows,
    cloud_config,
    make_uplink,
    open_buffer,
    wait_for,
)

pytest_plugins = ("tests.receiver_fixtures",)

CASES = ("random_page", "zero_length", "text_file", "torn_header", "garbage_wal")


def damage(path: Path, case: str, rng: random.Random) -> None:
    if case == "random_page":
        size = path.stat().st_size
        page = 4096
        pages = size // page
        assert pages > 8, f"file too small to damage its middle ({size} bytes)"
        with path.open("r+b") as f:
            f.seek((pages // 2) * page)
            f.write(rng.randbytes(page))
    elif case == "zero_length":
        path.write_bytes(b"")
    elif case == "text_file":
        path.write_text("readings? no, a shopping list\n" * 200)
    elif case == "torn_header":
        head = path.read_bytes()[:100]
        path.write_bytes(head[:60])  # the 100-byte database header cut short
    elif case == "garbage_wal":
        # Closed cleanly, so no WAL: a leftover one full of garbage must not break the open
        # (SQLite checks the WAL's header and frame checksums and ignores what fails).
        Path(str(path) + "-wal").write_bytes(rng.randbytes(64 * 1024))
    else:
        raise AssertionError(case)


async def sync_all(buf, receiver: ReceiverHandle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    uplink = make_uplink(cloud_config(receiver.url, batch_size=500), GW, tmp_path, buf)
    task = asyncio.create_task(uplink.run())
    try:
        await buf.flush()
        await wait_for(lambda: asyncio.to_thread(all_synced, buf), 30, "full sync")
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


GW = "gw-corrupt"


@pytest.mark.parametrize("layout", ["rows", "columnar"])
@pytest.mark.parametrize("case", CASES)
async def test_damaged_file_then_exact_receiver(
    receiver: ReceiverHandle, tmp_path: Path, case: str, layout: str
) -> None:
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    path = tmp_path / "buffer.db"
    rng = random.Random(f"{case}-{layout}")
    base = 1_790_000_000_000
    buf = open_buffer(path, layout, quick_check=True)
    try:
        writer = Writer(buf, points=40, seed=1)
        for i in range(150):  # ~6,000 readings: a file of many pages
            writer.round(base + i * 1000)
        await sync_all(buf, receiver, tmp_path)
        before_rows = buffer_rows(path)
        before_events = buffer_event_ids(path)
        # rows written after the last sync: lost with a file that cannot be read, kept with
        # one that can (garbage WAL); either way the receiver must end up matching the buffer
        for i in range(150, 160):
            writer.round(base + i * 1000)
        await buf.flush()
    finally:
        buf.close()
    assert await receiver.readings(GW) == sorted(before_rows)
    assert await receiver.event_ids(GW) == before_events != []

    damage(path, case, rng)

    recovered: list[Path] = []
    buf = open_buffer(path, layout, quick_check=True, on_corrupt_recovered=recovered.append)
    try:
        moved_aside = bool(recovered)
        # an empty file is a new buffer (nothing to keep); a WAL that fails its checksums is
        # ignored (the file is whole); anything else unreadable is moved aside
        assert moved_aside == (case not in ("zero_length", "garbage_wal")), recovered
        if moved_aside:
            assert recovered[0].exists()
        fresh = case != "garbage_wal"
        writer = Writer(buf, points=40, seed=2, prefix="after")
        for i in range(200, 260):
            writer.round(base + i * 1000)
        buf.append_event((base + 261_000) / 1000, "mode", "fsm", "system", {"case": case})
        await sync_all(buf, receiver, tmp_path)
        assert buf.stats().corrupt_recoveries == (1 if moved_aside else 0)
    finally:
        buf.close()

    now_rows = buffer_rows(path)
    now_events = buffer_event_ids(path)
    got_rows = await receiver.readings(GW)
    got_events = await receiver.event_ids(GW)
    if fresh:
        # the receiver: what it had, plus exactly the fresh file's readings and events
        assert not set(now_rows) & set(before_rows)
        expected_rows = sorted(before_rows + now_rows)
        assert not set(now_events) & set(before_events), "event ids restarted after a reset"
        expected_events = sorted(before_events + now_events)
    else:
        expected_rows = sorted(now_rows)
        expected_events = now_events
    assert got_rows == expected_rows
    assert got_events == expected_events
    assert len(now_events) >= 1 + (0 if fresh else len(before_events))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    if moved_aside:
        assert recovered[0].name.startswith("buffer.db.corrupt-")
