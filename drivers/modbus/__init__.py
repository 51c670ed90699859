"""Modbus TCP: the driver, its register codec and its request planner. See README.md."""

from outpost.drivers.modbus.driver import ModbusDeviceConfig, ModbusDriver

__all__ = ["ModbusDeviceConfig", "ModbusDriver"]
