"""SNMP v1/v2c/v3: the driver, its config, its BER fast path and discovery. See README.md."""

from outpost.drivers.snmp.config import SnmpConfigError, SnmpDeviceConfig
from outpost.drivers.snmp.driver import SnmpDriver

__all__ = ["SnmpConfigError", "SnmpDeviceConfig", "SnmpDriver"]
