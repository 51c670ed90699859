"""Real SNMP peers for tests: Debian's net-snmp ``snmpd`` and the pysnmp PDU simulator.

``snmpd`` runs as a child process on a free loopback UDP port with its own config and
persistent directory under the test's tmp_path, so it never touches (or depends on) a system
snmpd. It serves v2c community ``public`` and v3 user ``outpost`` (authPriv SHA/AES).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from outpost.drivers.sim.snmp_pdu import PduModel, serve_snmp_pdu

SNMPD = shutil.which("snmpd") or "/usr/sbin/snmpd"
COMMUNITY = "public"
V3_USER = "outpost"
V3_AUTH_KEY = "outpost-auth-key"
V3_PRIV_KEY = "outpost-priv-key"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Snmpd:
    """A running ``snmpd``; ``stop()``/``start()`` simulate a device going down and back."""

    workdir: Path
    port: int = field(default_factory=free_udp_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "snmpd.log"

    def write_config(self) -> Path:
        persist = self.workdir / "persist"
        persist.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "snmpd.conf"
        conf.write_text(
            f"[snmpd] agentaddress udp:{self.host}:{self.port}\n"
            f"[snmp] persistentDir {persist}\n"
            f"rocommunity {COMMUNITY} 127.0.0.1\n"
            f'createUser {V3_USER} SHA "{V3_AUTH_KEY}" AES "{V3_PRIV_KEY}"\n'
            f"rouser {V3_USER} priv\n"
        )
        return conf

    def start(self) -> None:
        if not os.path.exists(SNMPD):
            raise RuntimeError("snmpd not found: apt-get install snmpd (make test does this)")
        conf = self.write_config()
        self.log_path.write_text("")
        env = dict(os.environ, MIBS="", SNMPCONFPATH=str(self.workdir))
        self.proc = subprocess.Popen(
            [
                SNMPD,
                "-f",
                "-C",
                "-c",
                str(conf),
                "-p",
                str(self.workdir / "snmpd.pid"),
                "-Lf",
                str(self.log_path),
                "-I",
                "-smux",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"snmpd exited: {self.log_path.read_text()}")
            if "NET-SNMP version" in self.log_path.read_text():
                return
            time.sleep(0.02)
        raise RuntimeError(f"snmpd did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[Snmpd]:
    peer = Snmpd(tmp_path / "snmpd")
    peer.workdir.mkdir()
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@dataclass
class PduSim:
    port: int
    model: PduModel
    stop: asyncio.Event
    task: asyncio.Task[None]


async def start_pdu_sim(**kwargs: object) -> PduSim:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[int] = loop.create_future()
    stop = asyncio.Event()
    model = kwargs.pop("model", None) or PduModel()
    task = asyncio.create_task(
        serve_snmp_pdu(port=0, ready=ready, stop=stop, model=model, **kwargs)  # type: ignore[arg-type]
    )
    port = await asyncio.wait_for(ready, 5)
    return PduSim(port, model, stop, task)  # type: ignore[arg-type]


@pytest.fixture
async def pdu_sim() -> AsyncIterator[PduSim]:
    sim = await start_pdu_sim(max_response_varbinds=8)
    try:
        yield sim
    finally:
        sim.stop.set()
        await sim.task
