"""drivers.base: optional capabilities as typed Protocols; the one reconnect backoff policy."""

from __future__ import annotations

import random

import pytest

from outpost.drivers.base import Backoff, SupportsReadBack, SupportsRelinquish, SupportsWrite
from outpost.drivers.registry import PROTOCOLS, driver_class

EXPECTED = {
    # protocol: (write, read_back, relinquish)
    "modbus": (True, True, False),
    "bacnet": (True, True, True),
    "snmp": (True, True, False),
    "mqtt": (True, False, False),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_capabilities(protocol: str) -> None:
    cls = driver_class(protocol)
    got = (
        issubclass(cls, SupportsWrite),
        issubclass(cls, SupportsReadBack),
        issubclass(cls, SupportsRelinquish),
    )
    assert got == EXPECTED[protocol]


def test_backoff_doubles_caps_holds_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.delay == 0.0
    assert backoff.failed() == 0.5
    assert backoff.hold() == 3.0


def test_backoff_jitter_spreads_the_wait_but_not_the_nominal_delay() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.2, rng=random.Random(7))
    waits = [backoff.failed() for _ in range(4)]
    assert [backoff.delay] == [8.0]
    for wait, nominal in zip(waits, [1.0, 2.0, 4.0, 8.0], strict=True):
        assert 0.8 * nominal <= wait <= 1.2 * nominal
    assert len({round(w / n, 6) for w, n in zip(waits, [1.0, 2.0, 4.0, 8.0], strict=True)}) > 1
