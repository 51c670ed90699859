"""Poll scheduler: wall-clock alignment, stagger, overrun counting (real time, short intervals)."""

from __future__ import annotations

import asyncio
import itertools
import time

from outpost.agent.core.scheduler import Job, Scheduler, next_due, stagger_offset


def test_next_due_is_aligned_and_strictly_after_now() -> None:
    assert next_due(100.0, 10.0, 0.0) == 110.0
    assert next_due(103.2, 10.0, 0.0) == 110.0
    assert next_due(109.999, 10.0, 0.5) == 110.5
    assert next_due(110.5, 10.0, 0.5) == 120.5
    # no drift: thousands of cycles later still on the grid
    t = 0.0
    for _ in range(10_000):
        t = next_due(t, 0.1, 0.0)
    assert abs(t - 1000.0) < 1e-6


def test_stagger_is_deterministic_bounded_and_spreads_devices() -> None:
    offsets = {stagger_offset(f"dev-{i}", 1.0, 0.25) for i in range(50)}
    assert all(0 <= o < 0.25 for o in offsets)
    assert len(offsets) > 40  # spread, not all in the same millisecond
    assert stagger_offset("dev-1", 1.0, 0.25) == stagger_offset("dev-1", 1.0, 0.25)
    # never more than a quarter of the interval
    assert stagger_offset("x", 0.2, 10.0) < 0.05


async def test_polls_fire_on_wall_clock_multiples() -> None:
    starts: list[float] = []

    async def action() -> None:
        starts.append(time.time())

    sched = Scheduler()
    sched.add(Job("a", 0.2, action, offset=0.05))
    t_start = time.time()
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(1.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(starts) >= 5
    assert starts[0] - t_start < 0.1  # the first poll runs at once, unaligned
    for t in starts[1:]:
        phase = (t - 0.05) % 0.2
        # start lands just after its slot (generous bound for a loaded CI machine)
        assert phase < 0.08, phase
    gaps = [b - a for a, b in itertools.pairwise(starts[1:])]
    assert all(0.1 < g < 0.3 for g in gaps), gaps
    assert sched.first_cycle_done.is_set()


async def test_overrun_is_skipped_and_counted_never_stacked() -> None:
    running = 0
    max_running = 0
    calls = 0

    async def slow() -> None:
        nonlocal running, max_running, calls
        calls += 1
        running += 1
        max_running = max(max_running, running)
        await asyncio.sleep(0.45)
        running -= 1

    sched = Scheduler()
    job = Job("slow", 0.1, slow)
    sched.add(job)
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(1.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert max_running == 1
    assert job.stats.overruns >= 5
    assert calls <= 4


async def test_crashing_poll_is_counted_and_polling_continues() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise RuntimeError("driver bug")

    sched = Scheduler()
    job = Job("flaky", 0.1, flaky)
    sched.add(job)
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # the job survives its own exceptions: it keeps being called after failing
    assert calls >= 3
    assert job.stats.errors >= 1 and job.stats.errors == (calls + 1) // 2
