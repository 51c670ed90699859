"""Keep a long-running task alive: the one restart policy of the daemon.

A task that raises is logged with its traceback, counted and started again after a backoff
(1 s, doubling to 60 s; back to 1 s once a run lasted 60 s). Cancellation passes straight
through, so a TaskGroup still stops it. A task that returns is finished.

Why not ``stamina``: it retries a call until it succeeds, with jitter and a global on/off
switch for tests. A supervisor needs the opposite: no end, a deterministic delay, and the
failure count forgotten once the task has been healthy for a while. Twenty lines say that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    healthy_after_s: float = 60.0  # a run this long resets the delay to ``initial_s``

    def next(self, delay: float) -> float:
        return min(delay * self.factor, self.max_s)


DEFAULT_BACKOFF = Backoff()


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    on_crash: Callable[[BaseException], None] | None = None,
) -> None:
    """Run ``run()`` until it returns; restart it with backoff whenever it raises.

    ``on_crash`` is called with each exception (e.g. to count it in the task's statistics)
    before the restart delay; the crash is logged as ``task.crashed`` with ``task=name``.
    """
    delay = backoff.initial_s
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if time.monotonic() - started >= backoff.healthy_after_s:
                delay = backoff.initial_s
            if on_crash is not None:
                on_crash(exc)
            log.exception("task.crashed", task=name, restart_in_s=delay)
        await asyncio.sleep(delay)
        delay = backoff.next(delay)
