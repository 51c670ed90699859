"""``[devices.<id>]`` keys of a BACnet/IP device."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from outpost.drivers.bacnet.address import is_loopback, parse_host_port
from outpost.drivers.base import DeviceConfig


class BacnetDeviceConfig(DeviceConfig):
    """``[devices.<id>]`` with ``protocol = "bacnet"``."""

    protocol: Literal["bacnet"] = "bacnet"
    address: str = Field(description="the device's BACnet/IP address, host[:port]")
    device_instance: int = Field(ge=0, le=4194302)
    local_address: str = Field(
        "0.0.0.0:47808",
        description="the agent's own BACnet/IP endpoint, host[/prefix][:port]; the prefix "
        "sets the broadcast address for Who-Is",
    )
    local_device_instance: int = Field(599999, ge=0, le=4194302)
    max_per_request: int = Field(20, ge=1, le=500, description="references per RPM request")
    write_priority: int = Field(16, ge=1, le=16, description="default BACnet write priority")

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        host, prefix, port = parse_host_port(v)
        if prefix is not None:
            raise ValueError(f"{v!r}: a device address has no /prefix; write host[:port]")
        if port == 0:
            raise ValueError(f"{v!r}: the device port must not be 0")
        return f"{host}:{port}"

    @field_validator("local_address")
    @classmethod
    def _check_local(cls, v: str) -> str:
        host, prefix, port = parse_host_port(v)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{v!r}: the local address must be an IPv4 address") from None
        return f"{host}{'' if prefix is None else f'/{prefix}'}:{port}"

    @model_validator(mode="after")
    def _distinct_endpoints(self) -> BacnetDeviceConfig:
        dev_host, _, dev_port = parse_host_port(self.address)
        loc_host, _, loc_port = parse_host_port(self.local_address)
        # bacpypes3 treats any loopback destination on its own port as itself.
        if dev_port == loc_port and (
            dev_host == loc_host or (is_loopback(dev_host) and is_loopback(loc_host))
        ):
            raise ValueError(
                f"address {self.address} and local_address {self.local_address} use the same "
                "port on this machine; give the agent another local port"
            )
        return self
