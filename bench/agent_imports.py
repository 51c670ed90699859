"""The agent's base memory: RSS after each import step, and of a started agent with a tiny schedule.

Part 1 imports, in one fresh interpreter per run, what ``outpost run`` loads, in the order it
loads it, and prints the RSS and module count after each step (cumulative), then which of the
known heavy packages ended up loaded. Part 2 starts the real daemon (``python -m outpost.agent
run``) on one device of ten points (bench/modbus_responder.py, no [cloud] section; ``--bind``
adds the status page) and prints its RSS once the first poll cycle is done and again after
``--settle`` seconds, with its own count of loaded modules.

    .venv/bin/python bench/agent_imports.py                 # both parts, status page off
    .venv/bin/python bench/agent_imports.py --bind          # [api] bind = 127.0.0.1:<free port>
    .venv/bin/python bench/agent_imports.py --modules       # also list every module loaded
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEPS = [
    ("asyncio + ssl", "import asyncio, ssl"),
    ("structlog", "import structlog"),
    ("pydantic", "import pydantic, pydantic.fields, pydantic.main"),
    ("typer + rich (CLI)", "import typer, rich.console, rich.table"),
    ("outpost.agent.core.config", "import outpost.agent.core.config"),
    ("outpost.agent.cli", "import outpost.agent.cli"),
    ("starlette", "import starlette.applications, starlette.routing"),
    ("uvicorn", "import uvicorn"),
    ("outpost.agent.api.app", "import outpost.agent.api.app"),
    ("outpost.agent.core.runtime", "import outpost.agent.core.runtime"),
]
HEAVY = [
    "pydantic_settings",
    "fastapi",
    "starlette",
    "uvicorn",
    "h11",
    "httpx",
    "prometheus_client",
    "rich",
    "pygments",
    "typer",
    "click",
    "email",
    "http.client",
    "zstandard",
    "jinja2",
    "multiprocessing",
    "opentelemetry",
]

_PROBE = """
import sys, json
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
out = [("interpreter", rss(), len(sys.modules))]
for name, stmt in json.loads(sys.argv[1]):
    exec(stmt)
    out.append((name, rss(), len(sys.modules)))
heavy = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
print(json.dumps({"steps": out, "heavy": heavy, "modules": sorted(sys.modules)}))
"""


def import_steps() -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(STEPS), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(r.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def started_agent(bind: bool, settle: float) -> dict:
    from outpost.agent.api.client import AgentClient

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="outpost-imports-") as d:
        tmp = Path(d)
        rows = "\n".join(f"d.p{i},d,hr:{i},uint16," for i in range(10))
        (tmp / "site.csv").write_text(f"point_id,device,address,data_type,units\n{rows}\n")
        api = f'bind = "127.0.0.1:{_free_port()}"' if bind else 'bind = ""'
        (tmp / "agent.toml").write_text(
            f'[agent]\nid = "bench-imports"\ndata_dir = "var"\n'
            f'[schedules]\nfiles = ["site.csv"]\n[api]\n{api}\n'
            f'[devices.d]\nprotocol = "modbus"\nhost = "127.0.0.1"\nport = {port}\n'
            "poll_interval = 1.0\n"
        )
        sim = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "modbus_responder.py"),
                "--devices",
                "1",
                "--registers",
                "10",
                "--base-port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        log = (tmp / "agent.log").open("wb")
        agent = subprocess.Popen(
            [sys.executable, "-m", "outpost.agent", "run", "-c", str(tmp / "agent.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            assert sim.stdout is not None
            if sim.stdout.readline().strip() != "ready":
                raise SystemExit("responder failed to start")
            client = AgentClient(tmp / "var" / "outpost.sock", timeout=10)
            deadline = time.monotonic() + 60
            while True:
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("agent did not start:\n" + (tmp / "agent.log").read_text())
                try:
                    if client.get("/status")["ready"]:
                        break
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
            ready_rss = _rss_mb(agent.pid)
            time.sleep(settle)
            status = client.get("/status")
            return {
                "rss_ready_mb": round(ready_rss, 1),
                "rss_settled_mb": round(_rss_mb(agent.pid), 1),
                "settle_s": settle,
                "points": status["schedule"]["points"],
                "polls": status["devices"]["d"]["polls"],
                "status_page": bind,
            }
        finally:
            agent.terminate()
            sim.terminate()
            agent.wait(10)
            sim.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bind", action="store_true", help="run with the status page on")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after ready")
    ap.add_argument("--modules", action="store_true", help="list every module loaded")
    ap.add_argument("--no-agent", action="store_true", help="only the import steps")
    args = ap.parse_args()

    res = import_steps()
    prev = None
    print(f"{'import step (cumulative)':34s} {'RSS MB':>7s} {'+MB':>6s} {'modules':>8s}")
    for name, rss, n in res["steps"]:
        delta = "" if prev is None else f"{rss - prev:+6.1f}"
        print(f"{name:34s} {rss:7.1f} {delta:>6s} {n:8d}")
        prev = rss
    print("heavy packages loaded:", ", ".join(res["heavy"]) or "none")
    if args.modules:
        print("\n".join(res["modules"]))
    if not args.no_agent:
        print(json.dumps(started_agent(args.bind, args.settle)))


if __name__ == "__main__":
    main()
