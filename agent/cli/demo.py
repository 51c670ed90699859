"""`outpost demo`: the simulated site, the receiver and the agent, wired together.

Each part runs as its own process, exactly as on a real deployment (the simulator stands in
for the plant, the receiver for the central server). Ctrl-C stops them in reverse order.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import typer

from outpost.agent.api.client import AgentAccessDenied, AgentClient, AgentNotRunning, ApiError
from outpost.agent.cli.common import ConfigOption, config_or_exit, fail
from outpost.agent.core.config import AgentConfig

RECEIVER_BIND = "127.0.0.1:8720"


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


def _outpost(*args: str) -> list[str]:
    return [sys.executable, "-m", "outpost.agent", *args]


def _wait_tcp(host: str, port: int, timeout: float, child: _Child) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            fail(f"{child.name} exited ({child.proc.returncode}); see {child.log}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    fail(f"{child.name} did not open {host}:{port} within {timeout:.0f}s; see {child.log}")


def _start(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> _Child:
    log = log_dir / f"{name}.log"
    out = log.open("ab")
    proc = subprocess.Popen(
        args,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    return _Child(name, proc, log)


def _stop(children: list[_Child]) -> None:
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in reversed(children):
        try:
            child.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def demo(
    config: ConfigOption = None,
    no_cloud: Annotated[
        bool, typer.Option("--no-cloud", help="Edge-only: do not start the receiver.")
    ] = False,
) -> None:
    """Start the simulated site, the receiver and the agent; print where to look."""
    cfg_path = config or Path("agent.example.toml")
    cfg = config_or_exit(cfg_path)
    data_dir = cfg.agent.data_dir
    log_dir = data_dir / "demo-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    lock = _single_demo(log_dir, cfg)  # held (open) until this process exits
    children: list[_Child] = []
    env: dict[str, str] = {}

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C: children stop too

    signal.signal(signal.SIGTERM, on_term)
    try:
        broker = _start_broker(cfg, log_dir)
        if broker is not None:
            children.append(broker)
        sim = _start("sim", _outpost("sim"), log_dir)
        children.append(sim)
        for dev in cfg.devices.values():
            if dev.protocol == "modbus":
                _wait_tcp(dev.host, dev.port, 30, sim)  # type: ignore[attr-defined]

        receiver_url = None
        admin_password = None
        if not no_cloud:
            receiver_url, token = _start_receiver(children, data_dir, log_dir, cfg.agent.id)
            admin_password = _demo_admin(data_dir / "receiver")
            env = {
                "OUTPOST_CLOUD__URL": receiver_url,
                "OUTPOST_CLOUD__ENROLLMENT_TOKEN": token,
            }
        # The simulated PDU answers community "public"; a real site sets its own.
        env.setdefault("PDU_COMMUNITY", os.environ.get("PDU_COMMUNITY", "public"))
        agent = _start("agent", _outpost("run", "-c", str(cfg.config_path)), log_dir, env)
        children.append(agent)
        deadline = time.monotonic() + 30
        while not cfg.api.socket.exists():
            if agent.proc.poll() is not None or time.monotonic() > deadline:
                fail(f"agent did not start; see {agent.log}")
            time.sleep(0.2)

        c = f"-c {cfg.config_path}"
        devices = ", ".join(f"{d} ({v.protocol})" for d, v in cfg.devices.items())
        lines = [
            "",
            "Outpost demo is running.",
            f"  simulated site : {devices}  (log {sim.log})",
            f"  MQTT broker    : mosquitto on 127.0.0.1:1883  (log {broker.log})"
            if broker
            else "  MQTT broker    : none started (install mosquitto, or one already listens on 1883)",
            f"  agent          : gateway {cfg.agent.id}, data in {data_dir}  (log {agent.log})",
        ]
        if cfg.api.bind:
            lines.append(
                f"  status page    : http://{cfg.api.bind}/  (the site's own page; no login on "
                "127.0.0.1)"
            )
        if receiver_url:
            lines += [
                f"  dashboard      : {receiver_url}/  log in as {DEMO_ADMIN} / {admin_password}",
                f"  receiver API   : {receiver_url}/docs  (admin token in "
                f"{data_dir / 'receiver' / 'admin.token'})",
            ]
        lines += [
            "",
            "Look at it from another terminal:",
            f"  .venv/bin/outpost status {c}",
            f"  .venv/bin/outpost points {c}",
            f"  .venv/bin/outpost read cdu-01.supply_temp {c}",
            f"  .venv/bin/outpost buffer stats {c}",
            "",
            "Raise an alarm on the simulated site and handle it:",
            "  .venv/bin/outpost sim set cdu-01.supply_temp 35        # force the CDU supply temperature",
            f"  .venv/bin/outpost alarms {c}                            # cdu-01.supply_temp:hi unack_active",
            f"  .venv/bin/outpost ack cdu-01.supply_temp:hi --note 'on it' {c}",
            f"  .venv/bin/outpost shelve cdu-01.supply_temp:hi --for 30m {c}",
            f"  .venv/bin/outpost mode set maintenance --for 2h --reason 'CDU filter change' {c}",
            "  .venv/bin/outpost sim release cdu-01.supply_temp       # back to the physics",
            f"  .venv/bin/outpost events {c}",
            "",
            "Press Ctrl-C to stop everything.",
        ]
        typer.echo("\n".join(lines))
        while all(ch.proc.poll() is None for ch in children):
            time.sleep(0.5)
        dead = [ch for ch in children if ch.proc.poll() is not None]
        fail(f"{dead[0].name} stopped unexpectedly; see {dead[0].log}")
    except KeyboardInterrupt:
        typer.echo("\nstopping…")
    finally:
        _stop(children)
        lock.close()


def _single_demo(log_dir: Path, cfg: AgentConfig) -> IO[str]:
    """One demo per data dir: a second one says so in one line before it starts or
    overwrites anything. The lock is an flock on demo-logs/demo.lock (released by the kernel
    when the demo's process ends, even killed), so a stale file never blocks."""
    handle = (log_dir / "demo.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        fail(f"a demo is already running (pid {pid}, logs in {log_dir}); stop it first")
    if _agent_answers(cfg.api.socket):
        handle.close()
        fail(f"an agent is already running on {cfg.api.socket}; stop it before `outpost demo`")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _agent_answers(socket_path: Path) -> bool:
    try:
        AgentClient(socket_path, timeout=2.0).get("/status")
    except AgentNotRunning:
        return False
    except (AgentAccessDenied, ApiError):
        return True  # something that is an agent holds the socket
    return True


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _start_broker(cfg: AgentConfig, log_dir: Path) -> _Child | None:
    """mosquitto for the MQTT rack sensors, when installed and the port is free."""
    from outpost.drivers.mqtt import MqttDeviceConfig

    mqtt = [d for d in cfg.devices.values() if isinstance(d, MqttDeviceConfig)]
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not mqtt or exe is None:
        return None
    host, port = mqtt[0].host, mqtt[0].port
    if not _port_free(host, port):
        return None  # a broker is already there: use it
    conf = log_dir / "mosquitto.conf"
    conf.write_text(f"listener {port} {host}\nallow_anonymous true\npersistence false\n")
    broker = _start("mosquitto", [exe, "-c", str(conf)], log_dir)
    _wait_tcp(host, port, 15, broker)
    return broker


def _start_receiver(
    children: list[_Child], data_dir: Path, log_dir: Path, gateway_id: str
) -> tuple[str, str]:
    rdir = data_dir / "receiver"
    host, port = RECEIVER_BIND.rsplit(":", 1)
    receiver = _start(
        "receiver",
        _outpost("cloud", "serve", "--data-dir", str(rdir), "--bind", RECEIVER_BIND),
        log_dir,
    )
    children.append(receiver)
    _wait_tcp(host, int(port), 120, receiver)
    token_file = data_dir / "gateway.token"
    if token_file.exists():
        token = ""  # already enrolled in an earlier demo run
    else:
        r = subprocess.run(
            _outpost("cloud", "enroll", gateway_id, "--data-dir", str(rdir)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            fail(f"enrollment failed: {r.stderr.strip()}")
        token = r.stdout.strip()
    return f"http://{RECEIVER_BIND}", token


DEMO_ADMIN = "admin"


def _demo_admin(receiver_dir: Path) -> str:
    """The dashboard's demo admin: created on the first run with a generated password, kept
    (0600) beside the receiver's data so later runs print the same login."""
    pw_file = receiver_dir / "demo-admin.password"
    if pw_file.exists():
        return pw_file.read_text().strip()
    password = secrets.token_urlsafe(12)
    r = subprocess.run(
        _outpost(
            "cloud",
            "user",
            "add",
            DEMO_ADMIN,
            "--role",
            "admin",
            "--password-stdin",
            "--data-dir",
            str(receiver_dir),
        ),
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        fail(f"creating the dashboard's demo admin failed: {r.stderr.strip()}")
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
