"""Poll scheduler and task supervision: wall-clock alignment, stagger, overrun counting, crash
survival, restart delays.

The timing tests run the real scheduler in virtual time (its clock and sleep injected), so
they assert exact slots instead of wall-clock bounds that a loaded machine can break."""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import weakref
from collections.abc import Awaitable, Callable

from outpost.agent.core.scheduler import (
    Job,
    RecentValues,
    Scheduler,
    freeze_long_lived,
    next_due,
    stagger_offset,
)
from outpost.agent.core.supervise import supervise


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


class VirtualTime:
    """A clock and a sleep for the scheduler: time moves only when every task is waiting,
    straight to the earliest wake-up."""

    def __init__(self, start: float) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, delay), next(self._order), wake))
        await wake

    async def _settle(self) -> None:
        # every runnable task runs until it waits again (each hop is one loop iteration)
        for _ in range(50):
            await asyncio.sleep(0)

    async def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            await self._settle()
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > end:
                self.now = end
                return
            self.now, _, wake = heapq.heappop(self._sleepers)
            wake.set_result(None)


async def _run(sched: Scheduler, vt: VirtualTime, seconds: float) -> None:
    task = asyncio.create_task(sched.run())
    await vt.run_for(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_polls_fire_on_wall_clock_multiples() -> None:
    vt = VirtualTime(1000.013)
    starts: list[float] = []

    async def action() -> None:
        starts.append(vt.now)

    sched = Scheduler(clock=vt.clock, sleep=vt.sleep)
    sched.add(Job("a", 0.2, action, offset=0.05))
    await _run(sched, vt, 1.3)
    # the first poll runs at once (after its small offset), unaligned
    assert starts[0] == 1000.013 + 0.05
    # then exactly on k × 0.2 + 0.05: 1000.25, 1000.45, … 1001.25
    expected = [1000.25 + 0.2 * k for k in range(6)]
    assert len(starts) == 1 + len(expected), starts
    for got, want in zip(starts[1:], expected, strict=True):
        assert abs(got - want) < 1e-9, (got, want)
    assert all(abs(j) < 1e-9 for j in sched.jobs["a"].stats.jitter_s)
    assert sched.first_cycle_done.is_set()


async def test_overrun_is_skipped_and_counted_never_stacked() -> None:
    vt = VirtualTime(2000.0)
    running = 0
    max_running = 0
    calls = 0

    async def slow() -> None:
        nonlocal running, max_running, calls
        calls += 1
        running += 1
        max_running = max(max_running, running)
        await vt.sleep(0.45)
        running -= 1

    sched = Scheduler(clock=vt.clock, sleep=vt.sleep)
    job = Job("slow", 0.1, slow)
    sched.add(job)
    await _run(sched, vt, 1.25)
    assert max_running == 1
    assert job.stats.overruns >= 5
    assert calls <= 4
    # polls start at 0, 0.5 and 1.0 s (each takes 0.45 s); every other slot of the 13
    # (the first poll and 12 aligned slots) is a counted overrun: none stacked, none lost
    assert calls == 3 and calls + job.stats.overruns == 13


async def test_crashing_poll_is_counted_and_polling_continues() -> None:
    vt = VirtualTime(3000.0)
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise RuntimeError("driver bug")

    sched = Scheduler(clock=vt.clock, sleep=vt.sleep)
    job = Job("flaky", 0.1, flaky)
    sched.add(job)
    await _run(sched, vt, 1.0)
    # the job survives its own exceptions: it keeps being called after failing
    assert calls >= 3
    assert job.stats.errors >= 1 and job.stats.errors == (calls + 1) // 2


async def test_supervise_restarts_with_doubling_delay_reset_after_a_healthy_run() -> None:
    vt = VirtualTime(4000.0)
    starts: list[float] = []
    crashes: list[BaseException] = []
    plan = iter([0.0, 0.0, 0.0, 61.0, 0.0, None])  # run time before crashing; None: return

    async def task() -> None:
        starts.append(vt.now)
        ran = next(plan)
        if ran is None:
            return
        await vt.sleep(ran)
        raise RuntimeError("bug")

    runner = asyncio.create_task(
        supervise("t", task, on_crash=crashes.append, clock=vt.clock, sleep=vt.sleep)
    )
    await vt.run_for(200.0)
    assert runner.done() and runner.exception() is None  # returned: supervision ends
    offsets = [round(t - 4000.0, 6) for t in starts]
    # crash, wait 1, crash, wait 2, crash, wait 4, run 61 s then crash: healthy, so wait 1
    # again, crash, wait 2, return
    assert offsets == [0.0, 1.0, 3.0, 7.0, 69.0, 71.0], offsets
    assert len(crashes) == 5 and all(isinstance(c, RuntimeError) for c in crashes)


async def test_supervise_passes_cancellation_through() -> None:
    vt = VirtualTime(5000.0)

    async def forever() -> None:
        await vt.sleep(1e9)

    runner = asyncio.create_task(supervise("t", forever, clock=vt.clock, sleep=vt.sleep))
    await vt.run_for(1.0)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert runner.cancelled()


class _Node:
    """An object that can sit in a reference cycle (only the cyclic collector frees those)."""

    other: object = None


def test_freeze_long_lived_keeps_the_schedule_out_of_collections_until_the_next_one() -> None:
    node = _Node()
    node.other = node  # a cycle, as the previous schedule's plans and tasks may hold
    ref = weakref.ref(node)
    try:
        freeze_long_lived()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None  # frozen: full collections no longer walk it
        freeze_long_lived()  # the next schedule: the previous one's cyclic garbage goes
        assert ref() is None
    finally:
        gc.unfreeze()


def test_recent_values_keeps_the_last_n_oldest_first() -> None:
    window = RecentValues(4)
    for v in (1.0, 2.0, 3.0):
        window.append(v)
    assert list(window) == [1.0, 2.0, 3.0] and len(window) == 3
    for v in (4.0, 5.0, 6.0):
        window.append(v)
    assert list(window) == [3.0, 4.0, 5.0, 6.0] and len(window) == 4
    assert sorted(window, reverse=True)[0] == 6.0
    assert list(window.newest(2)) == [5.0, 6.0] and list(window.newest(9)) == [3.0, 4.0, 5.0, 6.0]
    assert list(window.newest(0)) == []
    partial = RecentValues(8)
    for v in (1.0, 2.0, 3.0):
        partial.append(v)
    assert list(partial.newest(2)) == [2.0, 3.0] and list(partial.newest(5)) == [1.0, 2.0, 3.0]


async def test_jobs_due_shortly_after_another_share_its_wake_up() -> None:
    vt = VirtualTime(6000.0)
    sleeps = 0
    starts: dict[str, list[float]] = {"a": [], "b": [], "c": []}

    async def counted_sleep(delay: float) -> None:
        nonlocal sleeps
        sleeps += 1
        await vt.sleep(delay)

    def action(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            starts[name].append(vt.now)

        return run

    sched = Scheduler(clock=vt.clock, sleep=counted_sleep)
    sched.add(Job("a", 1.0, action("a"), offset=0.10))
    sched.add(Job("b", 1.0, action("b"), offset=0.12))  # 20 ms after a: joins a's wake-up
    sched.add(Job("c", 1.0, action("c"), offset=0.20))  # 100 ms after a: a wake-up of its own
    await _run(sched, vt, 3.5)
    aligned = [6001.10, 6002.10, 6003.10]
    # after the unaligned first poll: a on its slots, b with a (20 ms early), c on its own
    assert [round(t, 9) for t in starts["a"][1:]] == aligned
    assert [round(t, 9) for t in starts["b"][1:]] == aligned
    assert [round(t, 9) for t in starts["c"][1:]] == [6001.20, 6002.20, 6003.20]
    # two wake-ups a cycle, not three: the first poll, three aligned ones, the pending next
    assert sleeps == 2 * 5
    # jitter is lateness against the wake-up slept on: none in virtual time
    assert all(j == 0.0 for name in "abc" for j in sched.jobs[name].stats.jitter_s)


async def test_without_coalescing_every_due_time_has_its_own_wake_up() -> None:
    vt = VirtualTime(7000.0)
    starts: list[float] = []

    async def action() -> None:
        starts.append(vt.now)

    sched = Scheduler(clock=vt.clock, sleep=vt.sleep, coalesce_s=0.0)
    sched.add(Job("a", 1.0, action, offset=0.10))
    sched.add(Job("b", 1.0, action, offset=0.12))
    await _run(sched, vt, 2.5)
    assert [round(t, 9) for t in starts[2:]] == [7001.10, 7001.12, 7002.10, 7002.12]


async def test_a_stopped_wake_up_leader_sends_its_followers_back_to_wait() -> None:
    vt = VirtualTime(8000.0)
    sched = Scheduler(clock=vt.clock, sleep=vt.sleep)
    leader = asyncio.create_task(sched._wait_until(8001.0, 0.025))
    await asyncio.sleep(0)
    follower = asyncio.create_task(sched._wait_until(8001.01, 0.025))
    await asyncio.sleep(0)
    follower_2 = asyncio.create_task(sched._wait_until(8001.02, 0.025))
    await asyncio.sleep(0)
    follower_2.cancel()  # a follower stopping does not disturb the others
    await asyncio.gather(follower_2, return_exceptions=True)
    assert not follower.done() and not leader.done()
    leader.cancel()
    await asyncio.gather(leader, return_exceptions=True)
    # woken, told the wake-up did not happen: the job loop waits again rather than polling
    assert await follower is None
    assert sched._wakes == []
    on_time = asyncio.create_task(sched._wait_until(8001.01, 0.025))
    await vt.run_for(2.0)
    assert on_time.result() == 8001.01
