"""``[devices.<id>]`` keys of an MQTT broker connection, and its credentials (read when the
driver connects)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from outpost.drivers.base import DeviceConfig


class MqttConfigError(Exception):
    """A device's MQTT settings cannot be used (e.g. a secret's variable is unset)."""


class MqttDeviceConfig(DeviceConfig):
    """``[devices.<id>]`` with ``protocol = "mqtt"``. ``poll_interval`` is only used for
    stale detection (a point is stale after ``poll_interval`` x 3 without a message)."""

    protocol: Literal["mqtt"] = "mqtt"
    host: str
    port: int = Field(1883, ge=1, le=65535)
    username_env: str | None = None
    username_file: Path | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = Field(None, description="CA bundle for the broker's certificate")
    client_id: str | None = Field(None, description="default: outpost-<device>-<random>")
    keepalive: int = Field(30, ge=5, le=3600)
    qos: Literal[0, 1] = 0
    reconnect_min: float = Field(0.5, gt=0, description="first reconnect delay, seconds")
    reconnect_max: float = Field(30.0, gt=0, description="cap of the reconnect delay")
    max_clock_skew: float = Field(
        300.0, ge=0, description="payload timestamps further in the future are ignored"
    )
    max_payload_age: float = Field(
        7 * 86400.0, gt=0, description="payload timestamps older than this are ignored"
    )

    @model_validator(mode="after")
    def _one_source_each(self) -> MqttDeviceConfig:
        for key in ("username", "password"):
            if getattr(self, f"{key}_env") is not None and getattr(self, f"{key}_file") is not None:
                raise ValueError(f"give only one of {key}_env or {key}_file")
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file needs tls = true")
        return self

    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) read now; raises ``MqttConfigError`` naming the key."""
        user = _secret("username", self.username_env, self.username_file)
        password = _secret("password", self.password_env, self.password_file)
        if password is not None and user is None:
            raise MqttConfigError("password_env/password_file given without a username")
        return user, password


def _secret(key: str, env: str | None, path: Path | None) -> str | None:
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise MqttConfigError(f"{key}_env: environment variable {env} is not set")
        return value
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MqttConfigError(f"{key}_file: cannot read {path}: {exc.strerror}") from None
    return None
