"""Shared pieces of the uplink tests: a reading writer, buffer/receiver comparison, waiting.

The comparison is the point of every fault test: the set of readings in the agent's buffer
(read through the buffer's own export, i.e. what the agent committed) must equal the set the
receiver stored for the gateway, and the counts must match (no duplicates on either side).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.inspect import open_readonly
from outpost.buffer.source import SyncSource
from outpost.buffer.store import Buffer
from outpost.cloud.config import CloudConfig
from outpost.cloud.uplink import Uplink
from outpost.cloud.wire import wire_value
from outpost.point_schedules.quality import Quality

Row = tuple[str, int, float | None, int]


def buffer_rows(path: Path) -> list[Row]:
    """Every committed reading in the buffer file as (point_id, ts_ms, value, quality code)."""
    from outpost.buffer.inspect import export_readings

    out = io.StringIO()
    export_readings(path, out, "jsonl", None, None, None)
    rows: list[Row] = []
    for line in out.getvalue().splitlines():
        d = json.loads(line)
        ts = datetime.fromisoformat(d["ts"])
        rows.append(
            (
                d["point_id"],
                round(ts.timestamp() * 1000),
                wire_value(d["value"]),
                int(Quality.from_label(d["quality"])),
            )
        )
    return rows


def buffer_event_ids(path: Path) -> list[int]:
    with open_readonly(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]


def assert_identical(buffer: list[Row], receiver: list[Row]) -> None:
    """Same multiset: every buffered reading arrived exactly once, nothing else arrived."""
    assert len(set(buffer)) == len(buffer), "test writer produced duplicate (point, ts) rows"
    b, r = set(buffer), set(receiver)
    missing = sorted(b - r)[:5]
    extra = sorted(r - b)[:5]
    assert not missing and not extra, (
        f"buffer {len(b)} rows, receiver {len(r)} rows; missing {missing}; extra {extra}"
    )
    assert len(receiver) == len(buffer), f"receiver has {len(receiver)} rows for {len(b)}"


async def wait_for(
    cond: Callable[[], Awaitable[bool] | bool], within: float, what: str, poll: float = 0.05
) -> None:
    deadline = time.monotonic() + within
    while True:
        res = cond()
        if inspect.isawaitable(res):
            res = await res
        if res:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(poll)


def all_synced(buf: Buffer) -> bool:
    st = buf.stats()
    return st.pending_rows == 0 and st.unsynced_rows == 0 and st.unsynced_events == 0


async def run_until_synced(uplink: Uplink, buf: Buffer, within: float, what: str) -> None:
    """Run ``uplink`` until everything in ``buf`` is synced, then stop it."""
    task = asyncio.create_task(uplink.run())
    try:
        await wait_for(lambda: asyncio.to_thread(all_synced, buf), within, what)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Writer:
    """Appends one reading per point per round, like a poll cycle, plus an event now and then.

    Timestamps are whole milliseconds and strictly increase per point across rounds (and
    across process restarts, as they follow the wall clock), so (point, ts) is unique.
    Values mix scaled registers, full-precision floats and bad-quality NaN readings.
    """

    def __init__(
        self, buf: Buffer, points: int = 40, *, seed: int = 1, prefix: str = "dev"
    ) -> None:
        self.buf = buf
        self.ids = [f"{prefix}-{i // 10:02d}.p{i % 10:02d}" for i in range(points)]
        self.keys = buf.point_keys(self.ids)
        self.rng = random.Random(seed)
        self.last_ms = 0
        self.rounds = 0
        self.rows = 0

    def round(self, ts_ms: int | None = None) -> None:
        now = ts_ms if ts_ms is not None else int(time.time() * 1000)
        now = max(now, self.last_ms + 1)
        self.last_ms = now
        rng = self.rng
        n = len(self.keys)
        values: list[float] = []
        quality: list[int] = []
        for _ in range(n):
            r = rng.random()
            if r < 0.02:
                values.append(math.nan)
                quality.append(int(Quality.BAD_COMM_FAILURE))
            elif r < 0.5:
                values.append(rng.randint(0, 4000) * 0.1)
                quality.append(0)
            else:
                values.append(rng.uniform(-50, 50))
                quality.append(0)
        self.buf.append([now / 1000.0] * n, self.keys, values, quality)
        self.rounds += 1
        self.rows += n
        if self.rounds % 7 == 0:
            self.buf.append_event(
                now / 1000.0,
                "alarm",
                self.ids[self.rounds % n],
                "system",
                {"round": self.rounds, "state": "active"},
            )

    async def run(self, stop: asyncio.Event, period: float = 0.02) -> None:
        while not stop.is_set():
            self.round()
            await asyncio.sleep(period)


def cloud_config(url: str, **overrides: Any) -> CloudConfig:
    base: dict[str, Any] = {
        "url": url,
        "batch_size": 500,
        "heartbeat_interval": 0.5,
        "flush_interval": 0.05,
        "backoff_min": 0.02,
        "backoff_max": 0.3,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    base.update(overrides)
    return CloudConfig(**base)


def make_uplink(config: CloudConfig, gateway_id: str, data_dir: Path, buf: SyncSource) -> Uplink:
    return Uplink(
        config,
        gateway_id=gateway_id,
        data_dir=data_dir,
        buffer=buf,
        heartbeat_source=lambda: {
            "mode": "normal",
            "agent_version": "test",
            "devices": {"dev-00": {"connected": True, "last_ok_ts": time.time()}},
        },
        point_metadata=lambda: [
            {
                "point_id": f"dev-00.p{i:02d}",
                "device": "dev-00",
                "units": "degC",
                "tags": {"equip": "cdu"},
            }
            for i in range(3)
        ],
    )


def open_buffer(path: Path, layout: str = "columnar", **kw: Any) -> Buffer:
    """The agent's default layout (the columnar buffer of issue 14); ``layout="rows"``: the
    row layout (same API and guarantees)."""
    kw.setdefault("commit_interval", 0.05)
    kw.setdefault("quick_check", False)
    buf = (ColumnarBuffer if layout == "columnar" else Buffer)(path, **kw)
    buf.open()
    return buf
