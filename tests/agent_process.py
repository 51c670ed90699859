"""Run the real `outpost` agent as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

OUTPOST = [sys.executable, "-m", "outpost.agent"]


def write_config(
    tmp_path: Path,
    devices: Mapping[str, Mapping[str, object]],
    schedule_csv: str,
    *,
    extra: str = "",
    gateway_id: str = "gw-test",
    log_level: str = "info",
) -> Path:
    (tmp_path / "site.csv").write_text(schedule_csv)
    lines = [
        "[agent]",
        f'id = "{gateway_id}"',
        'site = "Test site"',
        'data_dir = "var"',
        "[schedules]",
        'files = ["site.csv"]',
        "[buffer]",
        "commit_interval_s = 0.2",
        "[logging]",
        'format = "json"',
        f'level = "{log_level}"',
    ]
    for name, body in devices.items():
        lines.append(f"[devices.{name}]")
        for key, value in body.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            else:
                lines.append(f"{key} = {value}")
    cfg = tmp_path / "agent.toml"
    cfg.write_text("\n".join(lines) + "\n" + extra)
    return cfg


def cli(
    config: Path, *args: str, timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OUTPOST, *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@dataclass
class AgentProcess:
    config: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    socket: Path = field(init=False)

    def __post_init__(self) -> None:
        self.socket = self.config.parent / "var" / "outpost.sock"

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited early ({self.proc.returncode}):\n{self.log()}")
            if self.socket.exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"agent not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(config: Path, env: Mapping[str, str] | None = None) -> AgentProcess:
    log_path = config.parent / "agent.log"
    out = log_path.open("wb")
    proc = subprocess.Popen(
        [*OUTPOST, "run", "-c", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return AgentProcess(config, proc, log_path)
