"""Agent configuration: TOML + environment, every problem named by key, paths resolved."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.agent.core.config import ConfigError, load_config
from tests.agent_process import cli

GOOD = """
[agent]
id = "gw-1"
site = "Test"
data_dir = "state"

[schedules]
files = ["site.csv"]

[buffer]
max_size_mb = 64

[devices.cdu-01]
protocol = "modbus"
host = "127.0.0.1"
port = 1502
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "site.csv").write_text(
        "point_id,device,address,data_type\ncdu-01.t,cdu-01,hr:0,int16\n"
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    return cfg


def test_good_config_resolves_paths_relative_to_file_and_data_dir(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.agent.id == "gw-1"
    assert cfg.agent.data_dir == (tmp_path / "state").resolve()
    assert cfg.buffer.path == (tmp_path / "state" / "buffer.db").resolve()
    assert cfg.api.socket == (tmp_path / "state" / "outpost.sock").resolve()
    assert cfg.schedules.files == [(tmp_path / "site.csv").resolve()]
    dev = cfg.devices["cdu-01"]
    assert dev.protocol == "modbus" and dev.port == 1502  # type: ignore[attr-defined]
    assert dev.max_registers_per_request == 125 and dev.max_gap == 16  # type: ignore[attr-defined]
    assert cfg.device_protocols() == {"cdu-01": "modbus"}
    assert cfg.cloud is None  # edge-only


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPOST_BUFFER__MAX_SIZE_MB", "12")
    monkeypatch.setenv("OUTPOST_AGENT__SITE", "From env")
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.buffer.max_size_mb == 12
    assert cfg.agent.site == "From env"
    assert cfg.agent.id == "gw-1"  # untouched keys keep the file's value


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    bad = GOOD.replace('id = "gw-1"', 'id = "GW 1"').replace(
        "max_size_mb = 64", "max_size_mb = -1\nfoo = 1"
    )
    bad += (
        '\n[devices.ups-01]\nprotocol = "modbus"\nport = 502\n'
        '[devices.ups-02]\nprotocol = "modbus"\nhost = "10.0.0.2"\nport = "x"\n'
        '[devices.x-1]\nprotocol = "canbus"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, bad))
    text = str(err.value)
    assert 'key "agent.id"' in text
    assert 'key "buffer.max_size_mb"' in text and "greater than 0" in text
    assert 'key "buffer.foo": unknown key' in text
    # a Modbus TCP device without host (the model checks transport keys together)
    assert 'key "devices.ups-01": Value error, transport = "tcp" needs host' in text
    assert 'key "devices.ups-02.port"' in text
    assert 'key "devices.x-1.protocol": unknown protocol' in text
    assert len(err.value.problems) >= 6


def test_unknown_device_key_and_missing_schedule_file(tmp_path: Path) -> None:
    bad = GOOD.replace("port = 1502", "port = 1502\nspeed = 9600").replace(
        '"site.csv"', '"nope.csv"'
    )
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, bad))
    text = str(err.value)
    assert 'key "devices.cdu-01.speed": unknown key' in text
    assert 'key "schedules.files[0]": file not found' in text


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "[agent\nid='x'\n"))
    assert "TOML syntax" in str(err.value) and "line 1" in str(err.value)


def test_missing_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.toml")
    assert err.value.problems == ["config file not found (use -c FILE or OUTPOST_CONFIG)"]


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "agent.example.toml")
    assert cfg.agent.id == "site-01-gw-1"
    assert set(cfg.devices) >= {"cdu-01", "ups-01", "pdu-01"}


def test_cloud_section_from_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[cloud]` absent in the file, given entirely by environment (as `outpost demo` does)."""
    monkeypatch.setenv("OUTPOST_CLOUD__URL", "http://127.0.0.1:8720")
    monkeypatch.setenv("OUTPOST_CLOUD__ENROLLMENT_TOKEN", "tok")
    monkeypatch.setenv("OUTPOST_MODES__DEGRADED_UPLINK_AFTER_S", "60")
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.cloud is not None and str(cfg.cloud.url).startswith("http://127.0.0.1:8720")
    assert cfg.modes.degraded_uplink_after_s == 60


def test_bad_cloud_key_from_environment_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTPOST_CLOUD__URL", "http://127.0.0.1:8720")
    monkeypatch.setenv("OUTPOST_CLOUD__BATCH_SIZE", "-3")
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, GOOD))
    assert 'key "cloud.batch_size"' in str(err.value)


BAD_EDGES: dict[str, tuple[str, str | tuple[str, ...]]] = {
    "infinite poll interval": (
        GOOD.replace("port = 1502", "port = 1502\npoll_interval = 1e309"),
        ('key "devices.cdu-01.poll_interval": ', "finite number (got inf)"),
    ),
    "nan in a section of another package": (
        GOOD + "\n[alarms]\nshelve_max_s = nan\n",
        'key "alarms.shelve_max_s": ',
    ),
    "deeply nested TOML": (
        GOOD + "\n[alarms]\nfoo = " + "[" * 2000 + "]" * 2000 + "\n",
        "nested deeper than 32 levels",
    ),
    "nested deep but parseable": (
        GOOD + "\n[alarms]\nfoo = " + "[" * 40 + "]" * 40 + "\n",
        'key "alarms.foo' + "[0]" * 31 + '": nested deeper than 32 levels',
    ),
    "data_dir is a file": (
        GOOD.replace('data_dir = "state"', 'data_dir = "site.csv"'),
        'key "agent.data_dir": not a directory: ',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_EDGES))
def test_hostile_values_are_one_line_errors_from_check_and_run(tmp_path: Path, case: str) -> None:
    text, expected = BAD_EDGES[case]
    parts = (expected,) if isinstance(expected, str) else expected
    cfg = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert any(all(x in p for x in parts) for p in err.value.problems), err.value.problems
    for command in (["config", "check"], ["run"]):
        r = cli(cfg, *command, timeout=60)
        assert r.returncode == 2, (command, r.stderr)
        assert "Traceback" not in r.stderr, (command, r.stderr)
        assert any(all(x in line for x in parts) for line in r.stderr.splitlines()), r.stderr
        assert all(line.startswith(f"{cfg}: ") for line in r.stderr.splitlines()), r.stderr


# ------------------------------------------------------------------------------ fuzz

_SECTIONS = {
    "agent": ["id", "site", "data_dir"],
    "schedules": ["files"],
    "buffer": ["path", "max_size_mb", "retention_days", "commit_interval_s", "commit_rows"],
    "api": ["socket", "bind", "token_env"],
    "scheduler": ["stagger_s", "watchdog_stall_s"],
    "logging": ["level", "format"],
    "alarms": ["shelve_max_s", "flood_threshold", "stale_alarms", "state_file"],
    "modes": ["degraded_uplink_after_s", "state_file", "maintenance", "custom"],
    "cloud": ["url", "batch_size", "ca_file", "enrollment_token"],
    "devices.cdu-01": ["protocol", "host", "port", "poll_interval", "timeout", "unit_id"],
}
_scalars = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(max_size=30)
    | st.sampled_from(["modbus", "bacnet", "info", "json", "127.0.0.1:1", "site.csv", ""])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def _configs(draw: st.DrawFn) -> str:
    lines = ['[agent]\nid = "gw-1"\ndata_dir = "state"', '[schedules]\nfiles = ["site.csv"]']
    lines.append('[devices.cdu-01]\nprotocol = "modbus"\nhost = "127.0.0.1"')
    for section in draw(st.lists(st.sampled_from(sorted(_SECTIONS)), max_size=4, unique=True)):
        keys = draw(st.lists(st.sampled_from(_SECTIONS[section]), max_size=3, unique=True))
        body = "\n".join(f"{k} = {_toml_value(draw(_values))}" for k in keys)
        lines.append(f"[{section}]\n{body}" if section not in ("agent", "schedules") else body)
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_configs())
def test_fuzzed_configs_load_or_name_their_problems(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _write(Path(tmp), text)
        try:
            load_config(cfg)
        except ConfigError as exc:
            assert exc.problems, text
            for problem in exc.problems:
                assert "\n" not in problem and problem.strip(), (text, problem)
                assert problem.startswith(('key "', "TOML syntax")), (text, problem)
