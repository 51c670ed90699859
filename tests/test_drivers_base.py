"""drivers.base: optional capabilities as typed Protocols; the one reconnect backoff policy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from outpost.agent.core.config import ConfigError, load_config
from outpost.drivers.base import Backoff, SupportsReadBack, SupportsRelinquish, SupportsWrite
from outpost.drivers.registry import PROTOCOLS, config_model, driver_class

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


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("text", ["1e309", "inf", "nan"])
def test_infinite_or_nan_numbers_are_refused_in_device_config(
    protocol: str, text: str, tmp_path: Path
) -> None:
    """Issue 13 item 8: ``gt=0`` admits infinity; a device polled every ∞ s polls once. The
    models refuse it themselves (drivers are also built outside the agent's config loader:
    ad hoc reads, simulators), and the loader names the key."""
    required = {
        "modbus": {"host": "h"},
        "bacnet": {"address": "10.0.0.2", "device_instance": 1},
        "snmp": {"host": "h", "community_env": "X"},
        "mqtt": {"host": "h"},
    }[protocol]
    for key in ("poll_interval", "timeout"):
        with pytest.raises(ValidationError, match="finite number"):
            config_model(protocol).model_validate(
                {"protocol": protocol, **required, key: float(text)}
            )
        lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in required.items())
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "gw"\n\n[devices.d]\nprotocol = "{protocol}"\n{lines}\n'
            f"{key} = {text}\n",
            "utf-8",
        )
        with pytest.raises(ConfigError) as caught:
            load_config(config, check_files=False)
        assert f"devices.d.{key}" in str(caught.value)
