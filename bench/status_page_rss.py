"""Footprint of the status page: the agent's RSS with ``[api] bind`` on (page served once, then
idle) against the same agent with ``bind = ''``, on the poll benchmark's simulated site.

    .venv/bin/python bench/status_page_rss.py                   # 10 × 100 points, 1 s
    .venv/bin/python bench/status_page_rss.py --devices 50 --points 200

Each agent runs alone (same site, same simulator) and is asked the same over its Unix socket
(`outpost status`, `outpost events`); the page's agent then serves its page once. RSS is the
median of samples taken every second for ``--duration`` seconds after that. Prints both figures and the difference
(the issue's budget: 5 MB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("poll_modbus", ROOT / "bench" / "poll_modbus.py")
assert _spec is not None and _spec.loader is not None
poll_modbus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(poll_modbus)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_agent(cfg: Path, *, page_url: str | None, warmup: float, duration: float) -> float:
    tmp = cfg.parent
    log = (tmp / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "outpost.agent", "run", "-c", str(cfg)],
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
        time.sleep(warmup)
        # the same technician's use of the Unix socket in both runs (`outpost status` and
        # `outpost events`): what the CLI costs is not the page's
        from outpost.agent.api.client import AgentClient

        client = AgentClient(sock, timeout=30)
        client.get("/status")
        client.get("/events", limit=30)
        if page_url is not None:
            for _ in range(50):  # the listener comes up right after the socket
                try:
                    with urllib.request.urlopen(page_url, timeout=10) as r:
                        assert r.status == 200 and b"Points" in r.read()
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise SystemExit(f"the page at {page_url} did not answer")
        samples = []
        end = time.monotonic() + duration
        while time.monotonic() < end:
            samples.append(poll_modbus._rss_mb(agent.pid))
            time.sleep(1.0)
        return float(statistics.median(samples))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=15)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--base-port", type=int, default=27000)
    ap.add_argument(
        "--no-visit", action="store_true", help="never load the page (the listener alone)"
    )
    args = ap.parse_args()

    sim = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "poll_modbus.py"),
            "--serve",
            "--devices",
            str(args.devices),
            "--points",
            str(args.points),
            "--base-port",
            str(args.base_port),
            "--interval",
            str(args.interval),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sim.stdout is not None
    if sim.stdout.readline().strip() != "ready":
        raise SystemExit("simulator failed to start")
    try:
        figures = {}
        for label in ("without_page", "with_page"):
            with tempfile.TemporaryDirectory(prefix="outpost-rss-") as d:
                tmp = Path(d)
                cfg = poll_modbus._write_site(
                    tmp, args.devices, args.points, args.base_port, args.interval
                )
                page_url = None
                if label == "with_page":
                    port = _free_port()
                    text = cfg.read_text().replace("bind = ''", f'bind = "127.0.0.1:{port}"')
                    cfg.write_text(text)
                    page_url = None if args.no_visit else f"http://127.0.0.1:{port}/"
                figures[label] = _run_agent(
                    cfg, page_url=page_url, warmup=args.warmup, duration=args.duration
                )
    finally:
        sim.kill()
        sim.wait()
    result = {
        "devices": args.devices,
        "points_per_device": args.points,
        "agent_rss_mb_without_page": round(figures["without_page"], 1),
        "agent_rss_mb_with_page_idle": round(figures["with_page"], 1),
        "difference_mb": round(figures["with_page"] - figures["without_page"], 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
