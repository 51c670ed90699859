"""Small pieces the uplink is built from: the backoff policy, bandwidth cap, gateway-token file."""

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


class Backoff:
    """Capped exponential backoff with full jitter.

    Full jitter (a uniform draw in [min, current]) keeps a fleet of gateways that lost the
    receiver at the same moment from reconnecting in lockstep when it comes back.
    """

    def __init__(self, minimum: float, maximum: float, *, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def failures(self) -> int:
        return self._attempt

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self.maximum, self.minimum * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 62)
        delay = self._rng.uniform(self.minimum, ceiling)
        if retry_after is not None:
            # The server knows its load better than our guess; never go below what it asked,
            # but don't let a bogus header park the gateway for a day either.
            delay = max(delay, min(retry_after, max(self.maximum, 300.0)))
        return delay


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
