"""Test fixtures for BACnet: free UDP ports, real bacpypes3 devices, points, driver configs.

Every application gets its own UDP port on loopback (bacpypes3 sockets use SO_REUSEPORT: two
apps on one port both start and the kernel silently picks one).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from outpost.drivers.bacnet import BacnetDeviceConfig
from outpost.drivers.sim.bacnet_ahu import build_device_app, wait_bound
from outpost.point_schedules.addresses import parse_bacnet
from outpost.point_schedules.model import Point


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def config(
    device_port: int, local_port: int, instance: int = 1001, **kw: Any
) -> BacnetDeviceConfig:
    base: dict[str, Any] = {
        "protocol": "bacnet",
        "address": f"127.0.0.1:{device_port}",
        "device_instance": instance,
        "local_address": f"127.0.0.1:{local_port}",
        "timeout": 0.3,
        "retries": 0,
    }
    base.update(kw)
    return BacnetDeviceConfig(**base)


def point(point_id: str, address: str, *, device: str = "ahu", **kw: Any) -> Point:
    return Point(point_id=point_id, device=device, address=parse_bacnet(address), **kw)


class RunningDevice:
    """A bacpypes3 device application serving ``objects`` on 127.0.0.1:<port>."""

    def __init__(self, objects: Sequence[Any], instance: int, port: int, **kw: Any) -> None:
        self.objects = {str(o.objectName): o for o in objects}
        self.by_id = {(str(o.objectIdentifier[0]), o.objectIdentifier[1]): o for o in objects}
        self.instance = instance
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self._objects = list(objects)
        self._kw = kw
        self.app: Any = None

    async def start(self) -> RunningDevice:
        self.app = build_device_app(self.address, self.instance, self._objects, **self._kw)
        await wait_bound(self.app)
        return self

    def stop(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None

    async def __aenter__(self) -> RunningDevice:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
