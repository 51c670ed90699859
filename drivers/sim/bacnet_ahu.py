"""A simulated BACnet/IP air-handling unit (bacpypes3), and a bulk device for benchmarks.

The AHU serves the objects a BMS integrator expects on a small AHU controller: supply and
return air temperature, supply fan speed, a commandable supply-air setpoint (priority array),
filter differential pressure, a filter/fan alarm (binary) and the operating mode (multi-state).
Values move slowly and plausibly: the supply air follows its setpoint with a first-order lag,
the return air follows the room load over a day, the filter clogs over time.

Scenarios (for the simulated site): ``COOLING_FAILURE`` lets the supply air drift up towards
the return air; ``UNIT_FAULT`` stops the fan and raises the alarm. ``set_scenario(None)``
clears them.

Options used by the tests and the benchmark: ``rpm=False`` makes the device reject
ReadPropertyMultiple (unrecognized-service, as small controllers do); ``segmentation=False``
makes it refuse segmented responses; ``build_bulk_objects(n)`` builds N analog-values.

Run standalone: ``python -m outpost.drivers.sim.bacnet_ahu --address 127.0.0.1:47809 [--bulk 500]
[--no-rpm]``; it prints ``READY <address>`` on stdout once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from bacpypes3.apdu import AbortPDU, APCISequence, ComplexAckPDU
from bacpypes3.app import Application
from bacpypes3.errors import UnrecognizedService
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObject, AnalogValueObjectCmd
from bacpypes3.local.binary import BinaryInputObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.local.networkport import NetworkPortObject

__all__ = [
    "AHU_OBJECTS",
    "BacnetAhu",
    "build_ahu_objects",
    "build_bulk_objects",
    "build_device_app",
    "serve_ahu",
]

SCENARIOS = ("COOLING_FAILURE", "UNIT_FAULT")

#: (object type, instance, name) of the AHU's points, for schedules and tests.
AHU_OBJECTS: tuple[tuple[str, int, str], ...] = (
    ("analog-input", 1, "supply-air-temp"),
    ("analog-input", 2, "return-air-temp"),
    ("analog-input", 3, "supply-fan-speed"),
    ("analog-input", 4, "filter-dp"),
    ("analog-value", 1, "supply-air-temp-sp"),
    ("binary-input", 1, "ahu-alarm"),
    ("multi-state-value", 1, "ahu-mode"),
)

_FLAGS = [0, 0, 0, 0]


class _SimApplication(Application):
    """A device application with the limits of real controllers: optionally no
    ReadPropertyMultiple (rejected as unrecognized, as small controllers do), and a maximum
    answer size it cannot exceed without segmentation (bacpypes3 itself would size answers by
    the client's limit)."""

    rpm: bool = True
    max_answer: int | None = None  # bytes of service data an unsegmented answer can carry

    async def do_ReadPropertyMultipleRequest(self, apdu: Any) -> None:
        if not self.rpm:
            raise UnrecognizedService("ReadPropertyMultiple not supported")
        await super().do_ReadPropertyMultipleRequest(apdu)

    def get_services_supported(self) -> Any:
        services = super().get_services_supported()
        if not self.rpm:
            services["read-property-multiple"] = 0
        return services

    async def response(self, apdu: Any) -> None:
        if self.max_answer is not None and isinstance(apdu, ComplexAckPDU):
            encoded = apdu.encode() if isinstance(apdu, APCISequence) else apdu
            if len(encoded.pduData) > self.max_answer:
                # A server abort must carry the SRV flag, or the client ignores it (an abort
                # raised in a handler goes out without it).
                abort = AbortPDU(
                    srv=True, invoke_id=apdu.apduInvokeID, reason="segmentation-not-supported"
                )
                abort.pduDestination = apdu.pduDestination
                apdu = abort
        await super().response(apdu)


def _device_objects(
    address: str,
    device_instance: int,
    name: str,
    *,
    segmentation: bool,
    description: str,
    max_apdu: int = 1476,
) -> list[Any]:
    return [
        DeviceObject(
            objectIdentifier=("device", device_instance),
            objectName=name,
            description=description,
            vendorIdentifier=999,
            vendorName="Outpost simulator",
            modelName="sim-ahu",
            segmentationSupported="segmented-both" if segmentation else "no-segmentation",
            maxApduLengthAccepted=max_apdu,
        ),
        NetworkPortObject(
            address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
        ),
    ]


def build_ahu_objects(setpoint: float = 18.0) -> list[Any]:
    """The AHU's point objects (without device and network-port objects)."""
    return [
        AnalogInputObject(
            objectIdentifier=("analog-input", 1),
            objectName="supply-air-temp",
            description="Supply air temperature",
            presentValue=setpoint,
            units="degreesCelsius",
            statusFlags=_FLAGS,
            covIncrement=0.1,
        ),
        AnalogInputObject(
            objectIdentifier=("analog-input", 2),
            objectName="return-air-temp",
            description="Return air temperature",
            presentValue=24.0,
            units="degreesCelsius",
            statusFlags=_FLAGS,
            covIncrement=0.1,
        ),
        AnalogInputObject(
            objectIdentifier=("analog-input", 3),
            objectName="supply-fan-speed",
            description="Supply fan speed",
            presentValue=65.0,
            units="percent",
            statusFlags=_FLAGS,
            covIncrement=1.0,
        ),
        AnalogInputObject(
            objectIdentifier=("analog-input", 4),
            objectName="filter-dp",
            description="Filter differential pressure",
            presentValue=120.0,
            units="pascals",
            statusFlags=_FLAGS,
            covIncrement=1.0,
        ),
        AnalogValueObjectCmd(
            objectIdentifier=("analog-value", 1),
            objectName="supply-air-temp-sp",
            description="Supply air temperature setpoint",
            presentValue=setpoint,
            relinquishDefault=setpoint,
            units="degreesCelsius",
            statusFlags=_FLAGS,
        ),
        BinaryInputObject(
            objectIdentifier=("binary-input", 1),
            objectName="ahu-alarm",
            description="AHU common alarm (fan or filter)",
            presentValue="inactive",
            statusFlags=_FLAGS,
            activeText="alarm",
            inactiveText="normal",
        ),
        MultiStateValueObject(
            objectIdentifier=("multi-state-value", 1),
            objectName="ahu-mode",
            description="Operating mode",
            presentValue=2,
            numberOfStates=3,
            stateText=["off", "auto", "manual"],
            statusFlags=_FLAGS,
        ),
    ]


def build_bulk_objects(n: int) -> list[Any]:
    """N analog-values ``bulk-<i>`` (instances 1..N) for throughput benchmarks."""
    return [
        AnalogValueObject(
            objectIdentifier=("analog-value", i),
            objectName=f"bulk-{i}",
            presentValue=float(i),
            units="noUnits",
            statusFlags=_FLAGS,
        )
        for i in range(1, n + 1)
    ]


def build_device_app(
    address: str,
    device_instance: int,
    objects: Sequence[Any],
    *,
    name: str = "sim-device",
    rpm: bool = True,
    segmentation: bool = True,
    description: str = "Outpost simulated BACnet device",
    max_apdu: int = 1476,
) -> Application:
    """A serving bacpypes3 application; must be called inside a running event loop.
    ``max_apdu`` 480 makes a small controller (MS/TP-class) whose answers overflow early."""
    app = _SimApplication.from_object_list(
        [
            *_device_objects(
                address,
                device_instance,
                name,
                segmentation=segmentation,
                description=description,
                max_apdu=max_apdu,
            ),
            *objects,
        ]
    )
    app.rpm = rpm
    if not segmentation and max_apdu < 1476:
        app.max_answer = max_apdu - 4  # the complex-ack header takes 3..4 bytes
    return app


async def wait_bound(app: Application, limit: float = 5.0) -> None:
    """Wait until the application's UDP socket is bound (bacpypes3 binds in a task and retries
    forever on failure, so a wrong address would otherwise hang silently)."""
    for link in app.link_layers.values():
        server = getattr(link, "server", None)
        ready = getattr(server, "_local_transport_ready", None)
        if ready is not None:
            await asyncio.wait_for(ready.wait(), limit)


class BacnetAhu:
    """The AHU device: ``await start()``, ``await stop()``; values update every ``tick`` s."""

    def __init__(
        self,
        address: str = "127.0.0.1:47809",
        device_instance: int = 1001,
        *,
        name: str = "AHU-1",
        rpm: bool = True,
        segmentation: bool = True,
        tick: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.address = address
        self.device_instance = device_instance
        self.name = name
        self.rpm = rpm
        self.segmentation = segmentation
        self.tick = tick
        self.steps = 0  # physics steps taken (tests wait for these, not for a duration)
        self.scenario: str | None = None
        self.app: Application | None = None
        self._rng = random.Random(seed)
        self._task: asyncio.Task[None] | None = None
        self._objects: dict[str, Any] = {}

    def set_scenario(self, name: str | None) -> None:
        if name is not None and name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
        self.scenario = name

    def point_object(self, name: str) -> Any:
        """The local bacpypes3 object by its object name (tests inspect priority arrays)."""
        return self._objects[name]

    async def start(self) -> None:
        objects = build_ahu_objects()
        self._objects = {str(o.objectName): o for o in objects}
        self.app = build_device_app(
            self.address,
            self.device_instance,
            objects,
            name=self.name,
            rpm=self.rpm,
            segmentation=self.segmentation,
            description="Simulated air-handling unit",
        )
        await wait_bound(self.app)
        self._task = asyncio.create_task(self._run(), name=f"sim-ahu-{self.device_instance}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.app is not None:
            self.app.close()
            self.app = None

    async def __aenter__(self) -> BacnetAhu:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        filter_dp = 120.0
        while True:
            await asyncio.sleep(self.tick)
            filter_dp = self._step(filter_dp)
            self.steps += 1

    def _step(self, filter_dp: float) -> float:
        o = self._objects
        rng = self._rng
        hours = (time.time() % 86400) / 3600
        load = 0.5 + 0.3 * math.sin((hours - 9) / 24 * 2 * math.pi)
        ret = 23.0 + 2.5 * load + rng.gauss(0, 0.05)
        setpoint = float(o["supply-air-temp-sp"].presentValue)
        supply = float(o["supply-air-temp"].presentValue)
        fault = self.scenario == "UNIT_FAULT"
        target = ret - 0.5 if self.scenario == "COOLING_FAILURE" or fault else setpoint
        supply += (target - supply) * 0.1 + rng.gauss(0, 0.03)
        fan = 0.0 if fault else 55.0 + 30.0 * load + rng.gauss(0, 0.5)
        filter_dp = min(filter_dp + 0.002 * self.tick, 400.0)
        o["supply-air-temp"].presentValue = round(supply, 2)
        o["return-air-temp"].presentValue = round(ret, 2)
        o["supply-fan-speed"].presentValue = round(max(fan, 0.0), 1)
        o["filter-dp"].presentValue = round(filter_dp + rng.gauss(0, 0.5), 1)
        alarm = fault or filter_dp > 250.0
        o["ahu-alarm"].presentValue = "active" if alarm else "inactive"
        return filter_dp


async def serve_ahu(
    address: str = "127.0.0.1:47809",
    device_instance: int = 1001,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    rpm: bool = True,
    segmentation: bool = True,
) -> None:
    """Serve the AHU until ``stop`` is set (or the task is cancelled)."""
    ahu = BacnetAhu(address, device_instance, rpm=rpm, segmentation=segmentation)
    await ahu.start()
    try:
        if ready is not None:
            ready.set()
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await ahu.stop()


async def _serve_bulk(
    address: str, device_instance: int, n: int, *, rpm: bool, segmentation: bool
) -> None:
    app = build_device_app(
        address,
        device_instance,
        build_bulk_objects(n),
        name=f"bulk-{device_instance}",
        rpm=rpm,
        segmentation=segmentation,
    )
    await wait_bound(app)
    print(f"READY {address}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        app.close()


async def _serve_ahu_cli(
    address: str, device_instance: int, *, rpm: bool, segmentation: bool
) -> None:
    ready = asyncio.Event()
    task = asyncio.create_task(
        serve_ahu(address, device_instance, ready=ready, rpm=rpm, segmentation=segmentation)
    )
    await ready.wait()
    print(f"READY {address}", flush=True)
    await task


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated BACnet/IP AHU (or bulk) device")
    parser.add_argument("--address", default="127.0.0.1:47809")
    parser.add_argument("--instance", type=int, default=1001)
    parser.add_argument("--bulk", type=int, default=0, help="serve N analog-values instead")
    parser.add_argument("--no-rpm", action="store_true", help="reject ReadPropertyMultiple")
    parser.add_argument("--no-segmentation", action="store_true")
    args = parser.parse_args(argv)
    rpm, seg = not args.no_rpm, not args.no_segmentation
    if args.bulk:
        coro = _serve_bulk(args.address, args.instance, args.bulk, rpm=rpm, segmentation=seg)
    else:
        coro = _serve_ahu_cli(args.address, args.instance, rpm=rpm, segmentation=seg)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)
    sys.exit(0)


if __name__ == "__main__":
    main()
