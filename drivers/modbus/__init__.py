"""Modbus TCP, RTU and RTU over TCP: the driver, its config, its register codec and its
request planner. See README.md."""

from outpost.drivers.modbus.config import ModbusDeviceConfig
from outpost.drivers.modbus.driver import ModbusDriver

__all__ = ["ModbusDeviceConfig", "ModbusDriver"]
