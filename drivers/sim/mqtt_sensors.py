"""Simulated rack environment sensors publishing to an MQTT broker.

Per rack ``rack-a01`` .. ``rack-aNN`` under ``dc/site1/room1/``:

- ``<rack>/temperature``  JSON ``{"value": 23.4, "ts": "2026-11-24T14:00:00.123Z"}``  degC
- ``<rack>/humidity``     JSON ``{"value": 45.1, "ts": ...}``                       %RH
- ``<rack>/power``        plain number, kW (e.g. ``3.82``)

Schedule addresses: ``dc/site1/room1/rack-a01/temperature#$.value`` and
``dc/site1/room1/rack-a01/power``. The simulator needs a broker (the one named in its config);
it reconnects when the broker goes away. ``COOLING_FAILURE`` makes temperatures climb about
0.5 degC per publish interval; ``LEAK_DETECTED`` is published on ``<rack>/leak`` as 1/0.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiomqtt
import structlog

log = structlog.get_logger(__name__)

__all__ = ["TOPIC_ROOT", "RackSensorsModel", "rack_names", "run_mqtt_sensors"]

TOPIC_ROOT = "dc/site1/room1"


def rack_names(racks: int) -> list[str]:
    return [f"rack-a{n:02d}" for n in range(1, racks + 1)]


@dataclass
class RackSensorsModel:
    racks: int = 8
    scenario: str | None = None
    seed: int = 11
    published: int = 0
    _heat: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self._rng = rng
        self._base = [rng.uniform(21.5, 25.0) for _ in range(self.racks)]
        self._kw = [rng.uniform(2.0, 6.0) for _ in range(self.racks)]
        self._heat = [0.0] * self.racks

    def step(self) -> list[tuple[str, bytes]]:
        """One publish round: (topic, payload) for every sensor."""
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        stamp = stamp.replace("+00:00", "Z")
        out: list[tuple[str, bytes]] = []
        hour = (now % 86400) / 3600
        day = 1.0 + 0.1 * math.sin((hour - 8) / 24 * 2 * math.pi)
        for i, rack in enumerate(rack_names(self.racks)):
            if self.scenario == "COOLING_FAILURE":
                self._heat[i] = min(self._heat[i] + 0.5, 20.0)
            else:
                self._heat[i] = max(self._heat[i] - 0.5, 0.0)
            kw = self._kw[i] * day * self._rng.uniform(0.97, 1.03)
            temp = self._base[i] + 0.4 * (kw - 4) + self._heat[i] + self._rng.gauss(0, 0.05)
            hum = 45 - 0.6 * self._heat[i] + self._rng.gauss(0, 0.3)
            base = f"{TOPIC_ROOT}/{rack}"
            out.append((f"{base}/temperature", _json(round(temp, 2), stamp)))
            out.append((f"{base}/humidity", _json(round(hum, 1), stamp)))
            out.append((f"{base}/power", f"{kw:.3f}".encode()))
            leak = self.scenario == "LEAK_DETECTED" and i == 0
            out.append((f"{base}/leak", b"1" if leak else b"0"))
        return out


def _json(value: float, stamp: str) -> bytes:
    return json.dumps({"value": value, "ts": stamp}, separators=(",", ":")).encode()


async def run_mqtt_sensors(
    host: str,
    port: int,
    *,
    racks: int = 8,
    interval: float = 1.0,
    stop: asyncio.Event | None = None,
    model: RackSensorsModel | None = None,
    retain: bool = True,
) -> None:
    """Publish every ``interval`` seconds until ``stop`` is set (or cancelled).

    Messages are retained by default so a gateway that (re)subscribes gets values at once.
    """
    model = model if model is not None else RackSensorsModel(racks=racks)
    stop = stop if stop is not None else asyncio.Event()
    delay = 0.5
    while not stop.is_set():
        try:
            async with aiomqtt.Client(
                host, port, identifier=f"outpost-sim-sensors-{id(model):x}"
            ) as client:
                log.info("sim.mqtt_sensors.connected", broker=f"{host}:{port}", racks=model.racks)
                delay = 0.5
                while not stop.is_set():
                    for topic, payload in model.step():
                        await client.publish(topic, payload, qos=0, retain=retain)
                        model.published += 1
                    try:
                        await asyncio.wait_for(stop.wait(), interval)
                    except TimeoutError:
                        pass
        except aiomqtt.MqttError as exc:
            log.warning(
                "sim.mqtt_sensors.broker_unavailable", broker=f"{host}:{port}", error=str(exc)
            )
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 10.0)


def main(argv: list[str] | None = None) -> None:
    """``python -m outpost.drivers.sim.mqtt_sensors --port 1883 [--racks 8] [--interval 1]``"""
    import argparse

    ap = argparse.ArgumentParser(description="Publish simulated rack sensors to an MQTT broker.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--racks", type=int, default=8)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--scenario", choices=("COOLING_FAILURE", "LEAK_DETECTED"), default=None)
    args = ap.parse_args(argv)
    model = RackSensorsModel(racks=args.racks, scenario=args.scenario)
    try:
        asyncio.run(run_mqtt_sensors(args.host, args.port, interval=args.interval, model=model))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
