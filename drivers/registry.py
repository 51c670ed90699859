"""Protocol name → driver class, imported lazily so an edge box without, say, BACnet traffic
never pays for importing bacpypes3. Each driver class names its config model."""

from __future__ import annotations

import importlib

from outpost.drivers.base import DeviceConfig, Driver

_DRIVERS: dict[str, str] = {
    "modbus": "outpost.drivers.modbus:ModbusDriver",
    "bacnet": "outpost.drivers.bacnet:BacnetDriver",
    "snmp": "outpost.drivers.snmp:SnmpDriver",
    "mqtt": "outpost.drivers.mqtt:MqttDriver",
}

PROTOCOLS: tuple[str, ...] = tuple(_DRIVERS)


def driver_class(protocol: str) -> type[Driver]:
    try:
        target = _DRIVERS[protocol]
    except KeyError:
        raise ValueError(
            f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Driver] = getattr(module, class_name)
    return cls


def config_model(protocol: str) -> type[DeviceConfig]:
    model: type[DeviceConfig] = driver_class(protocol).config_model
    return model
