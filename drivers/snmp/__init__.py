"""SNMP v1/v2c/v3: the driver, its BER fast path and discovery. See README.md."""

from outpost.drivers.snmp.driver import SnmpConfigError, SnmpDeviceConfig, SnmpDriver

__all__ = ["SnmpConfigError", "SnmpDeviceConfig", "SnmpDriver"]
