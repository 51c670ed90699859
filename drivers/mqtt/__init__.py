"""MQTT (push): the subscriber driver and its config. See README.md."""

from outpost.drivers.mqtt.config import MqttConfigError, MqttDeviceConfig
from outpost.drivers.mqtt.driver import MqttDriver, topic_matches

__all__ = ["MqttConfigError", "MqttDeviceConfig", "MqttDriver", "topic_matches"]
