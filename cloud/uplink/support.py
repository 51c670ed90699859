"""Small pieces the uplink is built from: the retry policy, bandwidth cap, gateway-token file."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from outpost.drivers.base import Backoff


def retry_backoff(minimum: float, maximum: float, *, rng: random.Random | None = None) -> Backoff:
    """The retry policy of the uplink and the command channel: the agent side's one
    :class:`~outpost.drivers.base.Backoff`, with full jitter (a fleet of gateways that lost
    the receiver at the same moment does not reconnect in lockstep when it comes back) and
    ``next_delay(retry_after)`` honouring the server's ``Retry-After``."""
    return Backoff(minimum, maximum, rng=rng or random.Random(), full_jitter=True)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return max(0.0, (when - current).total_seconds())


class TokenBucket:
    """Bytes-per-second cap on what goes on the wire (compressed bytes).

    A body larger than the bucket is allowed through by going into debt; the next send
    waits the debt off. That keeps the long-run average at the cap without ever needing to
    split a batch to fit the bucket.
    """

    def __init__(self, rate: float, *, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else rate)
        self._tokens = self.capacity
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self) -> float:
        """Seconds until the debt is paid off (0 when something may go now)."""
        self._refill()
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self, nbytes: int) -> None:
        # One sleep normally suffices; the re-check covers concurrent senders (heartbeat).
        for _ in range(100):
            wait = self.delay()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        self._tokens -= nbytes


def read_token(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return token or None


def write_token(path: Path, token: str) -> None:
    """Write the gateway token atomically with mode 0600 from the first byte on.

    The temp file is created 0600 (mkstemp) in the same directory, fsynced and renamed over
    the target, so a crash leaves either no token file or a complete one — never a partial
    token that would lock the gateway out (the enrollment token is single-use).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
