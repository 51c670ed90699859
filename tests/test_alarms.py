"""Alarm engine lifecycle, driven by real readings from a pymodbus server through the real
ModbusDriver, with a controllable clock for the timing rules (no sleeps)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from outpost.drivers.base import PointGroup
from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
from outpost.fsm.alarms import FLOOD_ID, AlarmActionRefused, AlarmEngine, UnknownAlarm
from outpost.fsm.clock import ManualClock
from outpost.fsm.config import AlarmsConfig
from outpost.fsm.persist import JsonFileStore
from outpost.point_schedules.model import AlarmPriority, DataType, Point
from outpost.point_schedules.quality import Quality
from tests.modbus_server import ModbusTestServer, start_server
from tests.modbus_server import point as mkpoint

TEMP = "cdu-01.supply_temp"
LEAK = "cdu-01.leak"
_UNREACHABLE = {int(Quality.BAD_COMM_FAILURE), int(Quality.BAD_TIMEOUT)}


def temp_point(**kw: Any) -> Point:
    base: dict[str, Any] = dict(
        scale=0.1,
        units="degC",
        alarm_hh=35.0,
        alarm_h=30.0,
        alarm_l=10.0,
        alarm_ll=5.0,
        alarm_deadband=1.0,
        alarm_priority=AlarmPriority.MEDIUM,
        tags={"equip": "cdu", "temp": ""},
    )
    base.update(kw)
    return mkpoint(TEMP, "hr:0", DataType.INT16, device="cdu-01", **base)


def leak_point() -> Point:
    return mkpoint(
        LEAK,
        "coil:0",
        DataType.BOOL,
        device="cdu-01",
        alarm_state=1.0,
        alarm_priority=AlarmPriority.CRITICAL,
        tags={"safety": ""},
    )


@dataclass
class Events:
    rows: list[tuple[float, str, str, str | None, dict[str, Any]]] = field(default_factory=list)

    def __call__(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        json.dumps(dict(detail))  # must be serialisable as the buffer stores it
        self.rows.append((ts, kind, source, actor, dict(detail)))

    def of(self, source: str) -> list[tuple[str, str, str]]:
        return [
            (k, d.get("from", ""), d.get("to", "")) for _, k, s, _, d in self.rows if s == source
        ]


@dataclass
class Rig:
    """A real Modbus device (pymodbus server) polled by the real driver; readings are fed to
    the engine the way the agent does it, stamped with the controllable clock."""

    server: ModbusTestServer
    driver: ModbusDriver
    group: PointGroup
    engine: AlarmEngine
    clock: ManualClock
    events: Events

    async def temp(self, value: float) -> None:
        await self.server.set("hr", 0, [round(value * 10) & 0xFFFF])

    async def leak(self, on: bool) -> None:
        await self.server.set("coil", 0, [on])

    async def poll(self, advance: float = 1.0) -> None:
        self.clock.advance(advance)
        result = await self.driver.read(self.group)
        ts = self.clock.now()
        ok = False
        for i, p in enumerate(self.group.points):
            q = result.quality[i]
            ok = ok or q not in _UNREACHABLE
            if p.point_id in self.engine.alarm_point_ids:
                self.engine.update(p.point_id, ts, result.value[i], q)
        self.engine.device_comms(self.group.device, ok, ts)
        self.engine.tick()

    def state(self, alarm_id: str) -> str:
        return self.engine.get(alarm_id).state


def driver_config(port: int) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(
        protocol="modbus",
        host="127.0.0.1",
        port=port,
        timeout=0.3,
        retries=0,
        reconnect_min=0.05,
        reconnect_max=0.1,
    )


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Rig] = []

    async def make(
        points: list[Point] | None = None,
        config: AlarmsConfig | None = None,
        *,
        store: bool = False,
        server: ModbusTestServer | None = None,
        clock: ManualClock | None = None,
    ) -> Rig:
        server = server or await start_server()
        points = points or [temp_point(), leak_point()]
        driver = ModbusDriver("cdu-01", driver_config(server.port))
        group = PointGroup(device="cdu-01", points=points, interval=1.0)
        driver.prepare(group)
        clock = clock or ManualClock()
        events = Events()
        engine = AlarmEngine(
            points,
            config or AlarmsConfig(),
            clock=clock,
            emit=events,
            state_store=JsonFileStore(tmp_path / "alarms.json") if store else None,
            device_poll_intervals={"cdu-01": 1.0},
        )
        rig = Rig(server, driver, group, engine, clock, events)
        made.append(rig)
        return rig

    yield make
    stopped: set[int] = set()
    for rig in made:
        await rig.driver.close()
        if id(rig.server) not in stopped:
            stopped.add(id(rig.server))
            await rig.server.stop()


async def test_full_lifecycle_with_on_delay_deadband_and_ack(make_rig: Any) -> None:
    rig: Rig = await make_rig([temp_point(alarm_delay=5.0)])
    await rig.temp(25.0)
    await rig.poll()
    assert rig.engine.list() == []
    await rig.temp(31.0)
    await rig.poll()  # condition true, on-delay running
    assert rig.state(f"{TEMP}:hi") == "normal"
    await rig.poll(advance=2)
    assert rig.state(f"{TEMP}:hi") == "normal"
    await rig.temp(29.5)  # dips before the delay ran out: the delay restarts
    await rig.poll()
    await rig.temp(31.0)
    await rig.poll()
    await rig.poll(advance=4)
    assert rig.state(f"{TEMP}:hi") == "normal"
    await rig.poll(advance=1)
    view = rig.engine.get(f"{TEMP}:hi")
    assert view.state == "unack_active"
    assert view.value == pytest.approx(31.0)
    assert view.limit == 30.0
    assert view.priority == "medium"
    assert view.activated_at == rig.clock.now()

    acked = rig.engine.ack(f"{TEMP}:hi", "alice", note="checking valve")
    assert acked.state == "ack_active"
    assert acked.acked_by == "alice"
    # back under the limit but within the deadband (30 - 1): still active
    await rig.temp(29.2)
    await rig.poll()
    assert rig.state(f"{TEMP}:hi") == "ack_active"
    await rig.temp(28.9)
    await rig.poll()
    assert rig.state(f"{TEMP}:hi") == "normal"
    assert rig.engine.list() == []

    # second episode, not acknowledged before the return: rtn_unack, then ack → normal
    await rig.temp(32.0)
    await rig.poll()
    await rig.poll(advance=5)
    assert rig.state(f"{TEMP}:hi") == "unack_active"
    await rig.temp(20.0)
    await rig.poll()
    assert rig.state(f"{TEMP}:hi") == "rtn_unack"
    assert [v.id for v in rig.engine.list()] == [f"{TEMP}:hi"]
    rig.engine.ack(f"{TEMP}:hi", "bob")
    assert rig.state(f"{TEMP}:hi") == "normal"

    assert rig.events.of(f"{TEMP}:hi") == [
        ("alarm", "normal", "unack_active"),
        ("operator.ack", "unack_active", "ack_active"),
        ("alarm", "ack_active", "normal"),
        ("alarm", "normal", "unack_active"),
        ("alarm", "unack_active", "rtn_unack"),
        ("operator.ack", "rtn_unack", "normal"),
    ]
    ack_event = next(r for r in rig.events.rows if r[1] == "operator.ack")
    assert ack_event[3] == "alice"
    assert ack_event[4]["note"] == "checking valve"
    assert ack_event[4]["point_id"] == TEMP


async def test_hihi_and_hi_both_show_with_priorities(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    await rig.temp(36.0)
    await rig.poll()
    views = {v.id: v for v in rig.engine.list()}
    assert set(views) == {f"{TEMP}:hihi", f"{TEMP}:hi"}
    assert views[f"{TEMP}:hihi"].priority == "high"  # one step above medium
    assert views[f"{TEMP}:hi"].priority == "medium"
    assert rig.engine.list()[0].id == f"{TEMP}:hihi"  # most urgent first
    await rig.temp(33.0)  # hh returns (beyond its deadband), h stays
    await rig.poll()
    assert rig.state(f"{TEMP}:hihi") == "rtn_unack"
    assert rig.state(f"{TEMP}:hi") == "unack_active"


async def test_low_limits_mirror_high_ones(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    await rig.temp(4.0)
    await rig.poll()
    assert rig.state(f"{TEMP}:lolo") == "unack_active"
    assert rig.state(f"{TEMP}:lo") == "unack_active"
    assert rig.engine.get(f"{TEMP}:lolo").priority == "high"
    await rig.temp(5.5)  # above ll but inside its deadband (5 + 1)
    await rig.poll()
    assert rig.state(f"{TEMP}:lolo") == "unack_active"
    await rig.temp(6.5)
    await rig.poll()
    assert rig.state(f"{TEMP}:lolo") == "rtn_unack"
    assert rig.state(f"{TEMP}:lo") == "unack_active"


async def test_clear_delay(make_rig: Any) -> None:
    rig: Rig = await make_rig([temp_point(alarm_clear_delay=10.0)])
    await rig.temp(31.0)
    await rig.poll()
    rig.engine.ack(f"{TEMP}:hi", "alice")
    await rig.temp(20.0)
    await rig.poll()
    await rig.poll(advance=8)
    assert rig.state(f"{TEMP}:hi") == "ack_active"
    await rig.temp(31.0)  # comes back inside the clear delay: never cleared
    await rig.poll()
    await rig.temp(20.0)
    await rig.poll()
    await rig.poll(advance=9)
    assert rig.state(f"{TEMP}:hi") == "ack_active"
    rig.clock.advance(1.5)
    rig.engine.tick()  # the delay runs out between readings: tick clears it
    assert rig.state(f"{TEMP}:hi") == "normal"


async def test_discrete_alarm(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    await rig.leak(True)
    await rig.poll()
    view = rig.engine.get(f"{LEAK}:state")
    assert (view.state, view.kind, view.priority, view.limit) == (
        "unack_active",
        "state",
        "critical",
        1.0,
    )
    await rig.leak(False)
    await rig.poll()
    assert rig.state(f"{LEAK}:state") == "rtn_unack"


async def test_bad_quality_holds_and_comms_loss_raises_after_delay(make_rig: Any) -> None:
    rig: Rig = await make_rig(config=AlarmsConfig(comms_loss_after_s=30))
    await rig.temp(31.0)
    await rig.poll()
    assert rig.state(f"{TEMP}:hi") == "unack_active"
    await rig.server.stop()
    await rig.poll()
    assert rig.state(f"{TEMP}:hi") == "unack_active"  # bad quality clears nothing
    assert rig.state("cdu-01:comms_loss") == "normal"
    await rig.poll(advance=20)
    assert rig.state("cdu-01:comms_loss") == "normal"
    await rig.poll(advance=10)
    comms = rig.engine.get("cdu-01:comms_loss")
    assert (comms.state, comms.kind, comms.priority, comms.device) == (
        "unack_active",
        "comms_loss",
        "high",
        "cdu-01",
    )
    # no stale alarm while the device is in comms-loss: one cause, one alarm
    assert rig.state(f"{TEMP}:stale") == "normal"
    rig.engine.device_comms("cdu-01", True, rig.clock.now())
    assert rig.state("cdu-01:comms_loss") == "rtn_unack"


async def test_comms_loss_clears_when_the_server_returns(make_rig: Any) -> None:
    first: Rig = await make_rig(config=AlarmsConfig(comms_loss_after_s=5))
    port = first.server.port
    await first.server.stop()
    for _ in range(3):
        await first.poll(advance=3)
    assert first.state("cdu-01:comms_loss") == "unack_active"
    from tests.modbus_server import start_server as restart

    first.server = await restart(port=port)
    for _ in range(50):  # the driver reconnects after its (short, real-time) backoff
        await asyncio.sleep(0.05)
        await first.poll(advance=1)
        if first.state("cdu-01:comms_loss") != "unack_active":
            break
    assert first.state("cdu-01:comms_loss") == "rtn_unack"


async def test_stale_alarm(make_rig: Any) -> None:
    rig: Rig = await make_rig([temp_point()], AlarmsConfig(stale_after_factor=3))
    await rig.temp(20.0)
    await rig.poll()
    # no readings for longer than 3 x 1 s poll interval (device still answering elsewhere)
    rig.clock.advance(3.5)
    rig.engine.tick()
    stale = rig.engine.get(f"{TEMP}:stale")
    assert (stale.state, stale.priority) == ("unack_active", "low")
    rig.engine.update(TEMP, rig.clock.now(), 20.0, Quality.UNCERTAIN_STALE)
    assert rig.state(f"{TEMP}:stale") == "unack_active"  # a stale value is not fresh
    await rig.poll()
    assert rig.state(f"{TEMP}:stale") == "rtn_unack"


async def test_timed_shelve_expires_and_shows_the_truth(make_rig: Any) -> None:
    rig: Rig = await make_rig(config=AlarmsConfig(stale_alarms=False))
    await rig.temp(31.0)
    await rig.poll()
    view = rig.engine.shelve(f"{TEMP}:hi", "alice", 600, note="sensor being replaced")
    assert view.state == "shelved"
    assert view.base_state == "unack_active"
    assert view.shelved_until == rig.clock.now() + 600
    assert view.to_dict()["shelved_until"].endswith("Z")
    assert [v.id for v in rig.engine.list()] == [f"{TEMP}:hi"]  # shelved stays listed
    # while shelved it keeps being evaluated: returns (→ normal, nothing to ack), comes back
    await rig.temp(20.0)
    await rig.poll()
    assert rig.engine.get(f"{TEMP}:hi").base_state == "normal"
    await rig.temp(31.0)
    await rig.poll()
    assert rig.engine.get(f"{TEMP}:hi").base_state == "unack_active"
    rig.clock.advance(597)  # two polls of 1 s happened since the shelve
    rig.engine.tick()
    assert rig.state(f"{TEMP}:hi") == "shelved"
    rig.clock.advance(1)
    rig.engine.tick()
    assert rig.state(f"{TEMP}:hi") == "unack_active"
    expiry = rig.events.rows[-1]
    assert expiry[1:4] == ("alarm", f"{TEMP}:hi", None)
    assert expiry[4]["cause"] == "shelve_expired"
    assert (expiry[4]["from"], expiry[4]["to"]) == ("shelved", "unack_active")


async def test_shelve_limits_and_unshelve(make_rig: Any) -> None:
    rig: Rig = await make_rig(config=AlarmsConfig(shelve_max_s=3600))
    with pytest.raises(AlarmActionRefused, match="exceeds the maximum of 3600s"):
        rig.engine.shelve(f"{TEMP}:hi", "alice", 3601, note="probe swap")
    with pytest.raises(AlarmActionRefused, match="must be positive"):
        rig.engine.shelve(f"{TEMP}:hi", "alice", 0, note="probe swap")
    with pytest.raises(UnknownAlarm, match="unknown alarm 'nope:hi'"):
        rig.engine.shelve("nope:hi", "alice", 60, note="probe swap")
    with pytest.raises(AlarmActionRefused, match="not shelved"):
        rig.engine.unshelve(f"{TEMP}:hi", "alice")
    rig.engine.shelve(f"{TEMP}:hi", "alice", 3600, note="probe swap")
    await rig.temp(31.0)
    await rig.poll()
    view = rig.engine.unshelve(f"{TEMP}:hi", "bob")
    assert (view.state, view.shelved, view.shelved_until) == ("unack_active", False, None)
    kinds = [(r[1], r[3]) for r in rig.events.rows if r[2] == f"{TEMP}:hi"]
    assert kinds == [("operator.shelve", "alice"), ("alarm", None), ("operator.unshelve", "bob")]


async def test_one_shot_shelve_ends_at_return_to_normal(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    await rig.temp(31.0)
    await rig.poll()
    view = rig.engine.shelve(f"{TEMP}:hi", "alice", None, note="probe swap")
    assert (view.state, view.one_shot, view.shelved_until) == ("shelved", True, None)
    rig.clock.advance(86_400)  # one-shot has no time limit
    rig.engine.tick()
    assert rig.state(f"{TEMP}:hi") == "shelved"
    await rig.temp(20.0)
    await rig.poll()
    # returned while shelved: normal, and the shelve is over
    view = rig.engine.get(f"{TEMP}:hi")
    assert (view.state, view.shelved) == ("normal", False)
    await rig.temp(31.0)
    await rig.poll()
    assert rig.state(f"{TEMP}:hi") == "unack_active"  # the next episode is annunciated


async def test_suppression_by_mode_and_its_return(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    await rig.temp(31.0)
    await rig.poll()
    rig.engine.set_suppression(lambda a: a.device == "cdu-01")
    assert rig.state(f"{TEMP}:hi") == "suppressed"
    assert rig.engine.get(f"{TEMP}:hi").to_dict()["suppressed"] is True
    assert rig.engine.get(FLOOD_ID).suppressed is False
    summary = [r for r in rig.events.rows if r[1] == "system"]
    assert summary and summary[-1][4]["suppressed_now"] >= 5
    # activations under suppression are tracked but not counted as new (flood) alarms
    await rig.leak(True)
    await rig.poll()
    leak = rig.engine.get(f"{LEAK}:state")
    assert (leak.state, leak.base_state) == ("suppressed", "unack_active")
    await rig.temp(20.0)
    await rig.poll()
    assert rig.engine.get(f"{TEMP}:hi").base_state == "normal"
    rig.engine.set_suppression(None)
    assert rig.state(f"{LEAK}:state") == "unack_active"  # the truth, at once
    assert rig.state(f"{TEMP}:hi") == "normal"
    assert rig.engine.counts()["critical"] == 1


async def test_out_of_service(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    rig.engine.set_out_of_service(f"{LEAK}:state", True, "alice", note="sensor removed")
    await rig.leak(True)
    await rig.poll()
    leak = rig.engine.get(f"{LEAK}:state")
    assert (leak.state, leak.base_state, leak.out_of_service) == (
        "out_of_service",
        "unack_active",
        True,
    )
    assert rig.engine.counts()["critical"] == 0
    with pytest.raises(AlarmActionRefused, match="out of service"):
        rig.engine.shelve(f"{LEAK}:state", "alice", 60, note="probe swap")
    with pytest.raises(AlarmActionRefused, match="already out of service"):
        rig.engine.set_out_of_service(f"{LEAK}:state", True, "alice")
    rig.engine.set_out_of_service(f"{LEAK}:state", False, "alice")
    assert rig.state(f"{LEAK}:state") == "unack_active"


async def test_flood_raises_and_clears(make_rig: Any) -> None:
    points = [
        mkpoint(f"p{i}.v", f"hr:{i}", DataType.INT16, device="cdu-01", alarm_h=10.0)
        for i in range(12)
    ]
    rig: Rig = await make_rig(points, AlarmsConfig(stale_alarms=False))
    for i in range(10):
        await rig.server.set("hr", i, [20])
        await rig.poll(advance=10)
    assert rig.state(FLOOD_ID) == "normal"  # 10 is not more than 10
    await rig.server.set("hr", 10, [20])
    await rig.poll(advance=10)
    flood = rig.engine.get(FLOOD_ID)
    assert (flood.state, flood.kind, flood.priority, flood.value) == (
        "unack_active",
        "flood",
        "high",
        11.0,
    )
    # the window slides: after 10 minutes the early activations drop out
    rig.clock.advance(600 - 10 * 10 + 1)  # first activation is now 601 s old
    rig.engine.tick()
    assert rig.engine.get(FLOOD_ID).value == 10.0
    assert rig.state(FLOOD_ID) == "unack_active"  # not below 5 yet
    rig.clock.advance(60)
    rig.engine.tick()
    assert rig.engine.get(FLOOD_ID).value == 4.0
    assert rig.state(FLOOD_ID) == "rtn_unack"


async def test_state_and_shelving_survive_a_restart(make_rig: Any, tmp_path: Path) -> None:
    # the leak alarm is critical: this site lets operators shelve critical alarms
    allow = AlarmsConfig(allow_shelve_critical=True)
    rig: Rig = await make_rig(config=allow, store=True)
    await rig.temp(31.0)
    await rig.leak(True)
    await rig.poll()
    rig.engine.shelve(f"{LEAK}:state", "alice", 3600, note="known leak, bucket placed")
    activated = rig.engine.get(f"{TEMP}:hi").activated_at
    assert (tmp_path / "alarms.json").exists()

    # "restart": a new engine from the same file, nothing read yet
    clock = ManualClock(rig.clock.now() + 30)
    again: Rig = await make_rig(config=allow, store=True, server=rig.server, clock=clock)
    hi = again.engine.get(f"{TEMP}:hi")
    assert (hi.state, hi.activated_at) == ("unack_active", activated)
    leak = again.engine.get(f"{LEAK}:state")
    assert (leak.state, leak.shelved_by, leak.shelve_note) == (
        "shelved",
        "alice",
        "known leak, bucket placed",
    )
    assert leak.shelved_until == rig.clock.now() + 3600
    again.engine.ack(f"{TEMP}:hi", "bob")  # ack after the restart
    third: Rig = await make_rig(store=True, server=rig.server, clock=clock)
    assert third.engine.get(f"{TEMP}:hi").state == "ack_active"
    assert third.engine.get(f"{TEMP}:hi").acked_by == "bob"
    # the restored shelve still expires on time
    clock.advance(3600)
    third.engine.tick()
    assert third.engine.get(f"{LEAK}:state").state == "unack_active"


async def test_corrupt_state_file_is_moved_aside(make_rig: Any, tmp_path: Path) -> None:
    (tmp_path / "alarms.json").write_text("{not json")
    rig: Rig = await make_rig(store=True)
    assert rig.engine.list() == []
    assert (tmp_path / "alarms.json.corrupt").read_text() == "{not json"


async def test_reload_keeps_state_of_alarms_that_remain(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    await rig.temp(31.0)
    await rig.leak(True)
    await rig.poll()
    rig.engine.ack(f"{TEMP}:hi", "alice")
    rig.engine.reload([temp_point(alarm_h=32.0, alarm_hh=None)])
    hi = rig.engine.get(f"{TEMP}:hi")
    assert (hi.state, hi.acked_by, hi.limit) == ("ack_active", "alice", 32.0)
    assert f"{LEAK}:state" not in rig.engine
    assert f"{TEMP}:hihi" not in rig.engine
    removed = [r for r in rig.events.rows if r[4].get("to") == "removed"]
    assert {r[2] for r in removed} == {f"{LEAK}:state"}
    assert rig.engine.alarm_point_ids == frozenset({TEMP})


async def test_views_have_the_contract_fields(make_rig: Any) -> None:
    rig: Rig = await make_rig()
    await rig.temp(31.0)
    await rig.poll()
    row = rig.engine.list()[0].to_dict()
    for key in (
        "id",
        "point_id",
        "kind",
        "state",
        "priority",
        "value",
        "limit",
        "activated_at",
        "acked_at",
        "acked_by",
        "shelved_until",
        "suppressed",
    ):
        assert key in row
    assert row["activated_at"].endswith("Z") and "T" in row["activated_at"]
    assert row["acked_at"] is None
    json.dumps(row)
    everything = rig.engine.list(include_inactive=True)
    # limits, state, stale x2, comms, flood, buffer:commit_failed
    assert len(everything) == 4 + 1 + 2 + 1 + 1 + 1
    assert rig.engine.alarm_point_ids == frozenset({TEMP, LEAK})
    assert {a.id for a in rig.engine.active_alarms()} == {f"{TEMP}:hi"}


async def test_shelve_needs_a_reason_and_critical_needs_the_config(make_rig: Any) -> None:
    """Issue 12: a shelve is an authorised, recorded act (ISA-18.2): no reason, no shelve; a
    critical alarm is shelved only where alarms.allow_shelve_critical is on."""
    rig: Rig = await make_rig()
    await rig.temp(31.0)
    await rig.leak(True)
    await rig.poll()
    for note in (None, "", "   "):
        with pytest.raises(AlarmActionRefused, match="needs a reason"):
            rig.engine.shelve(f"{TEMP}:hi", "alice", 600, note=note)
    assert rig.state(f"{TEMP}:hi") == "unack_active"
    assert not any(r[1] == "operator.shelve" for r in rig.events.rows)
    with pytest.raises(AlarmActionRefused, match="allow_shelve_critical"):
        rig.engine.shelve(f"{LEAK}:state", "alice", 600, note="bucket placed")
    assert rig.state(f"{LEAK}:state") == "unack_active"
    view = rig.engine.shelve(f"{TEMP}:hi", "alice", 600, note="sensor swap")
    assert (view.state, view.shelve_note) == ("shelved", "sensor swap")

    allowing: Rig = await make_rig(config=AlarmsConfig(allow_shelve_critical=True))
    await allowing.leak(True)
    await allowing.poll()
    view = allowing.engine.shelve(f"{LEAK}:state", "alice", 600, note="bucket placed")
    assert view.state == "shelved"
