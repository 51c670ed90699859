"""MQTT into the buffer through the real agent: messages/s stored and the agent's CPU.

mosquitto (started here on a free port), publishers in other processes pacing JSON messages
at ``--rate`` per second over ``--topics`` topics (every message a new value, so report-by-
exception stores each one), and `outpost run` in its own process with one MQTT device
subscribed to every topic. Figures come from the agent's own counters (/status) and /proc.

    .venv/bin/python bench/mqtt_agent.py [--rate 6000] [--topics 1000] [--duration 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mqtt_broker import Mosquitto  # noqa: E402

from bench.poll_modbus import _cpu_seconds, _rss_mb, _status  # noqa: E402

PUBLISHER = r"""
import sys, time
import paho.mqtt.client as mqtt
port, rate, topics, duration, ident, pubs = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{ident}")
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
# each publisher owns its own topics, and every message carries a new value for its topic
names = [f"bench/rack-{i:04d}/temperature" for i in range(topics) if i % pubs == ident]
topics = len(names)
t0 = time.monotonic()
i = 0
while time.monotonic() - t0 < duration:
    due = t0 + i / rate
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    for _ in range(50):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
        value = 20 + ((i // topics) % 100) / 10
        c.publish(names[i % topics], '{"value": %.2f, "ts": "%s"}' % (value, stamp))
        i += 1
c.loop_stop()
c.disconnect()
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rate", type=float, default=6000.0, help="messages per second, all publishers"
    )
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--publishers", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="outpost-mqtt-bench-") as d:
        tmp = Path(d)
        broker = Mosquitto(tmp)
        broker.start()
        rows = ["point_id,device,address,deadband,heartbeat"]
        rows += [
            f"rack-{i:04d}.temp,racks,bench/rack-{i:04d}/temperature#$.value,0,300"
            for i in range(args.topics)
        ]
        (tmp / "mqtt.csv").write_text("\n".join(rows) + "\n")
        cfg = tmp / "agent.toml"
        cfg.write_text(
            "\n".join(
                [
                    "[agent]",
                    'id = "bench-mqtt"',
                    'data_dir = "var"',
                    "[schedules]",
                    'files = ["mqtt.csv"]',
                    "[logging]",
                    'format = "json"',
                    'level = "warning"',
                    "[devices.racks]",
                    'protocol = "mqtt"',
                    'host = "127.0.0.1"',
                    f"port = {broker.port}",
                    "poll_interval = 60",
                ]
            )
            + "\n"
        )
        log = (tmp / "agent.log").open("wb")
        agent = subprocess.Popen(
            [sys.executable, "-m", "outpost.agent", "run", "-c", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        sock = tmp / "var" / "outpost.sock"
        pubs: list[subprocess.Popen[bytes]] = []
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise SystemExit("agent did not start:\n" + (tmp / "agent.log").read_text())
                time.sleep(0.1)
            time.sleep(2)
            per = args.rate / args.publishers
            pubs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        PUBLISHER,
                        str(broker.port),
                        str(per),
                        str(args.topics),
                        str(args.duration + 4),
                        str(n),
                        str(args.publishers),
                    ]
                )
                for n in range(args.publishers)
            ]
            time.sleep(2)  # warm-up
            s0, c0, t0 = _status(sock), _cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.duration)
            s1, c1, t1 = _status(sock), _cpu_seconds(agent.pid), time.monotonic()
            rss = _rss_mb(agent.pid)
            for p in pubs:
                p.wait(timeout=30)
            time.sleep(1.5)  # last group commit
            final = _status(sock)
        finally:
            for p in pubs:
                if p.poll() is None:
                    p.kill()
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=15)
            broker.stop()

        wall = t1 - t0
        cpu = c1 - c0
        readings = s1["pipeline"]["readings"] - s0["pipeline"]["readings"]
        stored = s1["pipeline"]["stored"] - s0["pipeline"]["stored"]
        print(
            json.dumps(
                {
                    "offered_msgs_per_s": args.rate,
                    "topics": args.topics,
                    "measured_s": round(wall, 1),
                    "ingested_msgs_per_s": round(readings / wall),
                    "stored_in_buffer_per_s": round(stored / wall),
                    "agent_cpu_cores": round(cpu / wall, 3),
                    "msgs_per_agent_cpu_s": round(readings / cpu) if cpu else None,
                    "buffer_rows_at_end": final.get("buffer", {}).get("rows"),
                    "agent_rss_mb": round(rss, 1),
                    "pid": os.getpid(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
