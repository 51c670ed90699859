"""Backfill batches: with a large backlog the uplink sends bigger backlog batches (fewer
requests, receiver commits and ack commits), exactly once like any other batch; live batches
and a small backlog keep ``batch_size``."""

from __future__ import annotations

import time
from pathlib import Path

from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import (
    Writer,
    assert_identical,
    buffer_rows,
    cloud_config,
    make_uplink,
    open_buffer,
    run_until_synced,
)

pytest_plugins = ("tests.receiver_fixtures",)

GW = "gw-backfill"


async def test_large_backlog_goes_in_backfill_batches_exactly_once(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    token = await receiver.enroll(GW)
    (tmp_path / "gateway.token").write_text(token)
    buf = open_buffer(tmp_path / "buffer.db")
    try:
        writer = Writer(buf, points=100)
        base = int(time.time() * 1000) - 3_600_000
        for i in range(300):  # 30,000 readings of backlog
            writer.round(base + i * 1000)
        await buf.flush()
        uplink = make_uplink(
            cloud_config(receiver.url, batch_size=500, max_in_flight=2), GW, tmp_path, buf
        )
        # thresholds scaled down from 50,000 / 500,000 so that a test-sized backlog qualifies
        uplink._planner.backfill_batch = 4000
        uplink._planner.backfill_after = 6000
        await run_until_synced(uplink, buf, 60, "the backlog synced")
    finally:
        buf.close()
    assert_identical(buffer_rows(tmp_path / "buffer.db"), await receiver.readings(GW))
    log = await receiver.fetch(
        "SELECT first_seq, last_seq, duplicate FROM ingest_log WHERE gateway_id = $1 "
        "AND last_seq > 0 ORDER BY first_seq",
        GW,
    )
    sizes = [r["last_seq"] - r["first_seq"] + 1 for r in log]
    assert sum(sizes) == 30_000 and sum(r["duplicate"] for r in log) == 0
    # the first read is a normal one; then backfill batches while more than 6,000 readings
    # wait beyond the read position (29,500 ... 9,500); the tail (5,500) in normal batches
    assert sizes == [500] + [4000] * 6 + [500] * 11
