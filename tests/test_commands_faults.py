"""Exactly once under faults: while a stream of commands flows (setpoint writes of increasing
values, acks), the agent is SIGKILLed at random moments at least 20 times, the receiver is
restarted a few times, and the link to the receiver is cut at least 50 times
(whole-connection drops and mid-chunk cuts, both ways).

Afterwards every command is final at the receiver, and the pymodbus server saw each written
value at most once — exactly once for every write the receiver reports as succeeded. A write
whose agent died mid-action is reported failed with outcome "interrupted" (never re-run)."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer

from tests.agent_process import AgentProcess, start_agent
from tests.chaos_proxy import ChaosProxy
from tests.commands_harness import FINAL, WRITE_FCS, Operator, agent_config, cloud_section
from tests.modbus_server import ModbusTestServer, sim_device
from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import wait_for

pytest_plugins = ("tests.receiver_fixtures",)
pytestmark = pytest.mark.slow  # fault injection, ~45 s

GW = "gw-chaos"
SCHEDULE = """point_id,device,address,data_type,writable,min,max,alarm_h
plc.temp,plc,hr:0,uint16,,,,30
plc.setpoint,plc,hr:10,uint16,true,0,60000,
"""
KILLS = 20
CUTS = 50


async def _server(written: Counter[int]) -> ModbusTestServer:
    def trace(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and pdu.function_code in WRITE_FCS and getattr(pdu, "address", -1) == 10:
            for value in getattr(pdu, "registers", None) or []:
                written[int(value)] += 1
        return pdu

    server = ModbusTcpServer([sim_device(1)], address=("127.0.0.1", 0), trace_pdu=trace)
    await server.serve_forever(background=True)
    return ModbusTestServer(server, server.transport.sockets[0].getsockname()[1])


async def test_exactly_once_under_kills_and_cuts(receiver: ReceiverHandle, tmp_path: Path) -> None:
    rng = random.Random(20261204)
    written: Counter[int] = Counter()
    server = await _server(written)
    await server.set("hr", 0, [50])  # alarm plc.temp:hi active, for the acks
    proxy = ChaosProxy("127.0.0.1", receiver.port, seed=7)
    await proxy.start()
    enrollment = await receiver.enrollment_token(GW)
    cloud = cloud_section(
        proxy.url, enrollment, allow_remote_writes=True, command_wait_s=2, read_timeout=3
    )
    cfg = agent_config(tmp_path, server, SCHEDULE, cloud, GW, poll_interval=0.5)
    token_file = tmp_path / "var" / "gateway.token"
    agent: AgentProcess = start_agent(cfg)
    op = Operator(receiver, GW)
    commands: dict[int, int | None] = {}  # command id -> written value (None: an ack)
    stop = asyncio.Event()
    kills = drops = restarts = 0

    async def queue(kind: str, args: dict[str, object]) -> int:
        for _ in range(200):  # the receiver may be restarting
            try:
                return await op.queue(kind, args)
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        raise AssertionError("the receiver did not come back")

    async def produce() -> None:
        value = 0
        while not stop.is_set():
            value += 1
            commands[await queue("write", {"point_id": "plc.setpoint", "value": value})] = value
            if value % 7 == 0:
                commands[await queue("ack", {"alarm_id": "plc.temp:hi"})] = None
            await asyncio.sleep(0.05)

    async def cut() -> None:
        nonlocal drops
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            if rng.random() < 0.5:
                proxy.drop_all()
                drops += 1
            else:
                proxy.arm(requests=1, responses=1, probability=0.5)

    try:
        await asyncio.to_thread(agent.wait_ready)
        # enrollment spends a one-time token: let it through before the chaos starts
        await wait_for(token_file.exists, 20, "the agent to enroll")
        tasks = [asyncio.create_task(produce()), asyncio.create_task(cut())]
        while kills < KILLS:
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            agent.signal(signal.SIGKILL)
            await asyncio.to_thread(agent.proc.wait)
            kills += 1
            agent = start_agent(cfg)
            await asyncio.to_thread(agent.wait_ready)
            if kills % 7 == 0:  # and the receiver restarts too, now and then
                await receiver.stop()
                await receiver.start()
                restarts += 1
        await wait_for(
            lambda: drops + proxy.cuts["request"] + proxy.cuts["response"] >= CUTS,
            60,
            f"{CUTS} link cuts",
        )
        stop.set()
        await asyncio.gather(*tasks)
        proxy.arm()  # no more cuts: let everything settle

        async def all_final() -> bool:
            rows = await receiver.fetch(
                "SELECT count(*) AS n FROM commands WHERE gateway_id = $1 "
                "AND state = ANY($2::text[])",
                GW,
                sorted(FINAL),
            )
            return int(rows[0]["n"]) == len(commands)

        await wait_for(all_final, 45, "every command to reach a final state", poll=0.2)
    finally:
        stop.set()
        await op.aclose()
        agent.stop()
        await proxy.stop()
        await server.stop()

    rows = await receiver.fetch(
        "SELECT id, state, result FROM commands WHERE gateway_id = $1 ORDER BY id", GW
    )
    assert {r["id"] for r in rows} == set(commands)  # none lost, none invented
    states = Counter(r["state"] for r in rows)
    assert kills >= KILLS and restarts >= 2
    assert drops + proxy.cuts["request"] + proxy.cuts["response"] >= CUTS
    assert set(states) <= FINAL, states
    interrupted = 0
    for r in rows:
        value = commands[r["id"]]
        if value is None:
            assert r["state"] in {"succeeded", "refused", "failed"}, r
            continue
        count = written[value]
        assert count <= 1, f"value {value} written {count} times (command {r['id']})"
        if r["state"] == "succeeded":
            assert count == 1, f"command {r['id']} succeeded but value {value} never written"
        elif r["state"] == "refused":  # e.g. the device not answering its last poll
            assert count == 0 and "nothing was sent" in r["result"], r
        else:
            assert r["state"] == "failed" and '"interrupted"' in r["result"], r
            interrupted += 1
    writes = sum(1 for v in commands.values() if v is not None)
    assert states["succeeded"] >= writes - KILLS  # at most one interrupted action per kill
    assert interrupted <= kills
    assert sum(written.values()) <= writes
    print(
        f"\n{len(commands)} commands ({writes} writes), {kills} kills, {restarts} receiver "
        f"restarts, {drops} drops, "
        f"{proxy.cuts} cuts, states {dict(states)}, interrupted {interrupted}"
    )
