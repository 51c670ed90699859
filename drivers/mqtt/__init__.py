"""MQTT (push): the subscriber driver. See README.md."""

from outpost.drivers.mqtt.driver import (
    MqttConfigError,
    MqttDeviceConfig,
    MqttDriver,
    topic_matches,
)

__all__ = ["MqttConfigError", "MqttDeviceConfig", "MqttDriver", "topic_matches"]
