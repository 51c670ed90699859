"""MQTT ingest throughput of the driver: messages/s from broker to the driver's sink.

A local ``mosquitto`` (started here on a free port) and a publisher in another process
(paho, QoS 0, JSON payloads ``{"value": .., "ts": ".."}`` on ``--topics`` topics); the driver
here subscribes to every topic with a JSON path and counts what reaches its sink. Figures:
messages/s (wall clock, first to last message) and messages per CPU-second of this (driver)
process, i.e. the driver's stream → sink path. The agent-level figure (into the buffer) is
measured by the agent's own benchmark.

    .venv/bin/python bench/mqtt_ingest.py [--messages 100000] [--topics 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import structlog  # noqa: E402
from mqtt_broker import Mosquitto  # noqa: E402

from outpost.drivers.base import PointGroup, PollResult  # noqa: E402
from outpost.drivers.mqtt import MqttDeviceConfig, MqttDriver  # noqa: E402
from outpost.point_schedules.addresses import parse_mqtt  # noqa: E402
from outpost.point_schedules.model import Point  # noqa: E402

PUBLISHER = r"""
import sys, time, json
import paho.mqtt.client as mqtt
port, n, topics, ident = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub-" + ident)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
names = [f"bench/rack-{i:04d}/temperature" for i in range(topics)]
stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
for i in range(n):
    c.publish(names[i % topics], '{"value": %.2f, "ts": "%s"}' % (20 + (i % 100) / 10, stamp))
    if i % 5000 == 4999:
        time.sleep(0.001)  # let the network thread drain
time.sleep(0.5)
c.loop_stop()
c.disconnect()
"""


async def bench(
    broker: Mosquitto, messages: int, topics: int, wildcard: bool, publishers: int
) -> None:
    if wildcard:
        addresses = [f"bench/rack-{i:04d}/+#$.value" for i in range(topics)]
    else:
        addresses = [f"bench/rack-{i:04d}/temperature#$.value" for i in range(topics)]
    points = [Point(f"p{i}", "bench", parse_mqtt(a)) for i, a in enumerate(addresses)]
    driver = MqttDriver("bench", MqttDeviceConfig(host=broker.host, port=broker.port))
    driver.prepare(PointGroup("bench", points, 60.0))
    received = array("q", [0])
    calls = array("q", [0])
    first = array("d", [0.0])
    last = array("d", [0.0])
    cpu_first = array("d", [0.0])

    def sink(positions: Sequence[int], result: PollResult) -> None:
        if received[0] == 0:
            first[0] = time.perf_counter()
            cpu_first[0] = time.process_time()
        received[0] += len(positions)
        calls[0] += 1
        last[0] = time.perf_counter()

    task = asyncio.create_task(driver.stream(sink))
    while not driver.connected:  # noqa: ASYNC110 - a benchmark, polling is fine
        await asyncio.sleep(0.01)
    share = messages // publishers
    pubs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [sys.executable, "-c", PUBLISHER, str(broker.port), str(share), str(topics), str(k)]
        )
        for k in range(publishers)
    ]
    messages = share * publishers
    deadline = time.monotonic() + 120
    quiet_since = time.monotonic()
    seen = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if received[0] != seen:
            seen, quiet_since = received[0], time.monotonic()
        elif (
            received[0]
            and time.monotonic() - quiet_since > 1.5
            and all(p.poll() is not None for p in pubs)
        ):
            break
    cpu = time.process_time() - cpu_first[0]
    for p in pubs:
        p.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    wall = last[0] - first[0]
    kind = "wildcard filters" if wildcard else "exact topics    "
    print(
        f"{kind}: {received[0]}/{messages} messages, {topics} topics, "
        f"{received[0] / wall:8.0f} msg/s wall, {received[0] / cpu:8.0f} msg/CPU-s "
        f"(driver process incl. paho), {received[0] / max(calls[0], 1):.1f} readings per sink call, "
        f"malformed {driver.malformed}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--publishers", type=int, default=3, help="publisher processes")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            for wildcard in (False, True):
                await bench(broker, args.messages, args.topics, wildcard, args.publishers)
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
