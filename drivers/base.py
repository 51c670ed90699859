"""The one interface every protocol driver implements.

A driver owns the connection to one device (or shares one per host:port), knows its protocol's
address syntax and decoding, and does *work per request, not per point*: the agent hands it
the device's points once (``prepare``), then asks it to read a prepared group as often as the
scheduler says. Results come back columnar, aligned with the group's points, so the hot path
never builds a Python object per reading.

Polled drivers (Modbus, BACnet, SNMP) implement ``read``. Push drivers (MQTT) set
``polled = False`` and implement ``stream``; the agent then never calls ``read``.
"""

from __future__ import annotations

import abc
import random
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from outpost.point_schedules.model import Point
from outpost.point_schedules.quality import Quality


class DeviceConfig(BaseModel):
    """Keys every ``[devices.<id>]`` table has; each driver subclasses it with its own keys."""

    # allow_inf_nan=False: "poll_interval = 1e309" is infinity in TOML and would poll once, ever
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    protocol: str
    poll_interval: float = Field(5.0, gt=0, description="default poll interval in seconds")
    timeout: float = Field(1.0, gt=0, description="seconds to wait for one response")
    retries: int = Field(1, ge=0, description="retries of a failed request within one poll")
    enabled: bool = True


@dataclass(slots=True)
class PollResult:
    """One poll of a prepared group: arrays aligned with ``group.points``.

    ``ts`` is per point because a group may need several requests and each point's timestamp
    is taken when *its* response arrived (epoch seconds, UTC). ``quality`` holds ``Quality``
    codes. ``value`` is the engineering value (scale/offset applied); it is NaN where quality is
    bad and no value was received.
    """

    ts: array  # array('d')
    value: array  # array('d')
    quality: array  # array('B')

    @classmethod
    def empty(cls, n: int) -> PollResult:
        return cls(array("d", bytes(8 * n)), array("d", bytes(8 * n)), array("B", bytes(n)))

    def __len__(self) -> int:
        return len(self.value)


@dataclass(slots=True)
class PointGroup:
    """Points of one device polled together (same interval). ``plan`` is the driver's own."""

    device: str
    points: list[Point]
    interval: float
    plan: Any = None
    index: list[int] = field(default_factory=list)  # the agent's global indices of the points


@dataclass
class DriverContext:
    """Resources shared by the drivers of one runtime, keyed by the driver that made them:
    a Modbus connection per host:port behind a gateway, one BACnet local application per local
    address, one SNMP engine. Passed in explicitly; there is no module-level state."""

    resources: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        for resource in list(self.resources.values()):
            closer = getattr(resource, "aclose", None) or getattr(resource, "close", None)
            if closer is not None:
                result = closer()
                if hasattr(result, "__await__"):
                    await result
        self.resources.clear()


@dataclass(slots=True)
class Backoff:
    """The one retry policy of the agent side: a capped, doubling delay.

    Used by the drivers' reconnects, the daemon's task supervisor, the uplink, the command
    channel and the Sparkplug node (the receiver, which may not import agent-side code, uses
    stamina with the same shape for its LISTEN reconnects).

    ``failed()`` after each failed attempt returns how long to wait before the next one:
    ``minimum``, then twice the previous delay, never more than ``maximum``; ``reset()`` after a
    success. ``jitter`` (a fraction, e.g. 0.2 for ±20 %) spreads the waits of many clients of
    one server (a fleet of gateways and a restarted broker); ``delay`` stays the nominal value.
    Callers either sleep the wait (a session loop, MQTT) or refuse attempts until it has passed
    (a connection used by polls, Modbus: a poll never waits for a device that is down).
    """

    minimum: float
    maximum: float
    jitter: float = 0.0
    delay: float = 0.0  # nominal delay after the last failure; 0 while healthy
    rng: random.Random = field(default_factory=random.Random)
    #: wait a uniform draw in [minimum, delay] instead of delay ± jitter: a fleet of clients
    #: that lost one server at the same moment does not come back in lockstep
    full_jitter: bool = False
    failures: int = 0  # consecutive failures since the last reset

    def failed(self) -> float:
        self.delay = self.minimum if self.delay == 0.0 else min(self.delay * 2, self.maximum)
        self.failures += 1
        return self.wait()

    def next_delay(self, retry_after: float | None = None) -> float:
        """:meth:`failed`, but never shorter than a server's ``Retry-After`` (itself capped at
        max(``maximum``, 300 s), so a bogus header cannot park a client for a day)."""
        wait = self.failed()
        if retry_after is not None:
            wait = max(wait, min(retry_after, max(self.maximum, 300.0)))
        return wait

    def hold(self) -> float:
        """A failure that retrying soon will not fix (e.g. rejected credentials): wait longest."""
        self.delay = self.maximum
        return self.wait()

    def reset(self) -> None:
        self.delay = 0.0
        self.failures = 0

    def wait(self) -> float:
        if self.full_jitter:
            return self.rng.uniform(self.minimum, max(self.minimum, self.delay))
        if not self.jitter:
            return self.delay
        return self.delay * self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


class WriteError(Exception):
    """A write was refused or failed; the message is for the operator."""


@runtime_checkable
class SupportsWrite(Protocol):
    """A driver that can write an engineering value to a point (Modbus, BACnet, SNMP)."""

    async def write(self, point: Point, value: float, priority: int | None = None) -> None: ...


@runtime_checkable
class SupportsReadBack(Protocol):
    """A driver that can read one point's current value outside the poll cycle, so a write can
    be verified at once. Raises ``WriteError`` (or ``OSError``/``TimeoutError``) on failure."""

    async def read_back(self, point: Point) -> float: ...


@runtime_checkable
class SupportsRelinquish(SupportsReadBack, Protocol):
    """BACnet's command release: write null at ``priority`` so the next priority takes over.
    Extends ``SupportsReadBack`` because a relinquish is reported with the value that follows."""

    async def relinquish(self, point: Point, priority: int | None = None) -> None: ...


class Driver(abc.ABC):
    """One device. Methods are called from the agent's event loop only."""

    polled: bool = True

    config_model: type[DeviceConfig] = DeviceConfig

    def __init__(
        self, device_id: str, config: DeviceConfig, context: DriverContext | None = None
    ) -> None:
        self.device_id = device_id
        self.config = config
        self.context = context if context is not None else DriverContext()

    @property
    def connected(self) -> bool:
        """True when the last contact with the device succeeded."""
        return False

    @abc.abstractmethod
    def prepare(self, group: PointGroup) -> None:
        """Plan requests for ``group.points`` and store the plan in ``group.plan``.

        Called once per schedule load, never on the hot path.
        """

    @abc.abstractmethod
    async def read(self, group: PointGroup) -> PollResult:
        """Poll every point of the group once. Never raises for device trouble: a failed request
        yields bad quality for that request's points (``BAD_COMM_FAILURE``, ``BAD_TIMEOUT``,
        ``BAD_DEVICE_ERROR``, ``BAD_CONFIG_ERROR``)."""

    async def write(self, point: Point, value: float, priority: int | None = None) -> None:
        """Write an engineering value (already range-checked by the agent). Raise WriteError."""
        raise WriteError(f"{self.config.protocol} driver does not support writes")

    async def stream(self, sink: Callable[[Sequence[int], PollResult], None]) -> None:
        """Push drivers: run until cancelled, calling ``sink(point_positions, result)`` where
        positions index into the points passed to ``prepare``."""
        raise TypeError(f"{type(self).__name__} is polled; it has no stream()")

    async def close(self) -> None:  # noqa: B027 - a no-op default; drivers with sockets override
        """Release connections. Idempotent."""


def bad_result(n: int, quality: Quality, ts: float) -> PollResult:
    """A whole group failed (e.g. device down): every point gets ``quality`` at ``ts``."""
    result = PollResult(
        array("d", [ts]) * n, array("d", [float("nan")]) * n, array("B", [quality]) * n
    )
    return result
