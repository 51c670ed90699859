"""Sparkplug B edge node against a real mosquitto, with the real agent (``outpost run``) polling
a real pymodbus server, and a subscriber that decodes every payload with the committed
``sparkplug_b_pb2``: births complete, seq 0–255 wrapping, bdSeq of NBIRTH = bdSeq of the
NDEATH will (agent killed) and +1 after a restart, rebirth on NCMD, historical flag after a
broker outage without starving live data, every reading of the buffer published exactly once,
DCMD refused unless allow_writes and then applied to the device."""

# ruff: noqa: F811  (the mosquitto fixture is imported, then named as a parameter)

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx
import pytest

from outpost.cloud.sparkplug import payloads as sp
from outpost.cloud.sparkplug import sparkplug_b_pb2 as pb
from outpost.cloud.sparkplug.config import SparkplugConfig
from tests.agent_process import AgentProcess, start_agent, write_config
from tests.modbus_server import start_server
from tests.mqtt_broker import Mosquitto, make_tls_files, mosquitto  # noqa: F401
from tests.uplink_harness import buffer_rows

GROUP = "plant"
GW = "gw-sp"
SCHEDULE = """point_id,device,address,data_type,scale,units,description,min,max,writable,alarm_h
plc.temp,plc,hr:0,int16,0.1,degC,Supply temperature,-50,150,,90
plc.count,plc,hr:1,uint16,,,Pulse counter,,,,
plc.setpoint,plc,hr:10,uint16,,degC,Setpoint,0,100,true,
"""


@dataclass
class Seen:
    topic: str
    kind: str
    payload: pb.Payload


@dataclass
class Subscriber:
    """Collects every Sparkplug message of the group, reconnecting when the broker restarts."""

    broker: Mosquitto
    messages: list[Seen] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        b = self.broker
        tls = ssl.create_default_context(cafile=str(b.tls.ca)) if b.tls is not None else None
        user, password = next(iter(b.users.items())) if b.users else (None, None)
        while True:
            try:
                async with aiomqtt.Client(
                    b.host,
                    b.port,
                    identifier="test-sub",
                    tls_context=tls,
                    username=user,
                    password=password,
                ) as c:
                    await c.subscribe(f"spBv1.0/{GROUP}/#", qos=1)
                    self.connected.set()
                    async for msg in c.messages:
                        topic = str(msg.topic)
                        assert isinstance(msg.payload, bytes)
                        kind = topic.split("/")[2]
                        self.messages.append(Seen(topic, kind, sp.decode(msg.payload)))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.02)

    def of(self, kind: str) -> list[Seen]:
        return [m for m in self.messages if m.kind == kind]


@contextlib.asynccontextmanager
async def subscribed(broker: Mosquitto) -> AsyncIterator[Subscriber]:
    sub = Subscriber(broker)
    task = asyncio.create_task(sub.run())
    try:
        await asyncio.wait_for(sub.connected.wait(), 10)
        yield sub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(cond: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sparkplug_section(broker: Mosquitto, **extra: object) -> str:
    scheme = "mqtts" if broker.tls is not None else "mqtt"
    lines = [
        "[sparkplug]",
        f'url = "{scheme}://{broker.host}:{broker.port}"',
        f'group_id = "{GROUP}"',
        "publish_interval_s = 0.05",
        "backoff_min = 0.5",
        "backoff_max = 1.0",
        "backfill_on_first_start = true",
    ]
    for k, v in extra.items():
        text = str(v).lower() if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else v
        lines.append(f"{k} = {text}")
    return "\n".join(lines) + "\n"


def bdseq_of(p: pb.Payload) -> int:
    return next(m.long_value for m in p.metrics if m.name == sp.BDSEQ)


def published(sub: Subscriber) -> list[tuple[str, int]]:
    """(point_id, ts_ms) of every DDATA point metric, resolving aliases through the births."""
    names: dict[int, str] = {}
    out = []
    for m in sub.messages:
        if m.kind == "DBIRTH":
            names.update({x.alias: x.name for x in m.payload.metrics})
        elif m.kind == "DDATA":
            for x in m.payload.metrics:
                name = names[x.alias]
                if not name.startswith("Alarms/"):
                    out.append((name, x.timestamp))
    return out


def buffered(agent: AgentProcess) -> list[tuple[str, int]]:
    return [(pid, ts) for pid, ts, _v, _q in buffer_rows(agent.config.parent / "var" / "buffer.db")]


async def start(
    tmp_path: Path,
    broker: Mosquitto,
    server_port: int,
    env: dict[str, str] | None = None,
    **extra: object,
) -> AgentProcess:
    cfg = write_config(
        tmp_path,
        {
            "plc": {
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": server_port,
                "poll_interval": 0.05,
            }
        },
        SCHEDULE,
        extra=sparkplug_section(broker, **extra),
        gateway_id=GW,
    )
    agent = start_agent(cfg, env=env)
    await asyncio.to_thread(agent.wait_ready)
    return agent


async def move(server: object, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        await server.set("hr", 0, [200 + i % 100, i % 65536])  # type: ignore[attr-defined]
        await asyncio.sleep(0.02)


def check_seq(sub: Subscriber) -> int:
    """Every message of a session after NBIRTH (seq 0) has the previous seq + 1 mod 256;
    returns how many times seq wrapped from 255 to 0."""
    wraps = 0
    prev: int | None = None
    for m in sub.messages:
        if m.kind in ("NCMD", "DCMD"):  # from the host (this test), not the edge node
            continue
        if m.kind == "NDEATH":
            assert not m.payload.HasField("seq")
            prev = None
            continue
        if m.kind == "NBIRTH":
            assert m.payload.seq == 0
        elif prev is not None:
            assert m.payload.seq == (prev + 1) % 256, (m.kind, prev, m.payload.seq)
            wraps += m.payload.seq == 0
        prev = m.payload.seq
    return wraps


async def test_births_seq_rebirth_bdseq_and_exactly_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    server = await start_server()
    await server.set("hr", 0, [215, 0])
    await server.set("hr", 10, [20])
    stop = asyncio.Event()
    async with subscribed(mosquitto) as sub:
        agent = await start(tmp_path, mosquitto, server.port, max_metrics_per_message=1)
        mover = asyncio.create_task(move(server, stop))
        try:
            await until(lambda: sub.of("DBIRTH"), 20, "DBIRTH")
            nbirth = sub.of("NBIRTH")[0]
            assert nbirth.topic == f"spBv1.0/{GROUP}/NBIRTH/{GW}"
            assert nbirth.payload.seq == 0
            node_metrics = {m.name: m for m in nbirth.payload.metrics}
            assert node_metrics[sp.BDSEQ].datatype == pb.Int64
            assert node_metrics[sp.REBIRTH].datatype == pb.Boolean
            assert node_metrics[sp.REBIRTH].boolean_value is False
            bdseq = bdseq_of(nbirth.payload)

            dbirth = sub.of("DBIRTH")[0]
            assert dbirth.topic == f"spBv1.0/{GROUP}/DBIRTH/{GW}/plc"
            metrics = {m.name: m for m in dbirth.payload.metrics}
            assert {"plc.temp", "plc.count", "plc.setpoint"} <= set(metrics)
            temp = metrics["plc.temp"]
            assert temp.datatype == pb.Double  # int16 × 0.1
            assert temp.HasField("alias") and temp.timestamp > 0
            props = sp.properties_of(temp)
            assert props["engUnit"] == "degC" and props["Documentation"] == "Supply temperature"
            assert props["engLow"] == -50.0 and props["engHigh"] == 150.0
            assert props["readOnly"] is True and props["Quality"] == sp.QUALITY_GOOD
            assert metrics["plc.count"].datatype == pb.UInt16
            assert sp.properties_of(metrics["plc.setpoint"])["readOnly"] is False
            alarms = [n for n in metrics if n.startswith("Alarms/plc.temp/")]
            assert alarms and metrics[alarms[0]].datatype == pb.String
            assert len({m.alias for m in dbirth.payload.metrics}) == len(dbirth.payload.metrics)

            # DDATA: aliases only, seq wraps past 255
            await until(lambda: len(sub.of("DDATA")) > 300, 60, "300 DDATA messages")
            for m in sub.of("DDATA")[:50]:
                assert all(not x.name and x.HasField("alias") for x in m.payload.metrics)
            assert check_seq(sub) >= 1

            # Rebirth on request: NBIRTH again with seq 0 and the same bdSeq, then DBIRTH
            births = len(sub.of("NBIRTH"))
            cmd = pb.Payload(timestamp=int(time.time() * 1000))
            m = cmd.metrics.add()
            m.name, m.datatype, m.boolean_value = sp.REBIRTH, pb.Boolean, True
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
                await c.publish(f"spBv1.0/{GROUP}/NCMD/{GW}", cmd.SerializeToString(), qos=1)
            await until(lambda: len(sub.of("NBIRTH")) > births, 10, "NBIRTH after rebirth")
            again = sub.of("NBIRTH")[-1].payload
            assert again.seq == 0 and bdseq_of(again) == bdseq
            await until(lambda: len(sub.of("DBIRTH")) >= 2, 10, "DBIRTH after rebirth")

            # Exactly once: quiesce, then every buffered reading was published once
            stop.set()
            await mover
            await until(
                lambda: len(published(sub)) >= len(buffered(agent)), 30, "all readings published"
            )
            await asyncio.sleep(0.3)  # nothing more than that should arrive
            pub, buf = published(sub), buffered(agent)
            assert len(buf) > 300
            dup = [k for k, n in Counter(pub).items() if n > 1]
            assert not dup, dup[:5]
            assert sorted(pub) == sorted(buf)
            check_seq(sub)

            # Killed: the broker publishes the will, NDEATH with the session's bdSeq
            agent.signal(signal.SIGKILL)
            await asyncio.to_thread(agent.proc.wait, 10)
            await until(lambda: sub.of("NDEATH"), 10, "NDEATH will")
            death = sub.of("NDEATH")[0]
            assert death.topic == f"spBv1.0/{GROUP}/NDEATH/{GW}"
            assert bdseq_of(death.payload) == bdseq

            # Restarted: the next session's bdSeq, persisted across the restart
            agent = start_agent(agent.config)
            await asyncio.to_thread(agent.wait_ready)
            await until(lambda: len(sub.of("NBIRTH")) > births + 1, 20, "NBIRTH after restart")
            assert bdseq_of(sub.of("NBIRTH")[-1].payload) == (bdseq + 1) % 256
            check_seq(sub)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await mover
            agent.stop()
            await server.stop()


async def test_historical_after_broker_outage(mosquitto: Mosquitto, tmp_path: Path) -> None:
    server = await start_server()
    await server.set("hr", 0, [215, 0])
    stop = asyncio.Event()
    async with subscribed(mosquitto) as sub:
        agent = await start(tmp_path, mosquitto, server.port, data_qos=1, batch_size=20)
        mover = asyncio.create_task(move(server, stop))
        db = tmp_path / "var" / "buffer.db"
        try:
            await until(
                lambda: (
                    sum(not x.is_historical for m in sub.of("DDATA") for x in m.payload.metrics) > 5
                ),
                20,
                "live DDATA",
            )
            before = len(buffer_rows(db))
            await asyncio.to_thread(mosquitto.stop)
            sub.connected.clear()
            await until(lambda: len(buffer_rows(db)) > before + 100, 30, "readings held")
            seen_before = len(sub.messages)
            # The agent must not reconnect before this subscriber has (it would miss the
            # births and first DDATA): hold the agent while the broker comes back.
            agent.signal(signal.SIGSTOP)
            try:
                await asyncio.to_thread(mosquitto.start)
                await asyncio.wait_for(sub.connected.wait(), 10)
            finally:
                agent.signal(signal.SIGCONT)
            await until(lambda: len(sub.of("NBIRTH")) >= 2, 30, "NBIRTH after the outage")
            await until(
                lambda: any(x.is_historical for m in sub.of("DDATA") for x in m.payload.metrics),
                30,
                "historical DDATA",
            )
            stop.set()
            await mover
            await until(
                lambda: len(published(sub)) >= len(buffered(agent)), 60, "backlog published"
            )
            await asyncio.sleep(0.3)
            after = sub.messages[seen_before:]
            hist = [
                i
                for i, m in enumerate(after)
                if m.kind == "DDATA" and any(x.is_historical for x in m.payload.metrics)
            ]
            live = [
                i
                for i, m in enumerate(after)
                if m.kind == "DDATA" and not any(x.is_historical for x in m.payload.metrics)
            ]
            # live data went out while the backlog was still draining
            assert live and hist and min(live) < max(hist)
            # historical ones oldest first
            ts = [x.timestamp for i in hist for x in after[i].payload.metrics]
            assert ts == sorted(ts)
            pub, buf = published(sub), buffered(agent)
            assert not [k for k, n in Counter(pub).items() if n > 1]
            assert sorted(pub) == sorted(buf)
            check_seq(sub)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await mover
            agent.stop()
            await server.stop()


@pytest.mark.parametrize("allow", [False, True])
async def test_dcmd_write(mosquitto: Mosquitto, tmp_path: Path, allow: bool) -> None:
    server = await start_server()
    await server.set("hr", 0, [215, 0])
    await server.set("hr", 10, [20])
    async with subscribed(mosquitto) as sub:
        agent = await start(tmp_path, mosquitto, server.port, allow_writes=allow)
        try:
            await until(lambda: sub.of("DBIRTH"), 20, "DBIRTH")
            alias = next(
                m.alias for m in sub.of("DBIRTH")[0].payload.metrics if m.name == "plc.setpoint"
            )
            cmd = pb.Payload(timestamp=int(time.time() * 1000))
            m = cmd.metrics.add()
            m.alias, m.int_value = alias, 42  # by alias, as Ignition sends it
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
                await c.publish(f"spBv1.0/{GROUP}/DCMD/{GW}/plc", cmd.SerializeToString(), qos=1)
            if allow:

                async def written() -> bool:
                    return (await server.get("hr", 10, 1))[0] == 42

                deadline = time.monotonic() + 15
                while not await written():
                    assert time.monotonic() < deadline, agent.log()[-3000:]
                    await asyncio.sleep(0.05)
                await until(lambda: "sparkplug.dcmd_write" in agent.log(), 10, "write logged")
                assert "sparkplug:127.0.0.1" in agent.log()
                # the same guarded path as every write: outside max, or a read-only point,
                # is refused and nothing reaches the device
                temp_alias = next(
                    m.alias for m in sub.of("DBIRTH")[0].payload.metrics if m.name == "plc.temp"
                )
                for target, value in ((alias, 150), (temp_alias, 7)):
                    bad = pb.Payload(timestamp=int(time.time() * 1000))
                    bm = bad.metrics.add()
                    bm.alias, bm.int_value = target, value
                    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
                        await c.publish(
                            f"spBv1.0/{GROUP}/DCMD/{GW}/plc", bad.SerializeToString(), qos=1
                        )
                await until(
                    lambda: agent.log().count("sparkplug.dcmd_refused") >= 2, 15, "refusals"
                )
                assert (await server.get("hr", 10, 1))[0] == 42
                assert (await server.get("hr", 0, 1))[0] == 215
            else:
                await until(lambda: "sparkplug.dcmd_refused" in agent.log(), 15, "refusal")
                assert (await server.get("hr", 10, 1))[0] == 20
                assert "allow_writes" in agent.log()
            # the node in the agent's metrics and status (local API socket)
            uds = httpx.AsyncHTTPTransport(uds=str(agent.socket))
            async with httpx.AsyncClient(transport=uds, base_url="http://agent") as c:
                text = (await c.get("/metrics")).text
                status = (await c.get("/status")).json()
            outcome = "applied" if allow else "refused"
            assert f'outpost_sparkplug_dcmd_total{{outcome="{outcome}"}} 1.0' in text
            assert "outpost_sparkplug_connected 1.0" in text
            assert status["sparkplug"]["connected"] is True
            assert status["sparkplug"]["edge_node_id"] == GW
            lint = await asyncio.to_thread(
                subprocess.run,
                ["promtool", "check", "metrics"],
                input=text,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout
        finally:
            agent.stop()
            await server.stop()


async def test_alarm_state_metric(mosquitto: Mosquitto, tmp_path: Path) -> None:
    server = await start_server()
    await server.set("hr", 0, [215, 0])
    async with subscribed(mosquitto) as sub:
        agent = await start(tmp_path, mosquitto, server.port)
        try:
            await until(lambda: sub.of("DBIRTH"), 20, "DBIRTH")
            alarm = next(
                m
                for m in sub.of("DBIRTH")[0].payload.metrics
                if m.name.startswith("Alarms/plc.temp/")
            )
            assert alarm.string_value == "normal"
            assert sp.properties_of(alarm)["priority"] == "medium"
            await server.set("hr", 0, [950])  # 95.0 degC > alarm_h 90

            def states() -> list[str]:
                return [
                    x.string_value
                    for m in sub.of("DDATA")
                    for x in m.payload.metrics
                    if x.alias == alarm.alias
                ]

            await until(lambda: "unack_active" in states(), 20, "alarm DDATA")
            check_seq(sub)
        finally:
            agent.stop()
            await server.stop()


async def test_device_death_and_birth(mosquitto: Mosquitto, tmp_path: Path) -> None:
    server = await start_server()
    port = server.port
    async with subscribed(mosquitto) as sub:
        agent = await start(tmp_path, mosquitto, port)
        try:
            await until(lambda: sub.of("DBIRTH"), 20, "DBIRTH")
            await server.stop()
            await until(lambda: sub.of("DDEATH"), 20, "DDEATH")
            death = sub.of("DDEATH")[0]
            assert death.topic == f"spBv1.0/{GROUP}/DDEATH/{GW}/plc"
            n = len(sub.messages)
            server = await start_server(port=port)
            await until(lambda: any(m.kind == "DBIRTH" for m in sub.messages[n:]), 20, "DBIRTH")
            check_seq(sub)
            # no DDATA for the device while it was dead
            dead = sub.messages.index(death)
            reborn = next(i for i, m in enumerate(sub.messages) if i > dead and m.kind == "DBIRTH")
            assert not [m for m in sub.messages[dead:reborn] if m.kind == "DDATA"]
        finally:
            agent.stop()
            await server.stop()


async def test_tls_and_credentials(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, users={"edge": "s3cret"}, tls=make_tls_files(tmp_path))
    await asyncio.to_thread(broker.start)
    server = await start_server()
    try:
        async with subscribed(broker) as sub:
            agent = await start(
                tmp_path,
                broker,
                server.port,
                env={"SP_USER": "edge", "SP_PASS": "s3cret"},
                ca_file=str(broker.tls.ca) if broker.tls else "",
                username_env="SP_USER",
                password_env="SP_PASS",
            )
            try:
                await until(lambda: sub.of("DBIRTH"), 20, "DBIRTH over TLS")
                assert "s3cret" not in agent.log()
            finally:
                agent.stop()
    finally:
        await server.stop()
        await asyncio.to_thread(broker.stop)


def test_config_checks_url_and_ids() -> None:
    ok = SparkplugConfig(url="mqtts://broker.example:8883", group_id="g1")
    assert (ok.host, ok.port, ok.tls) == ("broker.example", 8883, True)
    assert SparkplugConfig(url="mqtt://h").port == 1883
    for bad in (
        {"url": "http://h:1"},
        {"url": "mqtt://h:x"},
        {"url": "mqtt://h", "group_id": "a/b"},
    ):
        with pytest.raises(ValueError):
            SparkplugConfig.model_validate(bad)
