"""Re-establishing a lost LISTEN connection: the receiver's one retry rule.

Plain loops (reconnect until it works) use stamina's capped exponential backoff with jitter,
0.5 s doubling to 15 s, forever; the caller's task is cancelled when the receiver stops. The
agent side's retry policy (``drivers.base.Backoff``) has the same shape, but the receiver may
not import agent-side code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import stamina

#: What a lost or refused database connection raises.
DB_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)


async def until_connected(connect: Callable[[], Awaitable[None]]) -> None:
    """Call ``connect`` until it returns, waiting longer after each failure."""
    async for attempt in stamina.retry_context(
        on=DB_ERRORS, attempts=None, timeout=None, wait_initial=0.5, wait_max=15.0
    ):
        with attempt:
            await connect()
