"""`outpost discover` from the command line (issue 12, discovery fixes): `--help` of each
command renders (no rich markup crash), and `outpost discover snmp HOST:PORT` against the
simulated PDU in its own process writes a skeleton and a config block for the given id."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from outpost.drivers.sim.snmp_pdu import PDU_OID

OUTPOST = [sys.executable, "-m", "outpost.agent"]
COMMUNITY = "public"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OUTPOST, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.mark.parametrize("command", ["bacnet", "snmp"])
def test_discover_help_renders(command: str) -> None:
    r = _run("discover", command, "--help")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    if command == "bacnet":
        assert "HOST[/PREFIX][:PORT]" in r.stdout
    else:
        assert "HOST:PORT" in r.stdout and "--walk" in r.stdout


@pytest.fixture
def pdu_process() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "outpost.drivers.sim.snmp_pdu", "--port", "0", "--outlets", "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the ready line comes once the socket is bound
            seen.append(line)
            match = re.search(r"SNMP PDU on udp:[^:]+:(\d+)", line)
            if match:
                break
        assert match, seen
        # keep reading its log so a full pipe never blocks the simulator
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_discover_snmp_host_port_on_the_simulated_pdu(pdu_process: int) -> None:
    port = pdu_process
    env = {"PDU_COMMUNITY": COMMUNITY}
    r = _run(
        "discover",
        "snmp",
        f"127.0.0.1:{port}",
        "--community-env",
        "PDU_COMMUNITY",
        "--device",
        "pdu-a",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = list(csv.DictReader(line for line in io.StringIO(r.stdout) if not line.startswith("#")))
    assert rows and {row["device"] for row in rows} == {"pdu-a"}
    addresses = {row["address"] for row in rows}
    assert f"{PDU_OID}.1.2.0" in addresses  # the enterprise subtree, not only sysUpTime
    assert len(rows) > 4
    assert "[devices.pdu-a]" in r.stderr and f"port = {port}" in r.stderr
    assert 'community_env = "PDU_COMMUNITY"' in r.stderr


def test_discover_snmp_refuses_bad_targets_in_one_line() -> None:
    env = {"SNMP_COMMUNITY": COMMUNITY}
    r = _run("discover", "snmp", "127.0.0.1:99999", env=env)
    assert r.returncode == 2 and "port" in r.stderr and "Traceback" not in r.stderr
    r = _run("discover", "snmp", "127.0.0.1:1161", "--port", "1162", env=env)
    assert r.returncode == 2 and "two ports" in r.stderr
    r = _run("discover", "snmp", "127.0.0.1", "--device", "Bad Id", env=env)
    assert r.returncode == 2 and "device id" in r.stderr
