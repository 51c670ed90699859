"""Agent polling benchmark: N simulated Modbus devices × M points, every value changing.

The devices run in a separate process, values changing every interval so report-by-exception
stores every reading (the worst case): ``--server responder`` (the default) is the minimal
asyncio responder of ``bench/modbus_responder.py``, cheap enough not to compete with the agent
for CPU; ``--server pymodbus`` is pymodbus' simulator (costs more CPU than the agent at these
rates). The agent is the real `outpost run` in its own process; the benchmark samples its CPU
time (/proc) over the window after a warm-up, its RSS every second, and its own counters
(/status over the Unix socket).

    .venv/bin/python bench/poll_modbus.py --kind uint16          # 50 × 200 uint16, 1 s, 60 s
    .venv/bin/python bench/poll_modbus.py --kind uint16 --devices 500
    .venv/bin/python bench/poll_modbus.py --kind uint16 --devices 1500 --cpu 1   # one core
    .venv/bin/python bench/poll_modbus.py --devices 10 --duration 20   # mixed types

Prints: points/s offered, delivered and stored (and stored/offered), agent CPU seconds per
1000 points, points per agent CPU-second, p50/p99 poll-start jitter, agent RSS (end, max and
the first/last sampled second of the window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_INT = 120  # int16/uint16 points per device (one register each)
# the rest are float32 (two registers each, CDAB on every other device)


def _layout(points: int, kind: str = "mixed") -> list[tuple[str, int, str, str]]:
    """(name, register, data_type, byte_order) for one device."""
    if kind == "uint16":
        return [(f"r{i:03d}", i, "uint16", "") for i in range(points)]
    out = []
    reg = 0
    for i in range(points):
        if i < min(N_INT, points * 3 // 5):
            out.append((f"r{i:03d}", reg, "int16" if i % 2 else "uint16", ""))
            reg += 1
        else:
            out.append((f"f{i:03d}", reg, "float32", "ABCD"))
            reg += 2
    return out


async def _serve(devices: int, points: int, base_port: int, interval: float) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType as SimType
    from pymodbus.simulator import SimData, SimDevice

    layout = _layout(points)
    nregs = layout[-1][1] + 2
    servers = []
    for d in range(devices):
        dev = SimDevice(
            id=1,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=SimType.BITS)],
                [SimData(0, values=[False] * 16, datatype=SimType.BITS)],
                [SimData(0, count=nregs, values=0, datatype=SimType.REGISTERS)],
                [SimData(0, count=1, values=0, datatype=SimType.REGISTERS)],
            ),
        )
        srv = ModbusTcpServer([dev], address=("127.0.0.1", base_port + d))
        await srv.serve_forever(background=True)
        servers.append(srv)
    print("ready", flush=True)
    rng = random.Random(1)
    tick = 0
    while True:
        tick += 1
        for srv in servers:
            # every register changes every interval: the agent stores every reading
            regs = [(tick * 7 + i * 13 + rng.randrange(3)) & 0x7FFF for i in range(nregs)]
            await srv.async_setValues(1, 16, 0, regs)
        await asyncio.sleep(interval / 2)


def _write_site(
    tmp: Path,
    devices: int,
    points: int,
    base_port: int,
    interval: float,
    kind: str = "mixed",
    buffer_layout: str | None = None,
    stagger: float | None = None,
) -> Path:
    layout = _layout(points, kind)
    rows = ["point_id,device,address,data_type,byte_order,deadband,heartbeat"]
    cfg = [
        "[agent]",
        'id = "bench-gw"',
        'data_dir = "var"',
        "[schedules]",
        'files = ["bench.csv"]',
        "[api]",
        "bind = ''",
        "[logging]",
        'format = "json"',
        'level = "warning"',
    ]
    if buffer_layout is not None:
        cfg += ["[buffer]", f'layout = "{buffer_layout}"']
    if stagger is not None:
        cfg += ["[scheduler]", f"stagger_s = {stagger}"]
    for d in range(devices):
        dev = f"dev-{d:03d}"
        cfg += [
            f"[devices.{dev}]",
            'protocol = "modbus"',
            'host = "127.0.0.1"',
            f"port = {base_port + d}",
            f"poll_interval = {interval}",
            "timeout = 2.0",
        ]
        for name, reg, dtype, order in layout:
            rows.append(f"{dev}.{name},{dev},hr:{reg},{dtype},{order},0,300")
    (tmp / "bench.csv").write_text("\n".join(rows) + "\n")
    path = tmp / "agent.toml"
    path.write_text("\n".join(cfg) + "\n")
    return path


def responder_command(devices: int, points: int, kind: str, base_port: int) -> list[str]:
    """The command line of ``bench/modbus_responder.py`` serving ``_layout(points, kind)``."""
    registers = _layout(points, kind)[-1][1] + 2
    return [
        sys.executable,
        str(ROOT / "bench" / "modbus_responder.py"),
        "--devices",
        str(devices),
        "--registers",
        str(registers),
        "--base-port",
        str(base_port),
    ]


def _cpu_seconds(pid: int) -> float:
    user, system = _cpu_split(pid)
    return user + system


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) per thread: ``main`` is the event loop, the others (the
    buffer writer, asyncio.to_thread workers) by thread id (Python does not name OS threads)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = "main" if task.name == str(pid) else f"tid-{task.name}"
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _status(socket_path: Path) -> dict:
    from outpost.agent.api.client import AgentClient

    return AgentClient(socket_path, timeout=30).get("/status")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--base-port", type=int, default=26000)
    ap.add_argument(
        "--kind",
        choices=["mixed", "uint16"],
        default="mixed",
        help="uint16: every point one uint16 register; mixed: int16/uint16 and float32",
    )
    ap.add_argument("--server", choices=["responder", "pymodbus"], default="responder")
    ap.add_argument("--buffer-layout", default=None, help="[buffer] layout (default: agent's)")
    ap.add_argument("--stagger", type=float, default=None, help="[scheduler] stagger_s")
    ap.add_argument("--cpu", default=None, help="pin the agent to these CPUs (taskset -c)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.devices, args.points, args.base_port, args.interval))
        return

    with tempfile.TemporaryDirectory(prefix="outpost-bench-") as d:
        tmp = Path(d)
        cfg = _write_site(
            tmp,
            args.devices,
            args.points,
            args.base_port,
            args.interval,
            args.kind,
            args.buffer_layout,
            args.stagger,
        )
        if args.server == "responder":
            sim_cmd = responder_command(args.devices, args.points, args.kind, args.base_port)
        else:
            sim_cmd = [
                sys.executable,
                __file__,
                "--serve",
                "--devices",
                str(args.devices),
                "--points",
                str(args.points),
                "--base-port",
                str(args.base_port),
                "--interval",
                str(args.interval),
            ]
        sim = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, text=True)
        assert sim.stdout is not None
        if sim.stdout.readline().strip() != "ready":
            raise SystemExit("simulator failed to start")
        log = (tmp / "agent.log").open("wb")
        pin = ["taskset", "-c", args.cpu] if args.cpu else []
        agent = subprocess.Popen(
            [*pin, sys.executable, "-m", "outpost.agent", "run", "-c", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        sock = tmp / "var" / "outpost.sock"
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise SystemExit("agent did not start:\n" + (tmp / "agent.log").read_text())
                time.sleep(0.1)
            time.sleep(args.warmup)
            s0, c0, t0 = _status(sock), _cpu_seconds(agent.pid), time.monotonic()
            u0, _ = _cpu_split(agent.pid)
            th0 = _thread_cpu(agent.pid)
            rss_samples = []
            while time.monotonic() < t0 + args.duration:
                rss_samples.append(_rss_mb(agent.pid))
                time.sleep(max(0.0, min(1.0, t0 + args.duration - time.monotonic())))
            s1, c1, t1 = _status(sock), _cpu_seconds(agent.pid), time.monotonic()
            u1, _ = _cpu_split(agent.pid)
            th1 = _thread_cpu(agent.pid)
            rss = _rss_mb(agent.pid)
            rss_samples.append(rss)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=15)
            sim.kill()
            sim.wait()

        wall = t1 - t0
        cpu = c1 - c0
        readings = s1["pipeline"]["readings"] - s0["pipeline"]["readings"]
        stored = s1["pipeline"]["stored"] - s0["pipeline"]["stored"]
        sched = s1["scheduler"]
        offered = args.devices * args.points / args.interval
        result = {
            "devices": args.devices,
            "points_per_device": args.points,
            "kind": args.kind,
            "server": args.server,
            "interval_s": args.interval,
            "stagger_s": args.stagger,
            "measured_s": round(wall, 1),
            "offered_per_s": round(offered),
            "points_per_s": round(readings / wall),
            "stored_per_s": round(stored / wall),
            "stored_of_offered": round(stored / wall / offered, 4),
            "agent_cpu_cores": round(cpu / wall, 3),
            "agent_cpu_user_share": round((u1 - u0) / cpu, 2) if cpu else None,
            "agent_cpu_cores_by_thread": {
                name: round((th1[name] - th0.get(name, 0.0)) / wall, 4)
                for name in sorted(th1)
                if th1[name] - th0.get(name, 0.0) > 0
            },
            "agent_cpu_s_per_1000_points": round(cpu / readings * 1000, 5) if readings else None,
            "points_per_agent_cpu_s": round(readings / cpu) if cpu else None,
            "jitter_p50_ms": sched["jitter_p50_ms"],
            "jitter_p99_ms": sched["jitter_p99_ms"],
            "overruns": sched["overruns"],
            "agent_rss_mb": round(rss, 1),
            "agent_rss_max_mb": round(max(rss_samples), 1),
            "agent_rss_first_last_mb": [round(rss_samples[0], 1), round(rss_samples[-1], 1)],
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
