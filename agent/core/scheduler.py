"""Wall-clock aligned polling.

A job with interval 10 s fires at :00, :10, :20 … plus a small per-device offset so that fifty
devices do not all send their request in the same millisecond. Due times are computed from
the wall clock every cycle (``k × interval + offset``), never by adding sleeps, so polls do not
drift over hours. A poll still running when its next slot comes is not stacked: the slot is
skipped and counted as an overrun. The very first poll of a job runs at start-up, unaligned,
so a 60 s group does not leave its points unknown for up to a minute.

Shared wake-ups: every time the process sleeps and wakes costs far more than the Python it
then runs (54–77 µs a wake-up on the bench VM, plus a loop iteration), and with fifty devices
staggered across 250 ms each device would wake the loop alone, twice a poll (its timer, then
its answer). So a job whose due time falls at most ``coalesce_s`` (25 ms, never more than a
twentieth of its interval) after a wake-up another job has already set joins that wake-up
instead of setting its own: its poll starts up to 25 ms early. The stagger keeps its purpose
(fifty devices are spread over about ten wake-ups instead of one millisecond, and their
answers come back in the same few bursts) at a fifth of the wake-ups. ``jitter`` is measured
against the wake-up the job slept on, so it still shows how late the event loop was.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
import zlib
from array import array
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import structlog

from outpost.agent.core.supervise import supervise

log = structlog.get_logger(__name__)


def stagger_offset(key: str, interval: float, max_stagger: float) -> float:
    """Deterministic offset in [0, min(max_stagger, interval/4)) derived from the job key."""
    span = min(max_stagger, interval / 4)
    if span <= 0:
        return 0.0
    return (zlib.crc32(key.encode()) % 10_000) / 10_000 * span


def freeze_long_lived() -> None:
    """Call when a schedule is installed, before polling starts: the schedule, point table,
    request plans and drivers live until the next reload, so move them out of the cyclic
    collector's reach (``gc.freeze``). Otherwise every full collection walks them all while
    the event loop waits: ~0.5 s per collection at 100,000 points on the bench box, about a
    fifth of the agent's CPU and its worst poll jitter. Unfreezing and collecting first
    reclaims the previous schedule's cyclic garbage once instead of keeping it forever."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def next_due(now: float, interval: float, offset: float) -> float:
    """The first ``k × interval + offset`` strictly after ``now``."""
    k = math.floor((now - offset) / interval) + 1
    due = k * interval + offset
    # float division can land one slot short (k × 0.1 / 0.1 < k): never return a past slot
    while due <= now:
        k += 1
        due = k * interval + offset
    return due


#: How many poll-jitter samples the site-wide summary sorts at most (≈ 2 MB of floats).
SUMMARY_SAMPLES = 65536


class RecentValues:
    """The last ``size`` values, oldest first, in a flat ``array('d')`` ring: 8 bytes a
    sample where a deque of floats takes 32 (the float object and its slot). The ring is
    allocated whole at construction, so a job's window costs its full 8 KB from the first
    poll and the agent's RSS does not climb for the quarter hour the windows take to fill
    (at 500 devices that climb was 4 MB; a deque of floats made it 32)."""

    __slots__ = ("_data", "_len", "_next", "_size")

    def __init__(self, size: int = 1024) -> None:
        self._data = array("d", bytes(8 * size))
        self._size = size
        self._len = 0
        self._next = 0  # the slot written next; once full, the oldest value

    def append(self, value: float) -> None:
        self._data[self._next] = value
        self._next = (self._next + 1) % self._size
        if self._len < self._size:
            self._len += 1

    def __len__(self) -> int:
        return self._len

    def _ordered(self) -> array[float]:
        if self._len < self._size:
            return self._data[: self._len]
        return self._data[self._next :] + self._data[: self._next]

    def __iter__(self) -> Iterator[float]:
        return iter(self._ordered())

    def newest(self, n: int) -> array[float]:
        """The last ``n`` values (fewer if fewer were kept), oldest first."""
        return self._ordered()[-n:] if n > 0 else array("d")


@dataclass(slots=True)
class JobStats:
    polls: int = 0
    overruns: int = 0
    skipped_late: int = 0
    errors: int = 0
    last_start: float | None = None
    last_done: float | None = None
    last_duration_s: float | None = None
    jitter_s: RecentValues = field(default_factory=RecentValues)

    def count_crash(self, exc: BaseException) -> None:
        self.errors += 1

    def as_dict(self) -> dict[str, object]:
        jit = sorted(self.jitter_s)
        return {
            "polls": self.polls,
            "overruns": self.overruns,
            "skipped_late": self.skipped_late,
            "errors": self.errors,
            "last_start": self.last_start,
            "last_duration_ms": None
            if self.last_duration_s is None
            else round(self.last_duration_s * 1e3, 2),
            "jitter_p50_ms": round(jit[len(jit) // 2] * 1e3, 2) if jit else None,
            "jitter_p99_ms": round(jit[min(len(jit) - 1, int(len(jit) * 0.99))] * 1e3, 2)
            if jit
            else None,
        }


@dataclass(slots=True)
class Job:
    key: str
    interval: float
    action: Callable[[], Awaitable[None]]
    offset: float = 0.0
    stats: JobStats = field(default_factory=JobStats)


class _Wake:
    """A wake-up one job sleeps for (the leader); others due shortly after wait on it."""

    __slots__ = ("followers", "when")

    def __init__(self, when: float) -> None:
        self.when = when
        self.followers: list[asyncio.Future[bool]] = []


COALESCE_S = 0.025
"""How far after another job's wake-up a job's due time may fall and still share it."""


class Scheduler:
    """Runs jobs at aligned wall-clock slots. ``clock`` and ``sleep`` are injectable so tests
    can run the scheduler in virtual time. ``coalesce_s``: see the module docstring (0 gives
    every due time its own wake-up)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        coalesce_s: float = COALESCE_S,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._coalesce_s = coalesce_s
        self.jobs: dict[str, Job] = {}
        self.last_progress = time.monotonic()
        self.first_cycle_done = asyncio.Event()
        self._pending_first: set[str] = set()
        self._wakes: list[_Wake] = []  # pending wake-ups, a handful per interval

    def add(self, job: Job) -> None:
        self.jobs[job.key] = job
        self._pending_first.add(job.key)

    async def run(self) -> None:
        """Run every job until cancelled. A crashing job is logged and restarted with backoff."""
        if not self.jobs:
            self.first_cycle_done.set()
        async with asyncio.TaskGroup() as tg:
            for job in self.jobs.values():
                tg.create_task(
                    supervise(
                        f"poll:{job.key}", partial(self._loop, job), on_crash=job.stats.count_crash
                    ),
                    name=f"poll:{job.key}",
                )

    async def _loop(self, job: Job) -> None:
        running: asyncio.Task[None] | None = None
        try:
            # The first poll runs at once (after the job's small stagger) so values and READY do
            # not wait for a slow group's first aligned slot; from then on slots are aligned.
            due = self._clock() + min(job.offset, 0.25)
            window = min(self._coalesce_s, job.interval / 20)
            task_name = f"poll-once:{job.key}"  # formatted once, not every poll
            while True:
                woke_for = await self._wait_until(due, window)
                if woke_for is None:
                    continue  # the wake-up's leader stopped before its time: wait again
                now = self._clock()
                if now - due > job.interval:
                    # The loop itself was held up (suspend, clock step): realign, count it.
                    job.stats.skipped_late += 1
                    due = next_due(now, job.interval, job.offset)
                    continue
                if running is not None and not running.done():
                    job.stats.overruns += 1
                    log.warning(
                        "poll.overrun",
                        job=job.key,
                        interval_s=job.interval,
                        overruns=job.stats.overruns,
                    )
                else:
                    job.stats.jitter_s.append(now - woke_for)
                    running = asyncio.create_task(self._run_once(job, now), name=task_name)
                due = next_due(max(now, due), job.interval, job.offset)
        finally:
            if running is not None and not running.done():
                running.cancel()
                with _suppress_cancel():
                    await running

    async def _wait_until(self, due: float, window: float) -> float | None:
        """Sleep until ``due``, or until a wake-up already set in ``[due - window, due]``;
        returns the time slept for (``due`` itself when it has passed), None when the
        wake-up's leader was stopped before its time."""
        delay = due - self._clock()
        if delay <= 0:
            return due
        for wake in self._wakes:
            if due - window <= wake.when <= due:
                # a future of its own: cancelling this job must not cancel the others' wait
                mine: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                wake.followers.append(mine)
                return wake.when if await mine else None
        wake = _Wake(due)
        self._wakes.append(wake)
        on_time = False
        try:
            await self._sleep(delay)
            on_time = True
        finally:
            self._wakes.remove(wake)
            for follower in wake.followers:
                if not follower.done():
                    follower.set_result(on_time)
        return due

    async def _run_once(self, job: Job, started: float) -> None:
        job.stats.last_start = started
        t0 = time.perf_counter()
        try:
            await job.action()
        except asyncio.CancelledError:
            raise
        except Exception:
            job.stats.errors += 1
            log.exception("poll.error", job=job.key)
        finally:
            job.stats.polls += 1
            job.stats.last_duration_s = time.perf_counter() - t0
            job.stats.last_done = self._clock()
            self.last_progress = time.monotonic()
            if job.key in self._pending_first:
                self._pending_first.discard(job.key)
                if not self._pending_first:
                    self.first_cycle_done.set()

    def summary(self) -> dict[str, object]:
        # The site-wide percentiles come from each job's newest samples, at most
        # SUMMARY_SAMPLES in all: sorting every kept sample (2048 a job, a million at 500
        # devices) made a 40 MB list of floats per `outpost status` that the RSS then kept.
        per_job = max(16, SUMMARY_SAMPLES // max(1, len(self.jobs)))
        jitter = sorted(x for j in self.jobs.values() for x in j.stats.jitter_s.newest(per_job))

        def pct(p: float) -> float | None:
            return (
                round(jitter[min(len(jitter) - 1, int(len(jitter) * p))] * 1e3, 2)
                if jitter
                else None
            )

        return {
            "jobs": len(self.jobs),
            "polls": sum(j.stats.polls for j in self.jobs.values()),
            "overruns": sum(j.stats.overruns for j in self.jobs.values()),
            "skipped_late": sum(j.stats.skipped_late for j in self.jobs.values()),
            "errors": sum(j.stats.errors for j in self.jobs.values()),
            "jitter_p50_ms": pct(0.5),
            "jitter_p99_ms": pct(0.99),
            "jitter_max_ms": round(jitter[-1] * 1e3, 2) if jitter else None,
        }


class _suppress_cancel:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is asyncio.CancelledError
