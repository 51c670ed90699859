"""The agent's optional ``[sparkplug]`` section: publish the site as a Sparkplug B edge node.

Absent: no Sparkplug. Present: one edge node (``group_id``/``edge_node_id``) with one
Sparkplug device per Outpost device, on the MQTT broker at ``url``. Credentials come from
environment variables (``username_env``/``password_env``), never inline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Sparkplug B 3.0 (topics): group, edge node and device ids are valid UTF-8 MQTT topic
# levels without the characters that MQTT and Sparkplug reserve.
_TOPIC_ID = re.compile(r"^[^/+#\s]+$")


class SparkplugConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="MQTT broker: mqtt://host:port or mqtts://host:port")
    ca_file: Path | None = Field(
        default=None, description="CA bundle for mqtts:// (default: the system's CAs)"
    )
    username_env: str | None = Field(default=None, description="env var holding the user name")
    password_env: str | None = Field(default=None, description="env var holding the password")
    group_id: str = Field(default="outpost", description="Sparkplug group id")
    edge_node_id: str | None = Field(default=None, description="default: the gateway id")
    client_id: str | None = Field(default=None, description="MQTT client id (default: derived)")
    allow_writes: bool = Field(
        default=False, description="Apply DCMD writes (through the guarded local write path)"
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    publish_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="How often new buffer rows are published as DDATA"
    )
    batch_size: int = Field(
        default=2000, ge=1, le=100_000, description="Readings read from the buffer per round"
    )
    max_metrics_per_message: int = Field(default=500, ge=1, le=10_000)
    backfill_on_first_start: bool = Field(
        default=False,
        description="First start ever: also publish what the buffer holds (as historical)",
    )
    data_qos: Literal[0, 1] = Field(
        default=0,
        description="QoS of DDATA (the specification says 0; 1 waits for the broker's ack)",
    )
    cursor_file: Path = Field(
        default=Path("sparkplug.state"), description="bdSeq and publish cursor, in data_dir"
    )
    backoff_min: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://host:port or mqtts://host:port")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("port must be a number 1-65535") from None
        return value

    @field_validator("group_id", "edge_node_id")
    @classmethod
    def _topic_id(cls, value: str | None) -> str | None:
        if value is not None and not _TOPIC_ID.match(value):
            raise ValueError("must not be empty or contain '/', '+', '#' or spaces")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"
