"""The agent's `[cloud]` section: where the receiver is and how the uplink behaves.

The section is optional in the agent config; its absence means edge-only operation. Secrets
never sit inline in an example config: the enrollment token may come from an environment
variable or a file instead, and it is only needed once (the gateway token obtained with it is
kept in `token_file`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class CloudConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Receiver base URL, e.g. https://fleet.example.com")
    enrollment_token: SecretStr | None = Field(
        default=None, description="One-time enrollment token (used only while no token_file exists)"
    )
    enrollment_token_env: str | None = Field(
        default=None, description="Name of an environment variable holding the enrollment token"
    )
    enrollment_token_file: Path | None = Field(
        default=None, description="File holding the enrollment token"
    )
    token_file: Path = Field(
        default=Path("gateway.token"),
        description="Where the gateway token is kept (0600), relative to the agent data_dir",
    )
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the receiver")
    batch_size: int = Field(default=5000, ge=1, le=100_000, description="Readings per batch")
    event_batch_size: int = Field(default=500, ge=1, le=10_000, description="Events per batch")
    max_in_flight: int = Field(
        default=2, ge=1, le=8, description="Batches sent concurrently (acks may come out of order)"
    )
    max_bytes_per_s: int | None = Field(
        default=None, gt=0, description="Cap on compressed upload bytes per second (metered links)"
    )
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    heartbeat_interval: float = Field(default=30.0, gt=0)
    flush_interval: float = Field(
        default=1.0, gt=0, description="Seconds between buffer checks when there is nothing to send"
    )
    backoff_min: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=60.0, gt=0)
    compression: Literal["zstd", "gzip"] = "zstd"
    live_first: bool = Field(
        default=True, description="With a backlog, alternate fresh batches with backlog batches"
    )
    allow_remote_writes: bool = Field(
        default=False,
        description="Run write/relinquish commands from the receiver (off: refused with reason)",
    )
    allow_remote_modes: bool = Field(
        default=True, description="Run mode_set/mode_clear commands from the receiver"
    )
    command_wait_s: float = Field(
        default=25.0, gt=0, le=60, description="Long-poll seconds for commands from the receiver"
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _checks(self) -> CloudConfig:
        sources = [
            name
            for name in ("enrollment_token", "enrollment_token_env", "enrollment_token_file")
            if getattr(self, name) is not None
        ]
        if len(sources) > 1:
            raise ValueError(f"give at most one of {', '.join(sources)}")
        if self.backoff_max < self.backoff_min:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_min ({self.backoff_min})"
            )
        return self

    def token_path(self, data_dir: Path) -> Path:
        return self.token_file if self.token_file.is_absolute() else data_dir / self.token_file

    def resolve_enrollment_token(self) -> str | None:
        """The enrollment token from whichever source is configured, or None."""
        if self.enrollment_token is not None:
            return self.enrollment_token.get_secret_value().strip() or None
        if self.enrollment_token_env is not None:
            return os.environ.get(self.enrollment_token_env, "").strip() or None
        if self.enrollment_token_file is not None:
            try:
                return self.enrollment_token_file.read_text(encoding="utf-8").strip() or None
            except FileNotFoundError:
                return None
        return None
