"""Keep a long-running task alive: the one restart rule of the daemon.

A task that raises is logged with its traceback, counted and started again after a backoff:
the drivers' reconnect policy (``drivers.base.Backoff``: 1 s, doubling to 60 s), reset once a
run lasted 60 s. Cancellation passes straight through, so a TaskGroup still stops it. A task
that returns is finished.

Why not ``stamina``: it retries a call until it succeeds, with jitter and a global on/off
switch for tests. A supervisor needs the opposite: no end, a deterministic delay, and the
failure count forgotten once the task has been healthy for a while.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from outpost.drivers.base import Backoff

log = structlog.get_logger(__name__)

HEALTHY_AFTER_S = 60.0  # a run this long forgets earlier crashes


def restart_policy() -> Backoff:
    return Backoff(minimum=1.0, maximum=60.0)


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff | None = None,
    on_crash: Callable[[BaseException], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run ``run()`` until it returns; restart it with backoff whenever it raises.

    ``on_crash`` is called with each exception (e.g. to count it in the task's statistics)
    before the restart delay; the crash is logged as ``task.crashed`` with ``task=name``.
    ``clock`` and ``sleep`` are injectable for tests in virtual time.
    """
    policy = backoff or restart_policy()
    while True:
        started = clock()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if clock() - started >= HEALTHY_AFTER_S:
                policy.reset()
            delay = policy.failed()
            if on_crash is not None:
                on_crash(exc)
            log.exception("task.crashed", task=name, restart_in_s=delay)
        await sleep(delay)
