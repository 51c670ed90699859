"""Environment overrides of the agent config (``OUTPOST_<SECTION>__<KEY>``): the rules the
config module implements itself since it no longer uses pydantic-settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from outpost.agent.core.config import ConfigError, load_config

CONFIG = """
[agent]
id = "gw-1"

[buffer]
max_size_mb = 64

[devices.cdu-01]
protocol = "modbus"
host = "127.0.0.1"
port = 1502
"""


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    return path


def test_device_keys_lists_and_sections_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_DEVICES__CDU-01__PORT", "1600")
    monkeypatch.setenv("OUTPOST_DEVICES__CDU-01__HOST", "10.0.0.2")
    monkeypatch.setenv("OUTPOST_SCHEDULES__FILES", '["a.csv", "b.csv"]')
    monkeypatch.setenv("OUTPOST_SCHEDULER", '{"stagger_s": 0}')
    monkeypatch.setenv("outpost_logging__level", "debug")  # names are case-insensitive
    monkeypatch.setenv("OUTPOST_API__BIND", "")  # empty: the status page off
    cfg = load_config(_write(tmp_path), check_files=False)
    dev = cfg.devices["cdu-01"]
    assert dev.port == 1600 and dev.host == "10.0.0.2"  # type: ignore[attr-defined]
    assert cfg.schedules.files == [(tmp_path / "a.csv").resolve(), (tmp_path / "b.csv").resolve()]
    assert cfg.scheduler.stagger_s == 0 and cfg.scheduler.watchdog_stall_s == 30.0
    assert cfg.logging.level == "debug"
    assert cfg.api.bind is None
    assert cfg.buffer.max_size_mb == 64  # the file's value where nothing overrides it


def test_other_outpost_variables_are_not_config_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_CONFIG", str(tmp_path / "elsewhere.toml"))
    monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", "public")
    monkeypatch.setenv("OUTPOST_CONFIG_PATH", "/nowhere.toml")
    path = _write(tmp_path)
    cfg = load_config(path, check_files=False)
    assert cfg.config_path == path.resolve()
    assert cfg.agent.id == "gw-1"


def test_bad_environment_values_name_their_variable_or_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_SCHEDULES__FILES", "a.csv")  # a list must be JSON
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path), check_files=False)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(
        "environment variable OUTPOST_SCHEDULES__FILES: expected JSON"
    )

    monkeypatch.delenv("OUTPOST_SCHEDULES__FILES")
    monkeypatch.setenv("OUTPOST_BUFFER__MAX_SIZE_MB", "lots")
    monkeypatch.setenv("OUTPOST_BUFFER__SPEED", "1")
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path), check_files=False)
    text = str(err.value)
    assert 'key "buffer.max_size_mb"' in text and "'lots'" in text
    assert 'key "buffer.speed": unknown key' in text
