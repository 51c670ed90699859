"""BACnet/IP (bacpypes3): the driver, its RPM codec, the shared local application, writes and
discovery. See README.md."""

from outpost.drivers.bacnet.address import BACNET_PORT, parse_host_port
from outpost.drivers.bacnet.app import BacnetLocalApp, local_app
from outpost.drivers.bacnet.codec import bacnet_error_text, to_number
from outpost.drivers.bacnet.config import BacnetDeviceConfig
from outpost.drivers.bacnet.driver import BacnetDriver

__all__ = [
    "BACNET_PORT",
    "BacnetDeviceConfig",
    "BacnetDriver",
    "BacnetLocalApp",
    "bacnet_error_text",
    "local_app",
    "parse_host_port",
    "to_number",
]
