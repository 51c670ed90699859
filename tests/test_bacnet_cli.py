"""`outpost discover bacnet|snmp` end to end: the simulated AHU in another process (and a real
snmpd for the SNMP command), the CLI here."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from outpost.agent.cli.discover import discover_app
from outpost.point_schedules.loader import load_schedule
from tests.bacnet_device import free_udp_port
from tests.snmp_peer import COMMUNITY, Snmpd


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI points logging at CliRunner's stderr, which closes after the test."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def sim_ahu() -> Iterator[int]:
    port = free_udp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "outpost.drivers.sim.bacnet_ahu", "--address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"READY 127.0.0.1:{port}"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_discover_bacnet_cli_writes_skeleton(sim_ahu: int, tmp_path: Path) -> None:
    out = tmp_path / "ahu.csv"
    result = CliRunner().invoke(
        discover_app,
        [
            "bacnet",
            "--target",
            f"127.0.0.1:{sim_ahu}",
            "--local",
            f"127.0.0.1:{free_udp_port()}",
            "--timeout",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "I-Am from device 1001" in result.stderr
    assert "[devices.ahu-1]" in result.stderr and "device_instance = 1001" in result.stderr
    assert result.stdout == ""
    text = out.read_text()
    assert text.startswith("# outpost discover bacnet ")
    schedule = load_schedule([out], {"ahu-1": "bacnet"})
    assert "ahu-1.supply-air-temp" in schedule.by_id()
    assert len(schedule.points) == 7


def test_discover_bacnet_cli_to_stdout_and_errors(sim_ahu: int) -> None:
    runner = CliRunner()
    result = runner.invoke(
        discover_app,
        ["bacnet", "-t", f"127.0.0.1:{sim_ahu}", "-l", f"127.0.0.1:{free_udp_port()}"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\nahu-1.") == 7
    # nobody at this port
    result = runner.invoke(
        discover_app,
        [
            "bacnet",
            "-t",
            f"127.0.0.1:{free_udp_port()}",
            "-l",
            f"127.0.0.1:{free_udp_port()}",
            "--timeout",
            "0.3",
        ],
    )
    assert result.exit_code == 1
    assert "no BACnet device answered" in result.stderr
    # a broadcast without a network to broadcast on
    result = runner.invoke(discover_app, ["bacnet", "-l", "0.0.0.0:47999"])
    assert result.exit_code == 2
    assert "needs the network" in result.stderr


def test_discover_snmp_cli_needs_the_community_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTPOST_TEST_NO_SUCH_VAR", raising=False)
    result = CliRunner().invoke(
        discover_app, ["snmp", "127.0.0.1", "--community-env", "OUTPOST_TEST_NO_SUCH_VAR"]
    )
    assert result.exit_code == 2
    assert "OUTPOST_TEST_NO_SUCH_VAR is not set" in result.stderr


def test_discover_snmp_cli_writes_skeleton(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    peer = Snmpd(tmp_path / "snmpd")
    peer.workdir.mkdir()
    peer.start()
    try:
        monkeypatch.setenv("OUTPOST_TEST_COMMUNITY", COMMUNITY)
        out = tmp_path / "pdu.csv"
        result = CliRunner().invoke(
            discover_app,
            [
                "snmp",
                "127.0.0.1",
                "--port",
                str(peer.port),
                "--community-env",
                "OUTPOST_TEST_COMMUNITY",
                "--out",
                str(out),
            ],
        )
    finally:
        peer.stop()
    assert result.exit_code == 0, result.output
    assert COMMUNITY not in result.stderr  # the secret is never echoed
    lines = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    device = lines[1].split(",")[1]
    schedule = load_schedule([out], {device: "snmp"})
    assert len(schedule.points) == len(lines) - 1 > 3
