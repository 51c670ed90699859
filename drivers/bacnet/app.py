"""The agent's BACnet/IP endpoint: one bacpypes3 application per local address, shared by every
device polled through it (two applications on one UDP port both start, and the kernel then
silently delivers each answer to only one of them). Patched to pass I-Am requests to discovery
listeners and to hand RPM/RP answers up undecoded (``send_raw``)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from bacpypes3.apdu import ComplexAckPDU, ConfirmedRequestPDU
from bacpypes3.app import Application
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.comm import ServiceAccessPoint
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address

from outpost.drivers.bacnet.address import parse_host_port
from outpost.drivers.bacnet.config import BacnetDeviceConfig
from outpost.drivers.base import DriverContext

log = structlog.get_logger(__name__)


class LocalApplication(Application):
    """Application that hands incoming I-Am requests to listeners (discovery) and can pass an
    answer up undecoded (``send_raw``)."""

    iam_listeners: list[Any]
    raw_invokes: set[tuple[Any, int]]

    async def do_IAmRequest(self, apdu: Any) -> None:
        await super().do_IAmRequest(apdu)
        for listener in list(getattr(self, "iam_listeners", ())):
            listener(apdu)

    def enable_raw(self) -> None:
        self.raw_invokes = set()
        asap = self.asap
        raw = self.raw_invokes

        async def sap_response(apdu: Any) -> None:
            if (
                apdu.apduType == ComplexAckPDU.pduType
                and (apdu.pduSource, apdu.apduInvokeID) in raw
            ):
                await ServiceAccessPoint.sap_response(asap, apdu)
            else:
                await ApplicationServiceAccessPoint.sap_response(asap, apdu)

        asap.sap_response = sap_response

    async def send_raw(self, peer: Address, template: ConfirmedRequestPDU) -> bytes:
        """Send a copy of a pre-encoded confirmed request (RPM or RP); return the ACK's
        service payload undecoded. Errors, rejects and aborts raise as usual
        (``ErrorRejectAbortNack``)."""
        request = ConfirmedRequestPDU()
        request.update(template)
        request.put_data(template.pduData)
        request.apduInvokeID = None
        request.pduDestination = peer
        future = self.request(request)
        key = (peer, request.apduInvokeID)
        self.raw_invokes.add(key)
        try:
            answer = await future
        finally:
            self.raw_invokes.discard(key)
        return bytes(answer.pduData)


class BacnetLocalApp:
    """The agent's BACnet/IP endpoint: one bacpypes3 application bound to ``local_address``."""

    def __init__(
        self,
        local_address: str,
        device_instance: int = 599999,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        name: str = "outpost",
    ) -> None:
        host, prefix, port = parse_host_port(local_address)
        self.local_address = f"{host}{'' if prefix is None else f'/{prefix}'}:{port}"
        self.device_instance = device_instance
        self.name = name
        self.users = 0
        self._timeout = timeout
        self._retries = retries
        self._app: LocalApplication | None = None
        self._starting: asyncio.Future[LocalApplication] | None = None

    @property
    def started(self) -> bool:
        return self._app is not None

    def tune(self, timeout: float, retries: int) -> None:
        """Raise the shared APDU timeout/retries to cover a device that needs more."""
        self._timeout = max(self._timeout, timeout)
        self._retries = max(self._retries, retries)
        if self._app is not None and self._app.device_object is not None:
            self._app.device_object.apduTimeout = int(self._timeout * 1000)
            self._app.device_object.numberOfApduRetries = self._retries

    async def app(self) -> LocalApplication:
        if self._app is not None:
            return self._app
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_future()
            try:
                app = await self._start()
            except asyncio.CancelledError:
                self._starting.cancel()
                self._starting = None
                raise
            except BaseException as exc:
                self._starting.set_exception(exc)
                self._starting.exception()  # retrieved here: waiters re-raise it themselves
                self._starting = None
                raise
            self._app = app
            self._starting.set_result(app)
            self._starting = None
            return app
        return await asyncio.shield(self._starting)

    async def _start(self) -> LocalApplication:
        objects = [
            DeviceObject(
                objectIdentifier=("device", self.device_instance),
                objectName=self.name,
                vendorIdentifier=999,
                vendorName="Outpost",
                modelName="outpost-agent",
                apduTimeout=int(self._timeout * 1000),
                numberOfApduRetries=self._retries,
                maxApduLengthAccepted=1476,
                segmentationSupported="segmented-both",
            ),
            NetworkPortObject(
                self.local_address,
                objectIdentifier=("network-port", 1),
                objectName="NetworkPort-1",
            ),
        ]
        app = LocalApplication.from_object_list(objects)
        app.iam_listeners = []
        app.enable_raw()
        try:
            for link in app.link_layers.values():
                ready = getattr(getattr(link, "server", None), "_local_transport_ready", None)
                if ready is not None:
                    # bacpypes3 retries a failed bind forever in the background.
                    await asyncio.wait_for(ready.wait(), 5.0)
        except TimeoutError:
            app.close()
            raise OSError(
                f"cannot bind the BACnet/IP endpoint {self.local_address} (is the address "
                "configured on this machine?)"
            ) from None
        except BaseException:
            app.close()
            raise
        log.info("bacnet.local_app_started", local_address=self.local_address)
        return app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None
            log.info("bacnet.local_app_closed", local_address=self.local_address)


def local_app(context: DriverContext, config: BacnetDeviceConfig) -> BacnetLocalApp:
    """The shared local application for ``config.local_address`` (created on first use)."""
    host, _, port = parse_host_port(config.local_address)
    key = f"bacnet:{host}:{port}"
    shared = context.resources.get(key)
    if shared is None:
        shared = BacnetLocalApp(
            config.local_address,
            config.local_device_instance,
            timeout=config.timeout,
            retries=config.retries,
        )
        context.resources[key] = shared
    else:
        if shared.device_instance != config.local_device_instance:
            log.warning(
                "bacnet.local_instance_conflict",
                local_address=config.local_address,
                used=shared.device_instance,
                ignored=config.local_device_instance,
            )
        shared.tune(config.timeout, config.retries)
    return shared
