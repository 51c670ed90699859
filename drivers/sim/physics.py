"""A small data hall in a few equations: IT load → power chain (PDU, UPS) and heat → CDU loop.

Signals are named like the points of ``point_schedules/examples/demo-site.csv``
(``cdu-01.supply_temp``), so what an operator forces with ``outpost sim set`` is what the agent
reads back. The model is deliberately simple but closed-loop:

- IT load: ~38 kW with a day/night swing (peak mid-afternoon), a slow random walk and noise.
  The PDU carries it on three phases; the UPS feeds the PDU; ~85 % of it ends up as heat in
  the CDU's liquid loop.
- CDU: the supply temperature is a thermal mass heated by the IT load and cooled by the
  facility water through a valve; a P controller with feed-forward holds the (writable)
  setpoint, so a setpoint write moves the temperature with a time constant of about a minute.
  Flow follows the (writable) pump speed and the pump-enable coil; no flow means no cooling.
- UPS: on mains failure it runs from its battery (charge and runtime fall with the load),
  recharges afterwards; cell degradation lowers the weakest cell's voltage and the health.

Scenarios: ``COOLING_FAILURE`` (facility water lost), ``POWER_SPIKE`` (IT load x1.5),
``MAINS_FAILURE`` (UPS on battery; chillers lose power, cooling drops to 30 %), ``UNIT_FAULT``
(target ``cdu-01``: pump trips; ``ups-01``: inverter fault; ``pdu-01``: breaker L3 trips),
``LEAK_DETECTED`` (CDU leak sensor, reservoir level drops), ``CELL_DEGRADATION`` (UPS battery).

Forcing: a forced signal reads the forced value; when the signal is a state of the model
(temperatures, battery charge) the state itself is set, so after ``release`` the physics
carries on from there (a forced hot supply cools back down towards the setpoint).
"""

from __future__ import annotations

import asyncio
import difflib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

SCENARIOS: tuple[str, ...] = (
    "COOLING_FAILURE",
    "POWER_SPIKE",
    "MAINS_FAILURE",
    "UNIT_FAULT",
    "LEAK_DETECTED",
    "CELL_DEGRADATION",
)
#: UNIT_FAULT without a target hits this unit
DEFAULT_FAULT_TARGET = "cdu-01"
FAULT_TARGETS = ("cdu-01", "ups-01", "pdu-01")

# plant constants
BASE_IT_KW = 38.0
LIQUID_FRACTION = 0.85
LOOP_HEAT_CAPACITY_KJ_PER_K = 400.0  # water + pipework of the secondary loop
CONTROLLER_GAIN_KW_PER_K = 6.0
COOLING_CAPACITY_KW = 80.0
NOMINAL_FLOW_LPM = 300.0
UPS_RATING_KW = 80.0
BATTERY_KWH = 20.0
CELLS = 240  # 40 blocks of 6 cells

#: signals the devices may write (Modbus setpoints and enables) and their plausible range
COMMANDS: dict[str, tuple[float, float]] = {
    "cdu-01.supply_setpoint": (10.0, 35.0),
    "cdu-01.pump_speed_setpoint": (0.0, 100.0),
    "cdu-01.pump_enable": (0.0, 1.0),
    "ups-01.battery_low_threshold": (5.0, 95.0),
}
#: forcing these sets the model state, not only the output
STATES = (
    "cdu-01.supply_temp",
    "cdu-01.reservoir_level",
    "ups-01.battery_charge",
    "ups-01.cell_voltage_min",
    "ups-01.battery_health",
)


@dataclass
class ActiveScenario:
    name: str
    target: str | None
    since: float
    until: float | None  # wall-clock end, None = until cleared


class UnknownSignal(KeyError):
    pass


class SitePhysics:
    def __init__(
        self,
        *,
        seed: int | None = None,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rng = random.Random(seed)
        self._clock = clock
        self._t0_wall = clock()
        self._t0_mono = time.monotonic()
        self.time_scale = time_scale
        self.forced: dict[str, float] = {}
        self.scenarios: dict[str, ActiveScenario] = {}
        self.scenario_listeners: list[Callable[[str, bool, str | None], None]] = []
        # model state
        self.commands: dict[str, float] = {
            "cdu-01.supply_setpoint": 18.0,
            "cdu-01.pump_speed_setpoint": 75.0,
            "cdu-01.pump_enable": 1.0,
            "ups-01.battery_low_threshold": 25.0,
        }
        self.load_walk = 0.0
        self.supply_temp = 18.0
        self.facility_temp = 12.0
        self.reservoir = 82.0
        self.battery_charge = 100.0
        self.cell_min = 2.27
        self.health = 98.0
        self.battery_temp = 24.5
        self.run_hours = 12_345.0
        self.cdu_heat_kwh = 1_234_567.0
        self.pdu_energy_kwh = 845_210.0
        self.ups_energy_kwh = 912_004.0
        self.signals: dict[str, float] = {}
        self.step(0.0)

    # ------------------------------------------------------------------ control
    def names(self) -> list[str]:
        return sorted(self.signals)

    def value(self, name: str) -> float:
        try:
            return self.signals[name]
        except KeyError:
            raise UnknownSignal(name) from None

    def _check(self, name: str) -> None:
        if name not in self.signals:
            close = difflib.get_close_matches(name, self.signals, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownSignal(f"unknown signal {name!r}{hint}")

    def force(self, name: str, value: float) -> None:
        self._check(name)
        self.forced[name] = float(value)
        self._apply_forced()

    def release(self, name: str | None = None) -> list[str]:
        """Release one forced signal (or all with ``None``); returns what was released."""
        if name is None:
            released = sorted(self.forced)
            self.forced.clear()
            return released
        self._check(name)
        return [name] if self.forced.pop(name, None) is not None else []

    def command(self, name: str, value: float) -> None:
        """A write from a device protocol (e.g. the agent wrote a setpoint register)."""
        if name not in COMMANDS:
            raise UnknownSignal(f"{name!r} is not writable")
        lo, hi = COMMANDS[name]
        self.commands[name] = min(max(float(value), lo), hi)
        self.signals[name] = self.commands[name]

    def set_scenario(
        self,
        name: str,
        active: bool = True,
        *,
        target: str | None = None,
        duration: float | None = None,
    ) -> None:
        name = name.upper()
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
        if name == "UNIT_FAULT":
            target = target or DEFAULT_FAULT_TARGET
        if active:
            now = self._clock()
            self.scenarios[name] = ActiveScenario(
                name, target, now, now + duration if duration else None
            )
        else:
            gone = self.scenarios.pop(name, None)
            target = target or (gone.target if gone else None)
            if name == "CELL_DEGRADATION":  # the battery string was replaced
                self.cell_min, self.health = 2.27, 98.0
        for listener in self.scenario_listeners:
            listener(name, active, target)

    def active(self, name: str, target: str | None = None) -> bool:
        s = self.scenarios.get(name)
        return s is not None and (target is None or s.target in (None, target))

    # ------------------------------------------------------------------ model
    def _hour(self) -> float:
        sim_now = self._t0_wall + (time.monotonic() - self._t0_mono) * self.time_scale
        return (sim_now % 86400.0) / 3600.0

    def step(self, dt: float) -> None:
        """Advance the model by ``dt`` seconds and recompute every signal."""
        rng = self._rng
        now = self._clock()
        for name, sc in list(self.scenarios.items()):
            if sc.until is not None and now >= sc.until:
                self.set_scenario(name, False)
        self._apply_forced()
        out: dict[str, float] = {}

        # ---- IT load
        self.load_walk += (
            rng.gauss(0.0, 0.002) * math.sqrt(max(dt, 0.0)) - self.load_walk * 0.001 * dt
        )
        self.load_walk = max(-0.06, min(0.06, self.load_walk))
        day = 1.0 + 0.15 * math.sin((self._hour() - 9.0) / 24.0 * 2.0 * math.pi)
        it_kw = BASE_IT_KW * day * (1.0 + self.load_walk) * (1.0 + rng.gauss(0.0, 0.004))
        if self.active("POWER_SPIKE"):
            it_kw *= 1.5
        mains = not self.active("MAINS_FAILURE")

        # ---- PDU (downstream of the UPS: keeps its voltage on mains failure)
        breaker_l3 = not self.active("UNIT_FAULT", "pdu-01")
        shares = (0.34, 0.33, 0.33 if breaker_l3 else 0.0)
        pdu_kw = it_kw * sum(shares) / 1.0
        pf = 0.97 + rng.gauss(0.0, 0.002)
        for i, share in enumerate(shares, start=1):
            v = 230.0 + 1.5 * math.sin(now / 700.0 + i) + rng.gauss(0.0, 0.2)
            out[f"pdu-01.voltage_l{i}"] = v
            out[f"pdu-01.current_l{i}"] = (it_kw * share * 1000.0) / (v * pf) if share else 0.0
        self.pdu_energy_kwh += pdu_kw * dt / 3600.0
        out["pdu-01.power_kw"] = pdu_kw
        out["pdu-01.power_factor"] = pf
        out["pdu-01.frequency"] = 50.0 + rng.gauss(0.0, 0.01)
        out["pdu-01.energy_kwh"] = self.pdu_energy_kwh
        out["pdu-01.breaker_l1_closed"] = 1.0
        out["pdu-01.breaker_l2_closed"] = 1.0
        out["pdu-01.breaker_l3_closed"] = 1.0 if breaker_l3 else 0.0
        out["pdu-01.breaker_trip"] = 0.0 if breaker_l3 else 1.0
        out["pdu-01.inlet_temp"] = 24.0 + 0.6 * math.sin(now / 900.0) + rng.gauss(0.0, 0.05)

        # ---- UPS
        ups_fault = self.active("UNIT_FAULT", "ups-01")
        degraded = self.active("CELL_DEGRADATION")
        ups_kw = pdu_kw / 0.96
        if degraded:
            self.cell_min = max(1.80, self.cell_min - 0.002 * dt)
            self.health = max(55.0, self.health - 0.05 * dt)
        if mains:
            self.battery_charge = min(100.0, self.battery_charge + 0.05 * dt)
        else:
            usable = BATTERY_KWH * self.health / 100.0
            self.battery_charge = max(
                0.0, self.battery_charge - ups_kw * dt / 3600.0 / usable * 100.0
            )
        usable_kwh = BATTERY_KWH * self.health / 100.0 * self.battery_charge / 100.0
        runtime_s = usable_kwh / max(ups_kw, 0.1) * 3600.0
        self.battery_temp += (
            24.5 + (5.0 if degraded else 0.0) + (2.0 if not mains else 0.0) - self.battery_temp
        ) * min(1.0, 0.01 * dt)
        cell_nominal = 2.27 if mains else 1.95 + 0.1 * self.battery_charge / 100.0
        cell_min = min(self.cell_min, cell_nominal) + rng.gauss(0.0, 0.002)
        avg_cell = cell_nominal - (2.27 - self.cell_min) / 10.0
        self.ups_energy_kwh += ups_kw * dt / 3600.0
        out["ups-01.input_voltage"] = (231.0 + rng.gauss(0.0, 0.4)) if mains else 0.0
        out["ups-01.input_frequency"] = (50.0 + rng.gauss(0.0, 0.01)) if mains else 0.0
        out["ups-01.output_voltage"] = 230.0 + rng.gauss(0.0, 0.1)
        out["ups-01.output_current"] = ups_kw * 1000.0 / 3.0 / 230.0
        out["ups-01.output_power"] = ups_kw
        out["ups-01.load_pct"] = ups_kw / UPS_RATING_KW * 100.0
        out["ups-01.battery_charge"] = self.battery_charge
        out["ups-01.battery_runtime"] = runtime_s / 60.0
        out["ups-01.battery_voltage"] = avg_cell * CELLS + rng.gauss(0.0, 0.1)
        out["ups-01.battery_temp"] = self.battery_temp + rng.gauss(0.0, 0.05)
        out["ups-01.cell_voltage_min"] = cell_min
        out["ups-01.battery_health"] = self.health
        out["ups-01.on_battery"] = 0.0 if mains else 1.0
        out["ups-01.fault"] = 1.0 if ups_fault else 0.0
        out["ups-01.battery_low"] = (
            1.0 if self.battery_charge < self.commands["ups-01.battery_low_threshold"] else 0.0
        )
        out["ups-01.battery_replace"] = 1.0 if self.health < 70.0 else 0.0
        out["ups-01.output_energy"] = self.ups_energy_kwh
        out["ups-01.inverter_temp"] = 38.0 + ups_kw / UPS_RATING_KW * 15.0 + rng.gauss(0.0, 0.1)
        out["ups-01.ambient_temp"] = 23.5 + rng.gauss(0.0, 0.05)
        out["ups-01.battery_low_threshold"] = self.commands["ups-01.battery_low_threshold"]

        # ---- CDU
        pump_fault = self.active("UNIT_FAULT", "cdu-01")
        pump_on = self.commands["cdu-01.pump_enable"] >= 0.5 and not pump_fault
        speed = self.commands["cdu-01.pump_speed_setpoint"] if pump_on else 0.0
        flow = NOMINAL_FLOW_LPM * speed / 100.0 * (1.0 + rng.gauss(0.0, 0.003)) if pump_on else 0.0
        heat_kw = it_kw * LIQUID_FRACTION
        availability = 1.0
        if self.active("COOLING_FAILURE"):
            availability = 0.0
        elif not mains:
            availability = 0.3
        facility_target = 12.0 if availability >= 1.0 else 12.0 + 13.0 * (1.0 - availability)
        self.facility_temp += (facility_target - self.facility_temp) * min(1.0, 0.02 * dt)
        capacity = COOLING_CAPACITY_KW * availability * min(1.0, flow / (NOMINAL_FLOW_LPM / 2.0))
        setpoint = self.commands["cdu-01.supply_setpoint"]
        demand = heat_kw + CONTROLLER_GAIN_KW_PER_K * (self.supply_temp - setpoint)
        cooling = max(0.0, min(demand, capacity))
        self.supply_temp += (heat_kw - cooling) / LOOP_HEAT_CAPACITY_KJ_PER_K * dt
        self.supply_temp = min(self.supply_temp, 70.0)
        leak = self.active("LEAK_DETECTED")
        if leak:
            self.reservoir = max(0.0, self.reservoir - 0.05 * dt)
        self.run_hours += dt / 3600.0 if pump_on else 0.0
        self.cdu_heat_kwh += cooling * dt / 3600.0
        supply = self.supply_temp + rng.gauss(0.0, 0.03)
        delta_t = heat_kw / (flow / 60.0 * 4.186) if flow > 1.0 else 15.0
        out["cdu-01.supply_temp"] = supply
        out["cdu-01.return_temp"] = supply + min(delta_t, 15.0)
        out["cdu-01.flow_rate"] = flow
        out["cdu-01.diff_pressure"] = 150.0 * (flow / NOMINAL_FLOW_LPM) ** 2
        out["cdu-01.valve_position"] = (
            cooling / COOLING_CAPACITY_KW * 100.0 if availability else 100.0
        )
        out["cdu-01.pump_speed"] = speed
        out["cdu-01.heat_load"] = cooling
        out["cdu-01.facility_supply_temp"] = self.facility_temp + rng.gauss(0.0, 0.02)
        out["cdu-01.reservoir_level"] = self.reservoir
        out["cdu-01.run_hours"] = self.run_hours
        out["cdu-01.dew_point"] = 11.0 + 0.5 * math.sin(now / 1800.0) + rng.gauss(0.0, 0.02)
        out["cdu-01.heat_energy"] = self.cdu_heat_kwh
        out["cdu-01.running"] = 1.0 if pump_on else 0.0
        out["cdu-01.pump_fault"] = 1.0 if pump_fault else 0.0
        out["cdu-01.leak_detected"] = 1.0 if leak else 0.0
        out["cdu-01.high_temp_warning"] = 1.0 if supply > setpoint + 5.0 else 0.0
        out["cdu-01.common_alarm"] = 1.0 if (pump_fault or leak or supply > setpoint + 5.0) else 0.0
        out["cdu-01.supply_setpoint"] = setpoint
        out["cdu-01.pump_speed_setpoint"] = self.commands["cdu-01.pump_speed_setpoint"]
        out["cdu-01.pump_enable"] = self.commands["cdu-01.pump_enable"]

        out.update(self.forced)
        self.signals = out

    def _apply_forced(self) -> None:
        f = self.forced
        if "cdu-01.supply_temp" in f:
            self.supply_temp = f["cdu-01.supply_temp"]
        if "cdu-01.reservoir_level" in f:
            self.reservoir = f["cdu-01.reservoir_level"]
        if "ups-01.battery_charge" in f:
            self.battery_charge = f["ups-01.battery_charge"]
        if "ups-01.cell_voltage_min" in f:
            self.cell_min = f["ups-01.cell_voltage_min"]
        if "ups-01.battery_health" in f:
            self.health = f["ups-01.battery_health"]
        for name in COMMANDS:
            if name in f:
                lo, hi = COMMANDS[name]
                self.commands[name] = min(max(f[name], lo), hi)
        if self.signals:
            self.signals.update(f)

    async def run(self, tick: float, after_step: Callable[[], object] | None = None) -> None:
        """Step every ``tick`` seconds until cancelled; ``after_step`` may be a coroutine fn."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.step(now - last)
            last = now
            if after_step is not None:
                result = after_step()
                if asyncio.iscoroutine(result):
                    await result
