"""The simulated site: every configured simulator plus the shared physics and a control endpoint.

``outpost sim`` runs ``run_site``; tests use ``SimSite`` directly (``port = 0`` everywhere, then
read ``site.endpoints`` / ``site.control`` once ``ready`` is set).

Simulators plug in by ``kind`` (see ``SimDeviceConfig``). Each one is a coroutine
``serve(started)`` that starts serving, calls ``started(endpoint)`` once it listens, and runs
until cancelled; a simulator that fails is logged and the rest of the site keeps running.
Scenario changes reach the simulators through ``SitePhysics.scenario_listeners``.

Control endpoint: TCP on loopback, one JSON object per line each way::

    {"op": "status"}
    {"op": "set", "signal": "cdu-01.supply_temp", "value": 35}
    {"op": "release", "signal": "cdu-01.supply_temp"}        (no "signal": release all)
    {"op": "scenario", "name": "COOLING_FAILURE", "active": true, "target": null, "duration": null}

Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tomllib
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from outpost.drivers.sim.physics import SCENARIOS, SitePhysics, UnknownSignal

log = structlog.get_logger(__name__)

DEFAULT_CONFIG_NAME = "demo-site.toml"


# ---------------------------------------------------------------------------------- config
class _SimBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusSimConfig(_SimBase):
    kind: Literal["modbus-cdu", "modbus-ups", "modbus-pdu"]
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    unit_id: int = Field(1, ge=1, le=247)
    signals: str | None = Field(
        None, description="physics signal prefix; default: cdu-01 / ups-01 / pdu-01 by kind"
    )


class BacnetSimConfig(_SimBase):
    kind: Literal["bacnet-ahu"]
    address: str = "127.0.0.1:47809"
    device_instance: int = Field(1001, ge=0, le=4194302)


class SnmpSimConfig(_SimBase):
    kind: Literal["snmp-pdu"]
    host: str = "127.0.0.1"
    port: int = Field(16161, ge=0, le=65535)
    community: str = "public"


class MqttSimConfig(_SimBase):
    """Rack sensors publishing to a broker (the broker is not part of the sim)."""

    kind: Literal["mqtt-sensors"]
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    racks: int = Field(8, ge=1, le=99)
    interval: float = Field(1.0, gt=0)


SimDeviceConfig = Annotated[
    ModbusSimConfig | BacnetSimConfig | SnmpSimConfig | MqttSimConfig,
    Field(discriminator="kind"),
]


class SimConfig(_SimBase):
    """The simulated site (TOML). Default: ``drivers/sim/demo-site.toml``."""

    control: str = Field("127.0.0.1:15029", description="host:port of the control endpoint")
    tick: float = Field(1.0, gt=0, le=60, description="physics step, seconds")
    seed: int | None = None
    time_scale: float = Field(1.0, gt=0, description="speed of the day/night cycle")
    devices: dict[str, SimDeviceConfig] = Field(default_factory=dict)


class SimConfigError(ValueError):
    pass


def load_sim_config(path: str | Path | None = None) -> SimConfig:
    """Read a sim config; ``None`` → the packaged demo site. Errors name the file and key."""
    if path is None:
        text = (
            resources.files("outpost.drivers.sim").joinpath(DEFAULT_CONFIG_NAME).read_text("utf-8")
        )
        name = f"drivers/sim/{DEFAULT_CONFIG_NAME}"
    else:
        name = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise SimConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError(f"{name}: {exc}") from None
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{name}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        ]
        raise SimConfigError("\n".join(problems)) from None


def split_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return default_host, int(text)
    return host or default_host, int(port)


# ---------------------------------------------------------------------------------- simulators
Started = Callable[[str], None]
Serve = Callable[[Started], Awaitable[None]]

_SIGNAL_PREFIX = {"modbus-cdu": "cdu-01", "modbus-ups": "ups-01", "modbus-pdu": "pdu-01"}


def _modbus_sim(name: str, cfg: ModbusSimConfig, physics: SitePhysics, site: SimSite) -> Serve:
    from outpost.drivers.sim.modbus_devices import MODELS, ModbusSimDevice

    model = MODELS[cfg.kind.removeprefix("modbus-")]
    prefix = cfg.signals or _SIGNAL_PREFIX[cfg.kind]
    device = ModbusSimDevice(
        prefix, model, physics, host=cfg.host, port=cfg.port, unit_id=cfg.unit_id
    )
    site.modbus[name] = device

    async def serve(started: Started) -> None:
        await device.start()
        try:
            started(device.endpoint)
            await asyncio.Event().wait()
        finally:
            await device.stop()

    return serve


def _bacnet_sim(name: str, cfg: BacnetSimConfig, physics: SitePhysics, site: SimSite) -> Serve:
    from outpost.drivers.sim.bacnet_ahu import SCENARIOS as AHU_SCENARIOS
    from outpost.drivers.sim.bacnet_ahu import BacnetAhu

    ahu = BacnetAhu(cfg.address, cfg.device_instance)

    def on_scenario(scenario: str, active: bool, target: str | None) -> None:
        if scenario in AHU_SCENARIOS and (target in (None, name) or scenario != "UNIT_FAULT"):
            ahu.set_scenario(scenario if active else None)

    async def serve(started: Started) -> None:
        await ahu.start()
        physics.scenario_listeners.append(on_scenario)
        try:
            started(cfg.address)
            await asyncio.Event().wait()
        finally:
            physics.scenario_listeners.remove(on_scenario)
            await ahu.stop()

    return serve


def _snmp_sim(name: str, cfg: SnmpSimConfig, physics: SitePhysics, site: SimSite) -> Serve:
    from outpost.drivers.sim.snmp_pdu import SCENARIOS as PDU_SCENARIOS
    from outpost.drivers.sim.snmp_pdu import PduModel, serve_snmp_pdu

    model = PduModel()

    def on_scenario(scenario: str, active: bool, target: str | None) -> None:
        if scenario in PDU_SCENARIOS and (scenario != "UNIT_FAULT" or target == name):
            model.scenario = scenario if active else None

    async def serve(started: Started) -> None:
        physics.scenario_listeners.append(on_scenario)
        try:
            await serve_snmp_pdu(
                cfg.host,
                cfg.port,
                model=model,
                community=cfg.community,
                ready=lambda port: started(f"{cfg.host}:{port}"),
            )
        finally:
            physics.scenario_listeners.remove(on_scenario)

    return serve


def _mqtt_sim(name: str, cfg: MqttSimConfig, physics: SitePhysics, site: SimSite) -> Serve:
    from outpost.drivers.sim.mqtt_sensors import RackSensorsModel, run_mqtt_sensors

    model = RackSensorsModel(racks=cfg.racks)

    def on_scenario(scenario: str, active: bool, target: str | None) -> None:
        if scenario in ("COOLING_FAILURE", "LEAK_DETECTED"):
            model.scenario = scenario if active else None

    async def serve(started: Started) -> None:
        physics.scenario_listeners.append(on_scenario)
        try:
            # a publisher has nothing to listen on: it counts as started once launched
            started(f"mqtt://{cfg.host}:{cfg.port}")
            await run_mqtt_sensors(
                cfg.host, cfg.port, racks=cfg.racks, interval=cfg.interval, model=model
            )
        finally:
            physics.scenario_listeners.remove(on_scenario)

    return serve


_FACTORIES: dict[str, Callable[[str, Any, SitePhysics, SimSite], Serve]] = {
    "modbus-cdu": _modbus_sim,
    "modbus-ups": _modbus_sim,
    "modbus-pdu": _modbus_sim,
    "bacnet-ahu": _bacnet_sim,
    "snmp-pdu": _snmp_sim,
    "mqtt-sensors": _mqtt_sim,
}


# ---------------------------------------------------------------------------------- the site
class SimSite:
    def __init__(self, config: SimConfig, physics: SitePhysics | None = None) -> None:
        self.config = config
        self.physics = physics or SitePhysics(seed=config.seed, time_scale=config.time_scale)
        self.endpoints: dict[str, str] = {}
        self.kinds: dict[str, str] = {name: dev.kind for name, dev in config.devices.items()}
        self.failed: dict[str, str] = {}
        self.modbus: dict[str, Any] = {}  # name → ModbusSimDevice (refreshed every tick)
        self.control: str = ""

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve everything until cancelled; ``ready`` is set once every simulator listens
        (or has failed) and the control endpoint is up."""
        pending = {name for name in self.config.devices}
        all_started = asyncio.Event()
        if not pending:
            all_started.set()

        def settled(name: str) -> None:
            pending.discard(name)
            if not pending:
                all_started.set()

        host, port = split_hostport(self.config.control)
        control = await asyncio.start_server(self._client, host, port)
        bound = control.sockets[0].getsockname()[1]
        self.control = f"{host}:{bound}"
        try:
            async with asyncio.TaskGroup() as tg:
                for name, dev in self.config.devices.items():
                    tg.create_task(self._supervise(name, dev, settled), name=f"sim:{name}")
                tg.create_task(
                    self.physics.run(self.config.tick, self._refresh), name="sim:physics"
                )
                await all_started.wait()
                log.info(
                    "sim.ready",
                    devices=self.endpoints,
                    failed=self.failed or None,
                    control=self.control,
                )
                if ready is not None:
                    ready.set()
        finally:
            control.close()
            with contextlib.suppress(Exception):
                await control.wait_closed()

    async def _supervise(self, name: str, dev: Any, settled: Callable[[str], None]) -> None:
        def started(endpoint: str) -> None:
            self.endpoints[name] = endpoint
            settled(name)

        try:
            serve = _FACTORIES[dev.kind](name, dev, self.physics, self)
            await serve(started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one broken simulator must not take the site down
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            log.error("sim.device_failed", device=name, kind=dev.kind, error=self.failed[name])
            settled(name)

    async def _refresh(self) -> None:
        for device in self.modbus.values():
            await device.refresh()

    # ------------------------------------------------------------------ control
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    answer = await self.handle(request)
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": str(exc).strip("'\"")}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        physics = self.physics
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "set":
            signal = str(request["signal"])
            value = float(request["value"])
            physics.force(signal, value)
            physics.step(0.0)  # derived signals (warnings, return temperature) follow at once
            await self._refresh()
            log.info("sim.forced", signal=signal, value=value)
            return {"ok": True, "signal": signal, "value": value}
        if op == "release":
            name = request.get("signal")
            released = physics.release(str(name) if name else None)
            physics.step(0.0)
            await self._refresh()
            log.info("sim.released", signals=released)
            return {"ok": True, "released": released}
        if op == "scenario":
            name = str(request["name"]).upper()
            active = bool(request.get("active", True))
            duration = request.get("duration")
            physics.set_scenario(
                name,
                active,
                target=request.get("target"),
                duration=float(duration) if duration else None,
            )
            physics.step(0.0)
            await self._refresh()
            log.info("sim.scenario", scenario=name, active=active, target=request.get("target"))
            return {"ok": True, "scenarios": self.status()["scenarios"]}
        raise ValueError(f"unknown op {op!r}; expected status, set, release or scenario")

    def status(self) -> dict[str, Any]:
        p = self.physics
        return {
            "devices": {
                name: {
                    "kind": self.kinds[name],
                    "endpoint": self.endpoints.get(name),
                    "error": self.failed.get(name),
                }
                for name in self.config.devices
            },
            "control": self.control,
            "scenarios": [
                {"name": s.name, "target": s.target, "since": s.since, "until": s.until}
                for s in p.scenarios.values()
            ],
            "known_scenarios": list(SCENARIOS),
            "forced": dict(p.forced),
            "signals": dict(sorted(p.signals.items())),
        }


async def run_site(config: SimConfig, *, ready: asyncio.Event | None = None) -> None:
    """Serve the simulated site until cancelled."""
    await SimSite(config).run(ready)


# ---------------------------------------------------------------------------------- client
class SimControlError(RuntimeError):
    pass


async def sim_request(control: str, request: dict[str, Any], wait: float = 5.0) -> dict[str, Any]:
    """Send one control request to a running sim; raises SimControlError with a clear reason."""
    host, port = split_hostport(control)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
    except (OSError, TimeoutError) as exc:
        raise SimControlError(
            f"no simulated site answers on {host}:{port} ({exc}); start it with `outpost sim`"
        ) from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), wait)
    except TimeoutError:
        raise SimControlError(f"the sim at {host}:{port} did not answer within {wait} s") from None
    finally:
        writer.close()
    if not line:
        raise SimControlError(f"the sim at {host}:{port} closed the connection")
    answer: dict[str, Any] = json.loads(line)
    if not answer.get("ok"):
        raise SimControlError(str(answer.get("error", "request failed")))
    return answer


__all__ = [
    "BacnetSimConfig",
    "ModbusSimConfig",
    "MqttSimConfig",
    "SimConfig",
    "SimConfigError",
    "SimControlError",
    "SimSite",
    "SnmpSimConfig",
    "UnknownSignal",
    "load_sim_config",
    "run_site",
    "sim_request",
]
