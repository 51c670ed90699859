"""The mode machine: every transition of the default graph, maintenance with expiry and
suppression of the real alarm engine, emergency failsafe writes received by a real pymodbus
server, custom modes from config, persistence across a restart, and the printed graph."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from outpost.agent.control.writes import WriteService
from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
from outpost.fsm.alarms import AlarmEngine
from outpost.fsm.clock import ManualClock
from outpost.fsm.config import AlarmsConfig, ModesConfig
from outpost.fsm.modes import ModeMachine, ModeRefused
from outpost.fsm.persist import JsonFileStore
from outpost.point_schedules.model import AlarmPriority, DataType, Point
from outpost.point_schedules.quality import Quality
from tests.modbus_server import ModbusTestServer, start_server
from tests.modbus_server import point as mkpoint

GOOD = Quality.GOOD


@dataclass
class Events:
    rows: list[tuple[float, str, str, str | None, dict[str, Any]]] = field(default_factory=list)

    def __call__(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None:
        self.rows.append((ts, kind, source, actor, dict(detail)))

    def last_mode(self) -> tuple[str, str, str | None, dict[str, Any]]:
        row = [r for r in self.rows if r[1] in ("mode", "operator.mode")][-1]
        return row[1], row[2], row[3], row[4]

    def transitions(self) -> list[tuple[str, str]]:
        return [
            (d["from"], d["to"])
            for _, k, _, _, d in self.rows
            if k in ("mode", "operator.mode") and d["from"] != d["to"]
        ]


POINTS = [
    mkpoint("cdu-01.supply_temp", "hr:0", DataType.INT16, device="cdu-01", alarm_h=30.0),
    mkpoint(
        "cdu-01.leak",
        "coil:0",
        DataType.BOOL,
        device="cdu-01",
        alarm_state=1.0,
        alarm_priority=AlarmPriority.CRITICAL,
        tags={"safety": ""},
    ),
    mkpoint("ups-1.load", "hr:0", DataType.UINT16, device="ups-1", alarm_h=90.0),
]


@dataclass
class Site:
    clock: ManualClock
    events: Events
    alarms: AlarmEngine
    modes: ModeMachine
    down: set[str] = field(default_factory=set)
    age: float | None = 0.0

    def read(self, point_id: str, value: float) -> None:
        self.alarms.update(point_id, self.clock.now(), value, GOOD)

    async def tick(self, advance: float = 1.0, **values: float) -> str:
        self.clock.advance(advance)
        self.alarms.tick()
        return await self.modes.evaluate(
            devices_in_comms_loss=set(self.down),
            uplink_ok_age_s=self.age,
            active_alarms=self.alarms.active_alarms(),
            point_values=values,
        )


def make_site(
    tmp_path: Path,
    config: ModesConfig | None = None,
    *,
    write: Any = None,
    has_uplink: bool = False,
    clock: ManualClock | None = None,
    events: Events | None = None,
) -> Site:
    clock = clock or ManualClock()
    events = events or Events()
    alarms = AlarmEngine(POINTS, AlarmsConfig(stale_alarms=False), clock=clock, emit=events)
    modes = ModeMachine(
        config or ModesConfig(),
        clock=clock,
        emit=events,
        write=write,
        has_uplink=has_uplink,
        state_store=JsonFileStore(tmp_path / "mode.json"),
        on_suppression=alarms.set_suppression,
    )
    return Site(clock, events, alarms, modes)


async def test_every_default_transition(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    assert site.modes.mode == "starting"
    assert await site.tick() == "normal"  # starting → normal
    site.down.add("ups-1")
    assert await site.tick() == "degraded"  # normal → degraded
    site.down.clear()
    assert await site.tick() == "normal"  # degraded → normal
    await site.modes.set_maintenance(3600, "filter change", "alice")  # normal → maintenance
    await site.modes.set_maintenance(7200, "filter change, longer", "alice")  # extend
    site.down.add("ups-1")
    assert await site.tick() == "maintenance"  # health is tracked during maintenance
    await site.modes.clear("alice")  # maintenance → degraded
    await site.modes.set_maintenance(60, "x", "alice")  # degraded → maintenance
    site.down.clear()
    await site.tick()
    await site.modes.clear("alice")  # maintenance → normal
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"  # normal → emergency
    site.read("cdu-01.leak", 0)
    await site.tick()
    await site.modes.clear("bob", "leak fixed")  # emergency → normal
    site.down.add("ups-1")
    assert await site.tick() == "degraded"
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"  # degraded → emergency
    site.read("cdu-01.leak", 0)
    await site.tick()
    await site.modes.clear("bob", "leak fixed")  # emergency → degraded
    assert site.modes.mode == "degraded"
    await site.modes.set_maintenance(60, "x", "alice")
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"  # maintenance → emergency (in_maintenance)

    second = make_site(tmp_path / "b")
    second.down.add("ups-1")
    assert await second.tick() == "degraded"  # starting → degraded
    third = make_site(tmp_path / "c")
    await third.modes.set_maintenance(60, "x", "alice")  # starting → maintenance
    fourth = make_site(tmp_path / "d")
    fourth.read("cdu-01.leak", 1)
    assert await fourth.tick() == "emergency"  # starting → emergency
    seen = set()
    for s in (site, second, third, fourth):
        seen |= set(s.events.transitions())
    builtin = {
        ("starting", "normal"),
        ("starting", "degraded"),
        ("normal", "degraded"),
        ("degraded", "normal"),
        ("starting", "maintenance"),
        ("normal", "maintenance"),
        ("degraded", "maintenance"),
        ("maintenance", "normal"),
        ("maintenance", "degraded"),
        ("starting", "emergency"),
        ("normal", "emergency"),
        ("degraded", "emergency"),
        ("maintenance", "emergency"),
        ("emergency", "normal"),
        ("emergency", "degraded"),
    }
    assert {(e.source, e.dest) for e in site.modes._edges} - {
        ("maintenance", "maintenance")
    } == builtin | {("emergency", "maintenance")}
    assert seen == builtin  # emergency → maintenance: test_maintenance_resumes_after_emergency
    assert ("maintenance", "maintenance") in {
        (d["from"], d["to"]) for _, k, _, _, d in site.events.rows if k == "operator.mode"
    }


async def test_transition_events_carry_cause_and_actor(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    await site.tick()
    site.down.update({"ups-1", "cdu-01"})
    await site.tick()
    kind, source, actor, detail = site.events.last_mode()
    assert (kind, source, actor) == ("mode", "degraded", None)
    assert detail["cause"] == "comms-loss: cdu-01, ups-1"
    await site.modes.set_maintenance(7200, "CDU filter change", "alice", scope="cdu-01")
    kind, source, actor, detail = site.events.last_mode()
    assert (kind, source, actor) == ("operator.mode", "maintenance", "alice")
    assert detail["reason"] == "CDU filter change"
    assert detail["until"].endswith("Z")
    assert detail["scope"] == "cdu-01"
    state = site.modes.state()
    assert (state["mode"], state["reason"], state["actor"], state["scope"]) == (
        "maintenance",
        "CDU filter change",
        "alice",
        "cdu-01",
    )


async def test_uplink_down_degrades_only_when_configured(tmp_path: Path) -> None:
    site = make_site(tmp_path, ModesConfig(degraded_uplink_after_s=300), has_uplink=True)
    site.age = None  # never synced yet: counted from start
    assert await site.tick() == "normal"
    assert await site.tick(advance=300) == "degraded"
    site.age = 5.0
    assert await site.tick() == "normal"
    site.age = 301.0
    assert await site.tick() == "degraded"
    assert "uplink: no successful sync for 5m1s" in site.events.last_mode()[3]["cause"]
    edge_only = make_site(tmp_path / "e", has_uplink=False)
    edge_only.age = None
    assert await edge_only.tick(advance=10_000) == "normal"


async def test_maintenance_suppresses_its_scope_and_expires(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    await site.tick()
    site.read("cdu-01.supply_temp", 35)
    site.read("ups-1.load", 95)
    await site.modes.set_maintenance(2 * 3600, "CDU filter change", "alice", scope=["cdu-01"])
    assert site.alarms.get("cdu-01.supply_temp:hi").state == "suppressed"
    assert site.alarms.get("cdu-01:comms_loss").suppressed is True
    assert site.alarms.get("ups-1.load:hi").state == "unack_active"  # out of scope
    assert site.alarms.get("system:flood").suppressed is False
    assert await site.tick(advance=2 * 3600 - 2) == "maintenance"
    assert await site.tick(advance=2) == "normal"
    assert site.events.last_mode()[3]["cause"] == "maintenance expired"
    # suppression ends with maintenance: the truth at once
    assert site.alarms.get("cdu-01.supply_temp:hi").state == "unack_active"


async def test_maintenance_by_tag_scope(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    await site.modes.set_maintenance(600, "testing leak sensor", "alice", scope="tag:safety")
    assert site.alarms.get("cdu-01.leak:state").suppressed is True
    assert site.alarms.get("cdu-01.supply_temp:hi").suppressed is False


async def test_maintenance_refusals(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    await site.tick()
    with pytest.raises(ModeRefused, match="needs a reason"):
        await site.modes.set_maintenance(60, "  ", "alice")
    with pytest.raises(ModeRefused, match="exceeds the maximum 7d"):
        await site.modes.set_maintenance(8 * 86400, "long job", "alice")
    with pytest.raises(ModeRefused, match="nothing to clear: the mode is normal"):
        await site.modes.clear("alice")
    site.read("cdu-01.leak", 1)
    await site.tick()
    with pytest.raises(ModeRefused, match="site is in emergency"):
        await site.modes.set_maintenance(60, "x", "alice")


@pytest.fixture
async def device() -> AsyncIterator[tuple[ModbusTestServer, ModbusDriver]]:
    server = await start_server()
    driver = ModbusDriver(
        "cdu-01",
        ModbusDeviceConfig(protocol="modbus", host="127.0.0.1", port=server.port, timeout=0.5),
    )
    yield server, driver
    await driver.close()
    await server.stop()


def failsafe_config(**emergency: Any) -> ModesConfig:
    return ModesConfig.model_validate(
        {
            "emergency": {
                "trigger_tags": ["safety"],
                "trigger_priorities": ["critical"],
                "failsafe_writes": [
                    {"point": "cdu-01.pump_enable", "value": 0},
                    {"point": "cdu-01.valve", "value": 100},
                    {"point": "cdu-01.readonly", "value": 1},
                    {"point": "cdu-01.setpoint", "value": 18.5},
                ],
                **emergency,
            }
        }
    )


def write_points() -> dict[str, Point]:
    pts = [
        mkpoint("cdu-01.pump_enable", "coil:1", DataType.BOOL, device="cdu-01", writable=True),
        mkpoint("cdu-01.valve", "hr:20", DataType.UINT16, device="cdu-01", writable=True),
        mkpoint("cdu-01.readonly", "hr:21", DataType.UINT16, device="cdu-01"),
        mkpoint(
            "cdu-01.setpoint",
            "hr:22",
            DataType.FLOAT32,
            device="cdu-01",
            writable=True,
            units="degC",
        ),
    ]
    return {p.point_id: p for p in pts}


async def test_emergency_runs_failsafe_writes_the_device_receives(
    tmp_path: Path, device: tuple[ModbusTestServer, ModbusDriver]
) -> None:
    server, driver = device
    await server.set("coil", 1, [True])
    events = Events()
    clock = ManualClock()
    writes = WriteService(
        write_points(), {"cdu-01": driver}, emit=events, device_up=lambda d: True, clock=clock
    )

    async def write(point_id: str, value: float, actor: str) -> Any:
        return await writes.write(point_id, value, actor=actor)

    site = make_site(tmp_path, failsafe_config(), write=write, clock=clock, events=events)
    await site.tick()
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"
    # the device really got them, in order, each verified
    assert (await server.get("coil", 1, 1))[0] is False
    assert await server.get("hr", 20, 1) == [100]
    assert await server.get("hr", 21, 1) == [0]  # refused: not writable, nothing sent
    assert await server.get("hr", 22, 2) == [0x4194, 0x0000]  # 18.5 as float32 ABCD
    write_events = [r for r in events.rows if r[1] == "write"]
    assert [(r[2], r[3], r[4]["result"]) for r in write_events] == [
        ("cdu-01.pump_enable", "mode:emergency", "ok"),
        ("cdu-01.valve", "mode:emergency", "ok"),
        ("cdu-01.readonly", "mode:emergency", "refused"),
        ("cdu-01.setpoint", "mode:emergency", "ok"),
    ]
    mode_events = [r for r in events.rows if r[1] == "mode" and r[2] == "emergency"]
    assert mode_events[0][4]["cause"] == "alarm cdu-01.leak:state (critical) active"
    summary = mode_events[-1][4]
    assert (summary["ok"], summary["failed"]) == (3, 1)
    assert [w["result"] for w in site.modes.state()["failsafe_writes"]] == [
        "ok",
        "ok",
        "refused",
        "ok",
    ]
    # left only by an operator, and only once the condition is gone
    with pytest.raises(ModeRefused, match=r"still active: alarm cdu-01\.leak:state"):
        await site.modes.clear("bob", "leak fixed")
    site.read("cdu-01.leak", 0)
    assert await site.tick() == "emergency"  # no auto clear by default
    state = await site.modes.clear("bob", "leak fixed")
    assert state["mode"] == "normal"
    assert events.rows[-1][1:4] == ("operator.mode", "normal", "bob")


async def test_emergency_auto_clear(tmp_path: Path) -> None:
    site = make_site(tmp_path, ModesConfig.model_validate({"emergency": {"auto_clear": True}}))
    await site.tick()
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"
    assert site.modes.state()["failsafe_writes"] == []  # none configured
    site.read("cdu-01.leak", 0)
    assert await site.tick() == "normal"
    assert site.events.last_mode()[3]["cause"] == "emergency condition cleared"


async def test_out_of_service_or_non_matching_alarms_do_not_trigger(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    await site.tick()
    site.read("cdu-01.supply_temp", 40)  # medium, no safety tag
    assert await site.tick() == "normal"
    site.alarms.set_out_of_service("cdu-01.leak:state", True, "alice")
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "normal"


async def test_custom_mode_from_config(
    tmp_path: Path, device: tuple[ModbusTestServer, ModbusDriver]
) -> None:
    server, driver = device
    config = ModesConfig.model_validate(
        {
            "custom": [
                {
                    "name": "high_load",
                    "description": "UPS heavily loaded: shed non-critical cooling",
                    "triggers": [
                        {"on": "alarm", "id": "ups-1.load:*"},
                        {"on": "point", "point": "ups-1.output_kw", "op": ">=", "value": 80},
                    ],
                    "entry_writes": [{"point": "cdu-01.valve", "value": 55}],
                }
            ]
        }
    )
    clock = ManualClock()
    events = Events()
    writes = WriteService(
        write_points(), {"cdu-01": driver}, emit=events, device_up=lambda d: True, clock=clock
    )

    async def write(point_id: str, value: float, actor: str) -> Any:
        return await writes.write(point_id, value, actor=actor)

    site = make_site(tmp_path, config, write=write, clock=clock, events=events)
    assert "high_load" in site.modes.modes
    await site.tick()
    assert await site.tick(**{"ups-1.output_kw": 85.0}) == "high_load"
    assert await server.get("hr", 20, 1) == [55]
    assert "ups-1.output_kw >= 80 (value 85)" in site.modes.state()["cause"]
    assert await site.tick(**{"ups-1.output_kw": 70.0}) == "normal"  # auto clear
    site.read("ups-1.load", 95)
    assert await site.tick() == "high_load"
    assert site.modes.state()["cause"] == "alarm ups-1.load:hi active"
    # emergency outranks a custom mode
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"


def test_custom_mode_config_errors() -> None:
    with pytest.raises(ValueError, match="is a built-in mode"):
        ModesConfig.model_validate(
            {"custom": [{"name": "normal", "triggers": [{"on": "alarm", "id": "x"}]}]}
        )
    with pytest.raises(ValueError, match="exit_to: 'emergency'"):
        ModesConfig.model_validate(
            {
                "custom": [
                    {"name": "a", "triggers": [{"on": "alarm"}], "exit_to": "emergency"},
                ]
            }
        )
    with pytest.raises(ValueError, match="on"):
        ModesConfig.model_validate({"custom": [{"name": "a", "triggers": [{"on": "weather"}]}]})


async def test_mode_survives_restart_where_it_should(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    await site.tick()
    site.read("cdu-01.supply_temp", 35)
    await site.modes.set_maintenance(3600, "filter change", "alice")
    # restart 10 minutes later: still maintenance, same expiry and reason, suppression back
    clock = ManualClock(site.clock.now() + 600)
    again = make_site(tmp_path, clock=clock)
    again.read("cdu-01.supply_temp", 35)
    state = again.modes.state()
    assert (state["mode"], state["reason"], state["actor"]) == (
        "maintenance",
        "filter change",
        "alice",
    )
    assert state["until"] == site.modes.state()["until"]
    assert again.alarms.get("cdu-01.supply_temp:hi").state == "suppressed"
    assert "restored after restart" in again.events.last_mode()[3]["cause"]
    # a restart after the expiry: back to starting, then evaluated
    late = make_site(tmp_path, clock=ManualClock(site.clock.now() + 3601))
    assert late.modes.mode == "starting"
    assert await late.tick() == "normal"


async def test_emergency_survives_restart_degraded_is_re_evaluated(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    site.down.add("ups-1")
    assert await site.tick() == "degraded"
    restarted = make_site(tmp_path, clock=ManualClock(site.clock.now() + 5))
    assert restarted.modes.mode == "starting"
    assert await restarted.tick() == "normal"  # ups-1 is back: not degraded any more
    restarted.read("cdu-01.leak", 1)
    assert await restarted.tick() == "emergency"
    again = make_site(tmp_path, clock=ManualClock(restarted.clock.now() + 5))
    assert again.modes.mode == "emergency"


def test_graph_text_and_mermaid(tmp_path: Path) -> None:
    config = ModesConfig.model_validate(
        {"custom": [{"name": "high_load", "triggers": [{"on": "alarm", "id": "ups-1.load:hi"}]}]}
    )
    site = make_site(tmp_path, config)
    text = site.modes.graph("text")
    assert text.startswith("modes (current: starting)")
    assert "* starting" in text
    assert "--degrade--> degraded" in text
    assert "--emergency--> emergency" in text
    assert "--enter_high_load--> high_load" in text
    mermaid = site.modes.graph("mermaid")
    assert mermaid.startswith("stateDiagram-v2\n    [*] --> starting\n")
    assert "    normal --> degraded : degrade device comms-loss or uplink down" in mermaid
    assert "    emergency --> normal : clear_emergency [healthy]" in mermaid
    assert "    high_load --> normal : exit_high_load [healthy]" in mermaid
    with pytest.raises(ValueError, match="unknown graph format"):
        site.modes.graph("dot")


async def test_maintenance_resumes_after_emergency(tmp_path: Path) -> None:
    """An emergency interrupts maintenance; when it clears before the window ends, the window
    (reason, owner, expiry, scope) resumes — also across a restart during the emergency."""
    site = make_site(tmp_path)
    await site.tick()
    await site.modes.set_maintenance(3600, "filter change", "alice", scope=["ups-1"])
    until = site.modes.state()["until"]
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"
    # restart in the middle of the emergency: the paused window is remembered
    restarted = make_site(tmp_path, clock=ManualClock(site.clock.now() + 10))
    assert restarted.modes.mode == "emergency"
    restarted.read("cdu-01.leak", 0)
    await restarted.tick()
    state = await restarted.modes.clear("bob", "leak fixed")
    assert (state["mode"], state["reason"], state["actor"], state["until"]) == (
        "maintenance",
        "filter change",
        "alice",
        until,
    )
    assert state["scope"] == site.modes.state()["scope"] or "ups-1" in str(state["scope"])
    kind, mode, actor, detail = restarted.events.last_mode()
    assert (kind, mode, actor) == ("operator.mode", "maintenance", "bob")
    assert detail["cause"] == "operator; maintenance resumes"
    # the resumed window still expires on time
    restarted.clock.advance(3600)
    assert await restarted.tick() == "normal"


async def test_emergency_after_maintenance_expired_goes_to_normal(tmp_path: Path) -> None:
    site = make_site(tmp_path, ModesConfig.model_validate({"emergency": {"auto_clear": True}}))
    await site.tick()
    await site.modes.set_maintenance(60, "short job", "alice")
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"
    site.clock.advance(120)  # the window ended during the emergency
    site.read("cdu-01.leak", 0)
    assert await site.tick() == "normal"
    assert site.events.last_mode()[3]["cause"] == "emergency condition cleared"


async def test_restored_emergency_reasserts_failsafe_writes(
    tmp_path: Path, device: tuple[ModbusTestServer, ModbusDriver]
) -> None:
    """After a restart in emergency the failsafe writes run again (someone may have restarted
    the pump by hand while the agent was down), and the event says so."""
    server, driver = device
    events = Events()
    clock = ManualClock()
    writes = WriteService(
        write_points(), {"cdu-01": driver}, emit=events, device_up=lambda d: True, clock=clock
    )

    async def write(point_id: str, value: float, actor: str) -> Any:
        return await writes.write(point_id, value, actor=actor)

    site = make_site(tmp_path, failsafe_config(), write=write, clock=clock, events=events)
    await site.tick()
    site.read("cdu-01.leak", 1)
    assert await site.tick() == "emergency"
    assert await server.get("hr", 20, 1) == [100]
    await server.set("hr", 20, [7])  # changed by hand while the agent is down
    restarted_events = Events()
    restarted = make_site(
        tmp_path, failsafe_config(), write=write, clock=clock, events=restarted_events
    )
    assert restarted.modes.mode == "emergency"
    assert await server.get("hr", 20, 1) == [7]  # nothing written before the first evaluation
    restarted.read("cdu-01.leak", 1)
    assert await restarted.tick() == "emergency"
    assert await server.get("hr", 20, 1) == [100]
    summary = [r for r in restarted_events.rows if r[1] == "mode" and "writes" in r[4]]
    assert len(summary) == 1
    assert summary[0][4]["cause"] == "failsafe writes re-asserted after restart"
    # only once: later evaluations do not write again
    await server.set("hr", 20, [8])
    await restarted.tick()
    assert await server.get("hr", 20, 1) == [8]
