"""`outpost schedule validate|diff|template` through typer's CliRunner, with real TOML agent
configs and real CSV files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outpost.agent.cli.schedule import schedule_app
from outpost.point_schedules.template import template

HEADER = "point_id,device,address,data_type,writable,alarm_h"

CONFIG = """\
[agent]
id = "site-01-gw-1"
data_dir = "./var"

[schedules]
files = ["sched/site.csv"]

[devices.cdu-01]
protocol = "modbus"
host = "127.0.0.1"
port = 15020

[devices.ups-1]
protocol = "modbus"
host = "127.0.0.1"
port = 15021
"""

SITE = (
    f"{HEADER}\n"
    "cdu-01.supply_temp,cdu-01,hr:0,int16,,40\n"
    "cdu-01.setpoint,cdu-01,hr:1,int16,true,\n"
    "cdu-01.pump,cdu-01,coil:0,,true,\n"
    "ups-1.load,ups-1,ir:0,uint16,,90\n"
)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder: agent.toml plus the schedule it names. Returns the config path."""
    monkeypatch.delenv("OUTPOST_CONFIG", raising=False)
    (tmp_path / "sched").mkdir()
    (tmp_path / "sched" / "site.csv").write_text(SITE)
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG)
    return config


def run(*args: str | Path, env: dict[str, str] | None = None):
    runner = CliRunner()
    return runner.invoke(schedule_app, [str(a) for a in args], env=env)


# ------------------------------------------------------------------------------------ validate


def test_validate_valid_file_prints_device_summary_and_version(site: Path) -> None:
    result = run("validate", site.parent / "sched" / "site.csv", "-c", site)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "cdu-01 (modbus): 3 points, 2 writable, 1 with alarms"
    assert lines[1] == "ups-1 (modbus): 1 points, 0 writable, 1 with alarms"
    assert lines[2].startswith("valid: 4 points in 1 file, version sha256:")
    assert result.stderr == ""


def test_validate_defaults_to_the_config_schedule_files(site: Path) -> None:
    result = run("validate", "--config", site)
    assert result.exit_code == 0, result.output
    assert "valid: 4 points in 1 file" in result.stdout


def test_validate_uses_outpost_config_from_the_environment(site: Path) -> None:
    result = run("validate", env={"OUTPOST_CONFIG": str(site)})
    assert result.exit_code == 0, result.output
    assert "cdu-01 (modbus): 3 points" in result.stdout


def test_validate_mentions_devices_without_points(site: Path, tmp_path: Path) -> None:
    only_cdu = tmp_path / "cdu.csv"
    only_cdu.write_text(f"{HEADER}\ncdu-01.a,cdu-01,hr:5,float32,,\n")
    result = run("validate", only_cdu, "-c", site)
    assert result.exit_code == 0, result.output
    assert "configured devices without points: ups-1" in result.stdout


def test_validate_invalid_prints_every_error_on_stderr(site: Path, tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    a.write_text(
        f"{HEADER}\n"
        "cdu-01.a,cdu-01,hr:70000,int16,,\n"
        "cdu-01.b,cdu-9,hr:1,int16,,\n"
        "cdu-01.c,cdu-01,hr:2,int16,perhaps,\n"
    )
    b = tmp_path / "b.csv"
    b.write_text(f"{HEADER}\ncdu-01.a,cdu-01,hr:3,int16,,x\n")
    result = run("validate", a, b, "-c", site)
    assert result.exit_code == 1
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert errors[0] == (
        f'{a}:2: column "address": modbus address "hr:70000": address 70000 out of range 0..65535'
    )
    assert errors[1].startswith(f'{a}:3: column "device": unknown device "cdu-9"')
    assert errors[2].startswith(f'{a}:4: column "writable": expected true or false')
    assert errors[3] == (
        f'{b}:2: column "point_id": duplicate point_id "cdu-01.a": first defined at {a}:2'
    )
    assert errors[4] == f'{b}:2: column "alarm_h": expected a number, got "x"'
    assert errors[5] == "schedule invalid: 5 problems in 2 files"
    assert len(errors) == 6


def test_validate_json(site: Path, tmp_path: Path) -> None:
    result = run("validate", "-c", site, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["valid"] is True and doc["points"] == 4
    assert doc["version"].startswith("sha256:")
    assert doc["devices"][0] == {
        "device": "cdu-01",
        "protocol": "modbus",
        "points": 3,
        "writable": 2,
        "with_alarms": 1,
    }
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{HEADER}\nX,cdu-01,hr:1,int16,,\n")
    result = run("validate", bad, "-c", site, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["valid"] is False and doc["version"] is None
    assert doc["issues"] == [
        {
            "file": str(bad),
            "line": 2,
            "column": "point_id",
            "message": doc["issues"][0]["message"],
        }
    ]
    assert "is not a valid point id" in doc["issues"][0]["message"]


def test_validate_missing_file(site: Path, tmp_path: Path) -> None:
    result = run("validate", tmp_path / "nope.csv", "-c", site)
    assert result.exit_code == 1
    assert f"{tmp_path / 'nope.csv'}: cannot read file" in result.stderr


def test_validate_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nid = "Bad Id"\n')
    result = run("validate", "-c", config)
    assert result.exit_code == 2
    assert 'key "agent.id"' in result.stderr


def test_validate_no_files_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTPOST_CONFIG", raising=False)
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nid = "gw"\n')
    result = run("validate", "-c", config)
    assert result.exit_code == 2
    assert "no schedule files given" in result.stderr


# ---------------------------------------------------------------------------------------- diff


def test_diff_against_the_configured_schedule(site: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.csv"
    new.write_text(
        f"{HEADER}\n"
        "cdu-01.supply_temp,cdu-01,hr:0,int16,,42\n"
        "cdu-01.setpoint,cdu-01,hr:1,int16,true,\n"
        "cdu-01.pump,cdu-01,coil:0,,true,\n"
        "ups-1.battery,ups-1,ir:4,uint16,,\n"
    )
    result = run("diff", new, "-c", site)
    assert result.exit_code == 1, result.output  # like diff(1): 1 = there are differences
    out = result.stdout.splitlines()
    assert out[0].startswith("schedule sha256:") and " -> sha256:" in out[0]
    assert f"+ ups-1.battery  (ups-1 ir:4 uint16)  [{new}:5]" in out
    assert any(line.startswith("- ups-1.load  (ups-1 ir:0 uint16)") for line in out)
    assert f"~ cdu-01.supply_temp  [{new}:2]" in out
    assert "    alarm_h: 40 -> 42" in out
    assert out[-1] == "1 added, 1 removed, 1 changed, 2 unchanged"


def test_diff_no_changes_exits_0(site: Path) -> None:
    result = run("diff", site.parent / "sched" / "site.csv", "-c", site)
    assert result.exit_code == 0, result.output
    assert "no point changes" in result.stdout


def test_diff_against_explicit_old_files(site: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text(f"{HEADER}\ncdu-01.a,cdu-01,hr:1,int16,,\n")
    new = tmp_path / "new.csv"
    new.write_text(f"{HEADER}\ncdu-01.a,cdu-01,hr:1,int32,,\n")
    result = run("diff", new, "--against", old, "-c", site, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["added"] == [] and doc["removed"] == []
    assert doc["changed"] == [
        {"point_id": "cdu-01.a", "changes": {"data_type": {"old": "int16", "new": "int32"}}}
    ]


def test_diff_with_an_invalid_side_exits_2(site: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.csv"
    new.write_text(f"{HEADER}\ncdu-01.a,cdu-01,hr:1,int99,,\n")
    result = run("diff", new, "-c", site)
    assert result.exit_code == 2
    assert "the new schedule is invalid:" in result.stderr
    assert f'{new}:2: column "data_type": unknown data_type "int99"' in result.stderr
    assert result.stdout == ""


# ------------------------------------------------------------------------------------ template


def test_template_prints_a_schedule_that_validates(site: Path, tmp_path: Path) -> None:
    result = run("template", "--protocol", "modbus", "--device", "ups-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == template("modbus", "ups-1")
    path = tmp_path / "t.csv"
    path.write_text(result.stdout)
    checked = run("validate", path, "-c", site)
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith("ups-1 (modbus): 7 points")


def test_template_default_is_modbus_and_other_protocols_work() -> None:
    assert run("template").stdout == template("modbus")
    for protocol in ("bacnet", "snmp", "mqtt"):
        result = run("template", "-p", protocol)
        assert result.exit_code == 0
        assert result.stdout == template(protocol)


def test_template_rejects_unknown_protocol_and_bad_device() -> None:
    result = run("template", "-p", "knx")
    assert result.exit_code == 2
    assert "unknown protocol" in result.output
    result = run("template", "-d", "Bad Device")
    assert result.exit_code == 2
    assert "device id" in result.output
