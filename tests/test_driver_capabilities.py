"""Optional driver capabilities are typed Protocols; the agent checks them with isinstance."""

from __future__ import annotations

import pytest
from outpost.drivers.base import SupportsReadBack, SupportsRelinquish, SupportsWrite
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
