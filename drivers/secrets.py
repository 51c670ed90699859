"""Whether every enabled device's secrets (SNMP communities and keys, MQTT passwords) can be
read now, from the environment variables and files the config names.

The one rule, used by ``outpost config check`` and ``outpost run`` alike: a secret that cannot
be read is a configuration error of the whole config. ``config check`` lists it and exits 2;
``run`` prints the same line and exits 2 before it starts anything, so a gateway never runs
with a device silently blind (``bad:config_error`` on every point) because its service
environment lacks a variable. Drivers read secrets again when they connect, so a secret that
changes while the agent runs is picked up at the next connection.
"""

from __future__ import annotations

from collections.abc import Mapping

from outpost.drivers.base import DeviceConfig

_RESOLVERS = ("auth_data", "credentials")


def secret_problems(devices: Mapping[str, DeviceConfig]) -> list[tuple[str, str]]:
    """(device id, message) for every enabled device whose secrets cannot be read now."""
    problems: list[tuple[str, str]] = []
    for device_id, dev in devices.items():
        if not dev.enabled:
            continue
        for name in _RESOLVERS:
            resolver = getattr(dev, name, None)
            if resolver is None:
                continue
            try:
                resolver()
            except Exception as exc:  # SnmpConfigError, MqttConfigError, a library's own refusal
                problems.append((device_id, str(exc)))
    return problems
