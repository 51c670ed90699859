"""A simulated rack PDU answering SNMP v1/v2c and v3 (pysnmp command responder).

Values are computed when asked (no background task): a day/night load curve per outlet,
a little noise, mains voltage around 230 V. Scenarios change the physics:
``POWER_SPIKE`` (outlet loads x 1.8), ``MAINS_FAILURE`` (input voltage and every load 0),
``UNIT_FAULT`` (outlet 1 tripped off).

OID layout (an enterprise-style subtree; 99999 stands for the vendor's number, so a real
PDU's schedule differs only in these addresses):

=================================  ===========  ==========================================
OID                                type         meaning
=================================  ===========  ==========================================
1.3.6.1.2.1.1.1.0 / .3.0 / .5.0    system       sysDescr, sysUpTime, sysName
1.3.6.1.2.1.1.2.0                  OID          sysObjectID = PDU (the enterprise subtree)
1.3.6.1.2.1.99.1.1.1.C.1 / .2      Integer32    ENTITY-SENSOR-MIB: inlet temperature (0.1 degC)
                                                and input voltage (0.1 V), C = 1 type,
                                                2 scale, 3 precision, 4 value, 5 status
1.3.6.1.2.1.47.1.1.1.1.7.1 / .2    OctetString  entPhysicalName of the two sensors
PDU.1.1.0                          OctetString  PDU name
PDU.1.2.0                          Gauge32      input voltage, 0.1 V   (scale 0.1)
PDU.1.3.0                          Gauge32      input frequency, 0.01 Hz (scale 0.01)
PDU.1.4.0                          Gauge32      total active power, W
PDU.1.5.0                          Counter64    total energy, Wh
PDU.1.6.0                          Integer32    outlet count
PDU.1.7.0                          Integer32    power limit, W (writable)
PDU.1.8.0                          OctetString  inlet temperature as text, degC ("24.1")
PDU.2.1.3.N                        Gauge32      outlet N current, mA   (scale 0.001 → A)
PDU.2.1.4.N                        Gauge32      outlet N active power, W
PDU.2.1.5.N                        Integer32    outlet N state, 1 = on, 2 = off (writable)
PDU.2.1.2.N                        OctetString  outlet N name
=================================  ===========  ==========================================

with PDU = 1.3.6.1.4.1.99999.1. Credentials: v1/v2c community ``public``; v3 user
``outpost`` with authPriv SHA / AES-128, keys ``outpost-auth`` / ``outpost-priv``. Any
authenticated request may write (it is a simulator).

``max_response_varbinds`` imitates a device with a small response buffer: a GET of more
OIDs is answered with error-status ``tooBig``, as such devices do.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error
from pysnmp.smi.instrum import AbstractMibInstrumController

log = structlog.get_logger(__name__)

__all__ = [
    "PDU_OID",
    "V3_AUTH_KEY",
    "V3_PRIV_KEY",
    "V3_USER",
    "PduModel",
    "outlet_oid",
    "serve_snmp_pdu",
]

PDU_OID = "1.3.6.1.4.1.99999.1"
ENT_SENSOR = "1.3.6.1.2.1.99.1.1.1"  # ENTITY-SENSOR-MIB entPhySensorEntry
ENT_PHYS_NAME = "1.3.6.1.2.1.47.1.1.1.1.7"  # ENTITY-MIB entPhysicalName
COMMUNITY = "public"
V3_USER = "outpost"
V3_AUTH_KEY = "outpost-auth"
V3_PRIV_KEY = "outpost-priv"

SCENARIOS = ("POWER_SPIKE", "MAINS_FAILURE", "UNIT_FAULT")

Ready = asyncio.Event | asyncio.Future | Callable[[int], Any] | None


def outlet_oid(column: int, outlet: int) -> str:
    """``outlet_oid(3, 1)`` → OID of outlet 1's current."""
    return f"{PDU_OID}.2.1.{column}.{outlet}"


@dataclass
class PduModel:
    """The PDU's physics; tests and ``outpost sim`` change ``scenario`` and writable values."""

    name: str = "sim-pdu-a"
    outlets: int = 24
    power_limit_w: int = 7400
    scenario: str | None = None
    seed: int = 7
    outlet_on: list[bool] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    get_requests: int = 0  # GET PDUs answered (tests count round trips with it)
    _energy_wh: float = 0.0
    _last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not self.outlet_on:
            self.outlet_on = [True] * self.outlets
        rng = random.Random(self.seed)
        # Each outlet feeds a server of its own size: 0.3..1.6 A nominal.
        self._base_ma = [rng.uniform(300, 1600) for _ in range(self.outlets)]
        self._rng = rng

    def voltage_dv(self) -> int:
        if self.scenario == "MAINS_FAILURE":
            return 0
        return int(2300 + 25 * math.sin(time.time() / 600) + self._rng.uniform(-3, 3))

    def outlet_ma(self, n: int) -> int:
        """Current of outlet n (1-based) in mA."""
        if not self.outlet_on[n - 1] or self.scenario == "MAINS_FAILURE":
            return 0
        if self.scenario == "UNIT_FAULT" and n == 1:
            return 0
        hour = (time.time() % 86400) / 3600
        day = 1.0 + 0.15 * math.sin((hour - 8) / 24 * 2 * math.pi)
        spike = 1.8 if self.scenario == "POWER_SPIKE" else 1.0
        return int(self._base_ma[n - 1] * day * spike * self._rng.uniform(0.97, 1.03))

    def outlet_w(self, n: int) -> int:
        return int(self.outlet_ma(n) * self.voltage_dv() / 10000 * 0.95)

    def total_w(self) -> int:
        return sum(self.outlet_w(n) for n in range(1, self.outlets + 1))

    def energy_wh(self) -> int:
        now = time.monotonic()
        self._energy_wh += self.total_w() * (now - self._last) / 3600
        self._last = now
        return int(self._energy_wh)

    def inlet_temp(self) -> str:
        return f"{24.0 + 0.8 * math.sin(time.time() / 900):.1f}"


class _PduInstrum(AbstractMibInstrumController):
    """Answers GET/GETNEXT/GETBULK/SET from ``PduModel``, computing values when asked."""

    def __init__(self, model: PduModel, max_response_varbinds: int | None) -> None:
        self.model = model
        self.max_response_varbinds = max_response_varbinds
        m = model
        up = time.monotonic()
        getters: dict[tuple[int, ...], Callable[[], Any]] = {
            _oid("1.3.6.1.2.1.1.1.0"): lambda: rfc1902.OctetString("Outpost simulated PDU"),
            _oid("1.3.6.1.2.1.1.3.0"): lambda: rfc1902.TimeTicks(
                int((time.monotonic() - up) * 100)
            ),
            _oid("1.3.6.1.2.1.1.2.0"): lambda: rfc1902.ObjectIdentifier(PDU_OID),
            _oid("1.3.6.1.2.1.1.5.0"): lambda: rfc1902.OctetString(m.name),
            # ENTITY-SENSOR-MIB entPhySensorTable (type, scale, precision, value, status) and
            # ENTITY-MIB entPhysicalName for two sensors: inlet temperature, input voltage
            **{
                _oid(f"{ENT_SENSOR}.{col}.{ix}"): partial(rfc1902.Integer32, value)
                for ix, kind in ((1, 8), (2, 3))
                for col, value in ((1, kind), (2, 9), (3, 1), (5, 1))
            },
            _oid(f"{ENT_SENSOR}.4.1"): lambda: rfc1902.Integer32(round(10 * float(m.inlet_temp()))),
            _oid(f"{ENT_SENSOR}.4.2"): lambda: rfc1902.Integer32(m.voltage_dv()),
            _oid(f"{ENT_PHYS_NAME}.1"): partial(rfc1902.OctetString, "inlet-temp"),
            _oid(f"{ENT_PHYS_NAME}.2"): partial(rfc1902.OctetString, "input-voltage"),
            _oid(f"{PDU_OID}.1.1.0"): lambda: rfc1902.OctetString(m.name),
            _oid(f"{PDU_OID}.1.2.0"): lambda: rfc1902.Gauge32(m.voltage_dv()),
            _oid(f"{PDU_OID}.1.3.0"): lambda: rfc1902.Gauge32(
                0 if m.scenario == "MAINS_FAILURE" else 5000
            ),
            _oid(f"{PDU_OID}.1.4.0"): lambda: rfc1902.Gauge32(m.total_w()),
            _oid(f"{PDU_OID}.1.5.0"): lambda: rfc1902.Counter64(m.energy_wh()),
            _oid(f"{PDU_OID}.1.6.0"): lambda: rfc1902.Integer32(m.outlets),
            _oid(f"{PDU_OID}.1.7.0"): lambda: rfc1902.Integer32(m.power_limit_w),
            _oid(f"{PDU_OID}.1.8.0"): lambda: rfc1902.OctetString(m.inlet_temp()),
        }
        for n in range(1, m.outlets + 1):
            getters[_oid(outlet_oid(2, n))] = partial(rfc1902.OctetString, f"outlet-{n}")
            getters[_oid(outlet_oid(3, n))] = partial(self._outlet_ma, n)
            getters[_oid(outlet_oid(4, n))] = partial(self._outlet_w, n)
            getters[_oid(outlet_oid(5, n))] = partial(self._outlet_state, n)
        self._getters = getters
        self._order = sorted(getters)

    def _outlet_ma(self, n: int) -> Any:
        return rfc1902.Gauge32(self.model.outlet_ma(n))

    def _outlet_w(self, n: int) -> Any:
        return rfc1902.Gauge32(self.model.outlet_w(n))

    def _outlet_state(self, n: int) -> Any:
        return rfc1902.Integer32(1 if self.model.outlet_on[n - 1] else 2)

    def _check_size(self, count: int) -> None:
        if self.max_response_varbinds is not None and count > self.max_response_varbinds:
            raise smi_error.TooBigError()

    def read_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        self.model.get_requests += 1
        self._check_size(len(var_binds))
        out = []
        for name, _ in var_binds:
            getter = self._getters.get(tuple(name))
            if getter is not None:
                out.append((name, getter()))
            elif any(_is_prefix(o, tuple(name)) for o in (_oid(PDU_OID), _oid("1.3.6.1.2.1.1"))):
                out.append((name, rfc1905.noSuchInstance))
            else:
                out.append((name, rfc1905.noSuchObject))
        return out

    def read_next_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        out = []
        for name, _ in var_binds:
            i = bisect.bisect_right(self._order, tuple(name))
            if i >= len(self._order):
                out.append((name, rfc1905.endOfMibView))
            else:
                nxt = self._order[i]
                out.append((rfc1902.ObjectName(nxt), self._getters[nxt]()))
        return out

    def write_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        # Validate every varbind before changing anything: SET is all-or-nothing.
        changes: list[Callable[[], None]] = []
        for idx, (name, value) in enumerate(var_binds):
            key = tuple(name)
            if key not in self._getters:
                raise smi_error.NoCreationError(name=name, idx=idx)
            if key == _oid(f"{PDU_OID}.1.7.0"):
                if not isinstance(value, rfc1902.Integer32):
                    raise smi_error.WrongTypeError(name=name, idx=idx)
                if not 0 <= int(value) <= 100_000:
                    raise smi_error.WrongValueError(name=name, idx=idx)
                changes.append(partial(setattr, self.model, "power_limit_w", int(value)))
            elif key[:-1] == _oid(f"{PDU_OID}.2.1.5"):
                if not isinstance(value, rfc1902.Integer32):
                    raise smi_error.WrongTypeError(name=name, idx=idx)
                if int(value) not in (1, 2):
                    raise smi_error.WrongValueError(name=name, idx=idx)
                changes.append(
                    partial(self.model.outlet_on.__setitem__, key[-1] - 1, int(value) == 1)
                )
            else:
                raise smi_error.NotWritableError(name=name, idx=idx)
        for change in changes:
            change()
        return [(name, self._getters[tuple(name)]()) for name, _ in var_binds]


def _oid(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _is_prefix(prefix: tuple[int, ...], oid: tuple[int, ...]) -> bool:
    return oid[: len(prefix)] == prefix


def _signal_ready(ready: Ready, port: int) -> None:
    if ready is None:
        return
    if isinstance(ready, asyncio.Event):
        ready.set()
    elif isinstance(ready, asyncio.Future):
        if not ready.done():
            ready.set_result(port)
    else:
        ready(port)


async def serve_snmp_pdu(
    host: str = "127.0.0.1",
    port: int = 16161,
    *,
    ready: Ready = None,
    stop: asyncio.Event | None = None,
    model: PduModel | None = None,
    community: str = COMMUNITY,
    max_response_varbinds: int | None = None,
) -> None:
    """Serve the PDU until ``stop`` is set (or the task is cancelled).

    ``port=0`` picks a free port; ``ready`` learns the bound port: an ``asyncio.Future`` gets
    it as its result, a callable is called with it, an ``asyncio.Event`` is just set.
    """
    model = model if model is not None else PduModel()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    engine = SnmpEngine()
    try:
        config.add_transport(
            engine, udp.DOMAIN_NAME, udp.UdpAsyncioTransport().open_server_mode(sock=sock)
        )
        config.add_v1_system(engine, "sim-area", community)
        config.add_v3_user(
            engine,
            V3_USER,
            config.USM_AUTH_HMAC96_SHA,
            V3_AUTH_KEY,
            config.USM_PRIV_CFB128_AES,
            V3_PRIV_KEY,
        )
        snmp_context = context.SnmpContext(engine)
        snmp_context.unregister_context_name(b"")
        instrum = _PduInstrum(model, max_response_varbinds)
        snmp_context.register_context_name(b"", instrum)
        cmdrsp.GetCommandResponder(engine, snmp_context)
        cmdrsp.NextCommandResponder(engine, snmp_context)
        cmdrsp.BulkCommandResponder(engine, snmp_context)
        cmdrsp.SetCommandResponder(engine, snmp_context)
        log.info("sim.snmp_pdu.serving", host=host, port=bound, outlets=model.outlets)
        _signal_ready(ready, bound)
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        engine.close_dispatcher()
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m outpost.drivers.sim.snmp_pdu [--host H] [--port P] [--outlets N]``"""
    import argparse

    ap = argparse.ArgumentParser(description="Serve the simulated PDU over SNMP v1/v2c/v3.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=16161)
    ap.add_argument("--outlets", type=int, default=24)
    ap.add_argument("--name", default="sim-pdu-a")
    ap.add_argument("--scenario", choices=SCENARIOS, default=None)
    ap.add_argument(
        "--max-response-varbinds", type=int, default=None, help="answer tooBig above this"
    )
    args = ap.parse_args(argv)
    model = PduModel(name=args.name, outlets=args.outlets, scenario=args.scenario)
    try:
        asyncio.run(
            serve_snmp_pdu(
                args.host,
                args.port,
                model=model,
                max_response_varbinds=args.max_response_varbinds,
                ready=lambda port: print(f"SNMP PDU on udp:{args.host}:{port}", flush=True),
            )
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
