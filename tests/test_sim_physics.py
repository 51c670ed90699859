"""The simulated site's physics on its own (pure model, stepped by hand): feedback and scenarios."""

from __future__ import annotations

import time

import pytest

from outpost.drivers.sim.physics import SCENARIOS, SitePhysics, UnknownSignal


def settled(seed: int = 5) -> SitePhysics:
    p = SitePhysics(seed=seed)
    for _ in range(120):
        p.step(1.0)
    return p


def run(p: SitePhysics, seconds: int, dt: float = 1.0) -> None:
    for _ in range(int(seconds / dt)):
        p.step(dt)


def test_steady_state_holds_the_setpoint_and_energy_counts_up() -> None:
    p = settled()
    assert p.value("cdu-01.supply_temp") == pytest.approx(18.0, abs=0.3)
    assert p.value("cdu-01.return_temp") - p.value("cdu-01.supply_temp") == pytest.approx(
        2.4, abs=1.0
    )
    e0 = p.value("pdu-01.energy_kwh")
    run(p, 60)
    assert p.value("pdu-01.energy_kwh") > e0


def test_cooling_failure_heats_the_loop_and_recovers_after_clearing() -> None:
    p = settled()
    p.set_scenario("COOLING_FAILURE")
    run(p, 180)
    hot = p.value("cdu-01.supply_temp")
    assert hot > 27.0  # above the demo schedule's alarm_h
    assert p.value("cdu-01.high_temp_warning") == 1.0
    p.set_scenario("COOLING_FAILURE", False)
    run(p, 600, dt=5.0)
    assert p.value("cdu-01.supply_temp") == pytest.approx(18.0, abs=0.5)


def test_power_spike_raises_load_everywhere_and_expires_by_itself() -> None:
    p = settled()
    before = (p.value("pdu-01.current_l1"), p.value("ups-01.load_pct"), p.value("cdu-01.heat_load"))
    p.set_scenario("POWER_SPIKE", duration=0.001)
    assert "POWER_SPIKE" in p.scenarios
    p.scenarios["POWER_SPIKE"].until = None  # hold it for the measurement below
    run(p, 200)
    after = (p.value("pdu-01.current_l1"), p.value("ups-01.load_pct"), p.value("cdu-01.heat_load"))
    for b, a in zip(before, after, strict=True):
        assert a / b == pytest.approx(1.5, rel=0.1)
    p.set_scenario("POWER_SPIKE", duration=0.001)
    time.sleep(0.01)  # durations are wall-clock seconds
    run(p, 1)
    assert "POWER_SPIKE" not in p.scenarios


def test_mains_failure_drains_the_battery_and_cuts_cooling() -> None:
    p = settled()
    p.set_scenario("MAINS_FAILURE")
    run(p, 300)
    assert p.value("ups-01.on_battery") == 1.0 and p.value("ups-01.input_voltage") == 0.0
    assert p.value("ups-01.battery_charge") < 90.0
    assert p.value("pdu-01.voltage_l1") > 220.0  # the PDU sits behind the UPS
    assert p.value("cdu-01.supply_temp") > 19.0  # chillers down to 30 %
    p.set_scenario("MAINS_FAILURE", False)
    charge = p.value("ups-01.battery_charge")
    run(p, 60)
    assert p.value("ups-01.battery_charge") > charge


def test_unit_fault_hits_only_its_target() -> None:
    p = settled()
    p.set_scenario("UNIT_FAULT")  # default target: the CDU pump
    run(p, 5)
    assert p.value("cdu-01.pump_fault") == 1.0 and p.value("cdu-01.flow_rate") == 0.0
    assert p.value("ups-01.fault") == 0.0
    p.set_scenario("UNIT_FAULT", False)
    p.set_scenario("UNIT_FAULT", target="pdu-01")
    run(p, 5)
    assert p.value("pdu-01.breaker_l3_closed") == 0.0 and p.value("pdu-01.current_l3") == 0.0
    assert p.value("pdu-01.breaker_trip") == 1.0 and p.value("cdu-01.pump_fault") == 0.0


def test_leak_and_cell_degradation() -> None:
    p = settled()
    p.set_scenario("LEAK_DETECTED")
    p.set_scenario("CELL_DEGRADATION")
    level = p.value("cdu-01.reservoir_level")
    run(p, 600, dt=2.0)
    assert p.value("cdu-01.leak_detected") == 1.0
    assert p.value("cdu-01.reservoir_level") < level - 10
    assert p.value("ups-01.cell_voltage_min") < 2.0
    assert p.value("ups-01.battery_health") < 70.0 and p.value("ups-01.battery_replace") == 1.0
    p.set_scenario("CELL_DEGRADATION", False)
    run(p, 2)
    assert p.value("ups-01.cell_voltage_min") > 2.2


def test_forcing_a_state_carries_on_from_there_after_release() -> None:
    p = settled()
    p.force("cdu-01.supply_temp", 30.0)
    run(p, 10)
    assert p.value("cdu-01.supply_temp") == 30.0
    assert p.release("cdu-01.supply_temp") == ["cdu-01.supply_temp"]
    p.step(1.0)
    assert 28.0 < p.value("cdu-01.supply_temp") < 30.0  # cooling down from the forced value
    with pytest.raises(UnknownSignal, match="did you mean"):
        p.force("cdu-01.suply_temp", 1.0)
    with pytest.raises(ValueError, match="unknown scenario"):
        p.set_scenario("EARTHQUAKE")
    assert len(SCENARIOS) == 6


def test_commands_are_clamped_to_a_plausible_range() -> None:
    p = settled()
    p.command("cdu-01.supply_setpoint", 99.0)
    assert p.value("cdu-01.supply_setpoint") == 35.0
    with pytest.raises(UnknownSignal, match="not writable"):
        p.command("cdu-01.supply_temp", 10.0)
