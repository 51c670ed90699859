"""MQTT driver against a real Mosquitto broker started by the test."""

# ruff: noqa: F811  (fixtures imported from mqtt_broker are redefined as parameters)

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from mqtt_broker import Mosquitto, free_tcp_port, make_tls_files, mosquitto  # noqa: F401
from pydantic import ValidationError

from outpost.drivers.base import PointGroup, PollResult
from outpost.drivers.mqtt import MqttDeviceConfig, MqttDriver, topic_matches
from outpost.drivers.registry import driver_class
from outpost.drivers.sim.mqtt_sensors import RackSensorsModel, run_mqtt_sensors
from outpost.point_schedules.addresses import parse_mqtt
from outpost.point_schedules.model import Point
from outpost.point_schedules.quality import Quality


@dataclass
class Reading:
    pos: int
    ts: float
    value: float
    quality: Quality


@dataclass
class Collector:
    """The sink: keeps every reading and lets a test wait for one it expects."""

    readings: list[Reading] = field(default_factory=list)
    calls: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, positions: Sequence[int], result: PollResult) -> None:
        assert len(positions) == len(result)
        self.calls += 1
        for i, pos in enumerate(positions):
            self.readings.append(
                Reading(pos, result.ts[i], result.value[i], Quality(result.quality[i]))
            )
        self.changed.set()

    async def wait_for(self, pred: Callable[[Reading], bool], within: float = 8.0) -> Reading:
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for r in self.readings[seen:]:
                if pred(r):
                    return r
            seen = len(self.readings)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching reading; got {self.readings[-10:]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def of(self, pos: int) -> list[Reading]:
        return [r for r in self.readings if r.pos == pos]


def point(pid: str, address: str, **kw: Any) -> Point:
    return Point(pid, "sensors", parse_mqtt(address), **kw)


@contextlib.asynccontextmanager
async def running(
    broker: Mosquitto, points: list[Point], **cfg: Any
) -> AsyncIterator[tuple[MqttDriver, Collector]]:
    cfg.setdefault("reconnect_min", 0.1)
    cfg.setdefault("reconnect_max", 0.5)
    config = MqttDeviceConfig(host=broker.host, port=broker.port, **cfg)
    driver = MqttDriver("sensors", config)
    group = PointGroup("sensors", points, config.poll_interval)
    driver.prepare(group)
    sink = Collector()
    task = asyncio.create_task(driver.stream(sink))
    try:
        await until(lambda: driver.connected)
        yield driver, sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await driver.close()


async def until(cond: Callable[[], bool], within: float = 8.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def publish(broker: Mosquitto, *messages: tuple[str, str | bytes]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def test_registry_and_push_flag() -> None:
    assert driver_class("mqtt") is MqttDriver
    assert MqttDriver.polled is False


def test_topic_matching() -> None:
    def m(f: str, t: str) -> bool:
        return topic_matches(f.split("/"), t.split("/"))

    assert m("a/+/c", "a/b/c") and not m("a/+/c", "a/b/x/c")
    assert m("a/#", "a/b/c") and m("a/#", "a") and m("#", "a/b")
    assert not m("a/b", "a/b/c") and not m("a/b/c", "a/b")
    assert not m("+/x", "$SYS/x") and not m("#", "$SYS/broker")


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="ca_file needs tls"):
        MqttDeviceConfig(host="h", ca_file=Path("/x"))
    with pytest.raises(ValidationError, match="extra"):
        MqttDeviceConfig(host="h", password="inline")  # type: ignore[call-arg]
    assert MqttDeviceConfig(host="h").qos == 0


async def test_json_path_plain_bool_and_wildcards(mosquitto: Mosquitto) -> None:
    points = [
        point("temp", "t/rack1/temperature#$.value", scale=1.0, offset=0.5),
        point("power", "t/rack1/power"),
        point("door", "t/rack1/door"),
        point("hum", "t/+/env#$.sensors[1].hum"),
        point("deep", "t/rack1/nested#$['a b'].c"),
        point("hot", "t/rack1/temperature#$.value", max=20.0),  # same topic, second point
    ]
    async with running(mosquitto, points) as (driver, sink):
        await publish(
            mosquitto,
            ("t/rack1/temperature", '{"value": 23.4}'),
            ("t/rack1/power", "3.25"),
            ("t/rack1/door", "true"),
            ("t/rack9/env", '{"sensors": [{"hum": 1}, {"hum": 44.5}]}'),
            ("t/rack1/nested", '{"a b": {"c": "7.5"}}'),
            ("t/other", "99"),  # not subscribed: ignored
        )
        await until(lambda: {r.pos for r in sink.readings} == set(range(6)))
        latest = {r.pos: r for r in sink.readings}
        assert latest[0].value == pytest.approx(23.9) and latest[0].quality == Quality.GOOD
        assert latest[1].value == 3.25
        assert latest[2].value == 1.0
        assert latest[3].value == 44.5
        assert latest[4].value == 7.5
        assert latest[5].quality == Quality.UNCERTAIN_OUT_OF_RANGE
        assert driver.messages == 5
        assert driver.malformed == 0


async def test_payload_timestamp_used_when_valid(mosquitto: Mosquitto) -> None:
    now = time.time()
    iso = datetime.fromtimestamp(now - 30, UTC).isoformat().replace("+00:00", "Z")
    points = [point(f"p{i}", f"ts/{i}#$.value") for i in range(5)]
    async with running(mosquitto, points) as (_driver, sink):
        before = time.time()
        await publish(
            mosquitto,
            ("ts/0", f'{{"value": 1, "ts": "{iso}"}}'),
            ("ts/1", f'{{"value": 1, "timestamp": {now - 60:.3f}}}'),
            ("ts/2", f'{{"value": 1, "ts": {int((now - 90) * 1000)}}}'),
            ("ts/3", f'{{"value": 1, "ts": {now + 86400}}}'),  # a day ahead: not believed
            ("ts/4", '{"value": 1, "ts": "yesterday-ish"}'),
        )
        await until(lambda: len({r.pos for r in sink.readings}) == 5)
        ts = {r.pos: r.ts for r in sink.readings}
        assert ts[0] == pytest.approx(now - 30, abs=0.01)
        assert ts[1] == pytest.approx(now - 60, abs=0.01)
        assert ts[2] == pytest.approx(now - 90, abs=0.01)
        assert before <= ts[3] <= time.time()
        assert before <= ts[4] <= time.time()


async def test_retained_message_without_timestamp_is_uncertain_until_a_live_one(
    mosquitto: Mosquitto,
) -> None:
    """Issue 13 item 7: a retained message is of unknown age unless its payload says when."""
    stamp = datetime.fromtimestamp(time.time() - 20, UTC).isoformat().replace("+00:00", "Z")
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.publish("ret/plain", "21.5", qos=1, retain=True)
        await client.publish("ret/json", '{"value": 3}', qos=1, retain=True)
        await client.publish("ret/dated", f'{{"value": 4, "ts": "{stamp}"}}', qos=1, retain=True)
    points = [
        point("plain", "ret/plain"),
        point("json", "ret/json#$.value"),
        point("dated", "ret/dated#$.value"),
    ]
    try:
        async with running(mosquitto, points) as (_driver, sink):
            await until(lambda: {r.pos for r in sink.readings} == {0, 1, 2})
            first = {r.pos: r for r in sink.readings}
            assert first[0].value == 21.5 and first[0].quality == Quality.UNCERTAIN
            assert first[1].value == 3 and first[1].quality == Quality.UNCERTAIN
            # a retained message that says when it was measured is as good as that time
            assert first[2].value == 4 and first[2].quality == Quality.GOOD
            await publish(mosquitto, ("ret/plain", "22.0"), ("ret/json", '{"value": 5}'))
            live_plain = await sink.wait_for(lambda r: r.pos == 0 and r.value == 22.0)
            live_json = await sink.wait_for(lambda r: r.pos == 1 and r.value == 5)
            assert live_plain.quality == Quality.GOOD and live_json.quality == Quality.GOOD
    finally:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            for topic in ("ret/plain", "ret/json", "ret/dated"):
                await client.publish(topic, b"", qos=1, retain=True)  # clear the retained copy


async def test_malformed_payload_is_counted_logged_once_and_survived(mosquitto: Mosquitto) -> None:
    points = [point("temp", "m/temp#$.value"), point("plain", "m/plain")]
    async with running(mosquitto, points) as (driver, sink):
        with structlog.testing.capture_logs() as logs:
            await publish(
                mosquitto,
                ("m/temp", "{not json"),
                ("m/temp", '{"val": 1}'),  # path missing
                ("m/temp", '{"value": "warm"}'),  # not a number
                ("m/plain", "twenty"),
                ("m/temp", '{"value": 21.5}'),
            )
            good = await sink.wait_for(lambda r: r.pos == 0 and r.quality == Quality.GOOD)
        assert good.value == 21.5
        assert driver.malformed == 4
        temp = sink.of(0)
        assert [r.quality for r in temp] == [
            Quality.BAD_DEVICE_ERROR,
            Quality.BAD_CONFIG_ERROR,
            Quality.BAD_CONFIG_ERROR,
            Quality.GOOD,
        ]
        assert all(math.isnan(r.value) for r in temp[:3])
        warned = [e for e in logs if e["event"] == "mqtt.malformed_payload"]
        assert sorted(e["topic"] for e in warned) == ["m/plain", "m/temp"]  # once per topic
        assert driver.connected


async def test_broker_restart_reconnects_and_resumes(mosquitto: Mosquitto) -> None:
    points = [point("temp", "r/temp#$.value"), point("hum", "r/hum#$.value")]
    async with running(mosquitto, points) as (driver, sink):
        await publish(mosquitto, ("r/temp", '{"value": 20}'))
        await sink.wait_for(lambda r: r.pos == 0 and r.value == 20)
        with structlog.testing.capture_logs() as logs:
            mosquitto.stop()
            await sink.wait_for(lambda r: r.quality == Quality.BAD_COMM_FAILURE)
            assert not driver.connected
            down = [r for r in sink.readings if r.quality == Quality.BAD_COMM_FAILURE]
            assert {r.pos for r in down} == {0, 1}  # every point shows the outage
            lost_at = driver.connect_attempts
            await until(lambda: driver.connect_attempts >= lost_at + 2)  # failed reconnects
            mosquitto.start()
            await until(lambda: driver.connected)
        assert [e["event"] for e in logs].count("mqtt.broker_lost") == 1
        assert any(e["event"] == "mqtt.reconnected" for e in logs)
        await publish(mosquitto, ("r/temp", '{"value": 22}'))
        back = await sink.wait_for(lambda r: r.pos == 0 and r.value == 22)
        assert back.quality == Quality.GOOD


async def test_broker_absent_at_start_then_available(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, port=free_tcp_port())
    config = MqttDeviceConfig(
        host=broker.host, port=broker.port, reconnect_min=0.1, reconnect_max=0.3
    )
    driver = MqttDriver("sensors", config)
    driver.prepare(PointGroup("sensors", [point("x", "a/x")], 5.0))
    sink = Collector()
    task = asyncio.create_task(driver.stream(sink))
    try:
        failed = await sink.wait_for(lambda r: r.quality == Quality.BAD_COMM_FAILURE)
        assert failed.pos == 0
        broker.start()
        await until(lambda: driver.connected)
        await publish(broker, ("a/x", "5"))
        assert (await sink.wait_for(lambda r: r.quality == Quality.GOOD)).value == 5.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        broker.stop()


async def test_stale_after_three_intervals_once(mosquitto: Mosquitto) -> None:
    points = [point("fast", "s/fast", poll_interval=0.2), point("slow", "s/slow")]
    async with running(mosquitto, points, poll_interval=60.0) as (driver, sink):
        await publish(mosquitto, ("s/fast", "1"), ("s/slow", "2"))
        await sink.wait_for(lambda r: r.pos == 0 and r.quality == Quality.GOOD)
        stale = await sink.wait_for(lambda r: r.pos == 0 and r.quality == Quality.BAD_STALE)
        assert math.isnan(stale.value)
        # several more stale sweeps (every 0.1 s here): still only one stale reading
        swept = driver.stale_checks
        await until(lambda: driver.stale_checks >= swept + 6)
        assert [r.quality for r in sink.of(0)].count(Quality.BAD_STALE) == 1
        assert all(r.quality != Quality.BAD_STALE for r in sink.of(1))
        await publish(mosquitto, ("s/fast", "3"))
        fresh = await sink.wait_for(lambda r: r.pos == 0 and r.value == 3)
        assert fresh.quality == Quality.GOOD


async def test_reprepare_resubscribes_while_streaming(mosquitto: Mosquitto) -> None:
    async with running(mosquitto, [point("a", "re/a")]) as (driver, sink):
        group = PointGroup("sensors", [point("b", "re/b"), point("a", "re/a")], 5.0)
        subscribed = driver.subscriptions
        driver.prepare(group)
        # the driver swaps subscriptions on the live connection
        await until(lambda: driver.subscriptions > subscribed)
        await publish(mosquitto, ("re/b", "4"), ("re/a", "6"))
        await until(lambda: {r.pos for r in sink.readings} >= {0, 1})
        assert {r.pos: r.value for r in sink.readings} == {0: 4.0, 1: 6.0}


async def test_simulated_rack_sensors_feed_the_driver(mosquitto: Mosquitto) -> None:
    points = [
        point("a01_temp", "dc/site1/room1/rack-a01/temperature#$.value", units="degC"),
        point("a02_hum", "dc/site1/room1/rack-a02/humidity#$.value", units="%RH"),
        point("a02_power", "dc/site1/room1/rack-a02/power", units="kW"),
    ]
    stop = asyncio.Event()
    model = RackSensorsModel(racks=2)
    sim = asyncio.create_task(
        run_mqtt_sensors(mosquitto.host, mosquitto.port, interval=0.1, stop=stop, model=model)
    )
    try:
        async with running(mosquitto, points) as (_driver, sink):
            await until(lambda: {r.pos for r in sink.readings} == {0, 1, 2})
            latest = {r.pos: r for r in sink.readings}
            assert 18 < latest[0].value < 30
            assert 20 < latest[1].value < 70
            assert 1 < latest[2].value < 8
            # JSON payloads carry their time: good even when they arrive retained; the plain
            # power payload has none, so only a copy retained from before we subscribed (the
            # first reading at most) is uncertain
            assert all(r.quality == Quality.GOOD for r in sink.readings if r.pos != 2)
            power = [r.quality for r in sink.of(2)]
            assert power[0] in (Quality.GOOD, Quality.UNCERTAIN)
            await sink.wait_for(lambda r: r.pos == 2 and r.quality == Quality.GOOD)
            assert all(q == Quality.GOOD for q in [r.quality for r in sink.of(2)][1:])
            assert abs(latest[0].ts - time.time()) < 5  # payload ts (ms precision) is used
            model.scenario = "COOLING_FAILURE"
            first = latest[0].value
            await sink.wait_for(lambda r: r.pos == 0 and r.value > first + 2)
    finally:
        stop.set()
        await asyncio.wait_for(sim, 5)


async def test_username_password_from_env_and_refused_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Mosquitto(tmp_path, users={"gateway": "correct-horse"})
    broker.start()
    try:
        monkeypatch.setenv("OUTPOST_TEST_MQTT_USER", "gateway")
        monkeypatch.setenv("OUTPOST_TEST_MQTT_PASS", "correct-horse")
        creds = dict(username_env="OUTPOST_TEST_MQTT_USER", password_env="OUTPOST_TEST_MQTT_PASS")
        async with running(broker, [point("x", "auth/x")], **creds) as (_driver, sink):
            async with aiomqtt.Client(
                broker.host, broker.port, username="gateway", password="correct-horse"
            ) as pub:
                await pub.publish("auth/x", "42", qos=1)
            assert (await sink.wait_for(lambda r: r.quality == Quality.GOOD)).value == 42.0

        monkeypatch.setenv("OUTPOST_TEST_MQTT_PASS", "wrong")
        config = MqttDeviceConfig(host=broker.host, port=broker.port, **creds)
        driver = MqttDriver("sensors", config)
        driver.prepare(PointGroup("sensors", [point("x", "auth/x")], 5.0))
        sink = Collector()
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(driver.stream(sink))
            try:
                refused = await sink.wait_for(lambda r: r.quality == Quality.BAD_CONFIG_ERROR)
                assert refused.pos == 0
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        rejected = [e for e in logs if e["event"] == "mqtt.credentials_rejected"]
        assert len(rejected) == 1 and rejected[0]["user"] == "gateway"
        assert not driver.connected
    finally:
        broker.stop()


async def test_missing_secret_is_a_config_error(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTPOST_TEST_NOPE", raising=False)
    config = MqttDeviceConfig(
        host=mosquitto.host, port=mosquitto.port, username_env="OUTPOST_TEST_NOPE"
    )
    driver = MqttDriver("sensors", config)
    driver.prepare(PointGroup("sensors", [point("x", "a/x")], 5.0))
    sink = Collector()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(driver.stream(sink))
        try:
            await sink.wait_for(lambda r: r.quality == Quality.BAD_CONFIG_ERROR)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    errors = [e for e in logs if e["event"] == "mqtt.config_error"]
    assert (
        errors
        and "username_env" in errors[0]["error"]
        and "OUTPOST_TEST_NOPE" in errors[0]["error"]
    )


async def test_tls_with_ca_file(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    broker = Mosquitto(tmp_path, tls=tls)
    broker.start()
    try:
        async with running(broker, [point("x", "tls/x")], tls=True, ca_file=tls.ca) as (_d, sink):
            params = aiomqtt.TLSParameters(ca_certs=str(tls.ca))
            async with aiomqtt.Client(broker.host, broker.port, tls_params=params) as pub:
                await pub.publish("tls/x", "7", qos=1)
            assert (await sink.wait_for(lambda r: r.quality == Quality.GOOD)).value == 7.0
        # Without TLS the broker's TLS listener does not talk to us: comm failure, no crash.
        config = MqttDeviceConfig(host=broker.host, port=broker.port, timeout=0.5, retries=0)
        plain = MqttDriver("sensors", config)
        plain.prepare(PointGroup("sensors", [point("x", "tls/x")], 5.0))
        sink = Collector()
        task = asyncio.create_task(plain.stream(sink))
        try:
            await sink.wait_for(lambda r: r.quality == Quality.BAD_COMM_FAILURE)
            assert not plain.connected
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        broker.stop()


async def test_points_split_over_groups_refuse_to_stream() -> None:
    """stream(sink) has no group: several sibling groups cannot be told apart, so the driver
    refuses (loudly) rather than risk attributing values to the wrong points."""
    driver = MqttDriver("sensors", MqttDeviceConfig(host="127.0.0.1"))
    with structlog.testing.capture_logs() as logs:
        driver.prepare(PointGroup("sensors", [point("a", "g/a")], 5.0))
        await asyncio.sleep(0)  # a later step: a schedule reload, not a sibling
        driver.prepare(PointGroup("sensors", [point("a", "g/a"), point("b", "g/b")], 5.0))
        assert not [e for e in logs if e["event"] == "mqtt.split_groups"]
        driver.prepare(PointGroup("sensors", [point("c", "g/c")], 60.0))  # same step: sibling
        driver.prepare(PointGroup("sensors", [point("d", "g/d")], 90.0))
    assert [e["event"] for e in logs].count("mqtt.split_groups") == 1
    with pytest.raises(RuntimeError, match="several groups"):
        await driver.stream(Collector())
    await asyncio.sleep(0)
    driver.prepare(PointGroup("sensors", [point("c", "g/c"), point("d", "g/d")], 60.0))
    assert not driver._split  # one group again: streaming is allowed
