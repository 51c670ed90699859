"""The alarm base-state transition table, every cell, against rules written out independently
of the table (ISA-18.2 figure "alarm state transition diagram", plus our overlay rule), and
each cell driven through a real engine to show the engine follows the table."""

from __future__ import annotations

import itertools

import pytest

from outpost.fsm.alarms import TRANSITIONS, AlarmEngine, AlarmState, Stimulus
from outpost.fsm.clock import ManualClock
from outpost.fsm.config import AlarmsConfig
from outpost.point_schedules.model import DataType, ModbusAddress, Point
from outpost.point_schedules.quality import Quality

S = AlarmState


def expected(state: AlarmState, stimulus: Stimulus, overlaid: bool) -> AlarmState | None:
    active = state in (S.UNACK_ACTIVE, S.ACK_ACTIVE)
    acked = state in (S.NORMAL, S.ACK_ACTIVE)
    if stimulus is Stimulus.ACK:
        if acked:
            return None  # nothing to acknowledge
        return S.ACK_ACTIVE if active else S.NORMAL
    if stimulus is Stimulus.ACTIVATE:
        if active:
            return state
        return S.UNACK_ACTIVE
    # CLEAR
    if not active:
        return state  # already returned: nothing changes, an earlier return stays unacked
    if overlaid or acked:
        return S.NORMAL
    return S.RTN_UNACK


CELLS = list(itertools.product(AlarmState, Stimulus, (False, True)))


def test_table_is_complete() -> None:
    assert set(TRANSITIONS) == set(CELLS)
    assert len(TRANSITIONS) == 24


@pytest.mark.parametrize(("state", "stimulus", "overlaid"), CELLS)
def test_every_cell_matches_the_rules(
    state: AlarmState, stimulus: Stimulus, overlaid: bool
) -> None:
    assert TRANSITIONS[(state, stimulus, overlaid)] == expected(state, stimulus, overlaid)


POINT = Point("p.t", "dev", ModbusAddress("hr", 0), DataType.INT16, alarm_h=10.0)


def _engine_in(state: AlarmState, overlaid: bool) -> tuple[AlarmEngine, ManualClock]:
    """Bring a real engine's ``p.t:hi`` into ``state`` by readings and acks."""
    clock = ManualClock()
    engine = AlarmEngine(
        [POINT], AlarmsConfig(stale_alarms=False), clock=clock, emit=lambda *a: None
    )
    path = {
        S.NORMAL: [],
        S.UNACK_ACTIVE: [20.0],
        S.ACK_ACTIVE: [20.0, "ack"],
        S.RTN_UNACK: [20.0, 0.0],
    }[state]
    for step in path:
        clock.advance(1)
        if step == "ack":
            engine.ack("p.t:hi", "tester")
        else:
            engine.update("p.t", clock.now(), float(step), Quality.GOOD)
    assert engine.get("p.t:hi").base_state == state.value
    if overlaid:
        engine.shelve("p.t:hi", "tester", None, note="maintenance")
    return engine, clock


@pytest.mark.parametrize(("state", "stimulus", "overlaid"), CELLS)
def test_engine_follows_every_cell(state: AlarmState, stimulus: Stimulus, overlaid: bool) -> None:
    engine, clock = _engine_in(state, overlaid)
    clock.advance(1)
    want = TRANSITIONS[(state, stimulus, overlaid)]
    if stimulus is Stimulus.ACK:
        if want is None:
            with pytest.raises(Exception, match="nothing to acknowledge"):
                engine.ack("p.t:hi", "tester")
        else:
            engine.ack("p.t:hi", "tester")
    else:
        value = 20.0 if stimulus is Stimulus.ACTIVATE else 0.0
        engine.update("p.t", clock.now(), value, Quality.GOOD)
    view = engine.get("p.t:hi")
    assert view.base_state == (want or state).value
    # invariant: condition active ⇔ base state active
    assert view.active == (view.base_state in ("unack_active", "ack_active"))
