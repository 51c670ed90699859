"""State shared by the uplink's parts for one gateway: settings, credentials, counters."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from outpost.cloud.config import CloudConfig
from outpost.cloud.uplink.support import TokenBucket
from outpost.cloud.wire import Encoding


class UplinkConfigError(Exception):
    """The [cloud] configuration cannot work as given (e.g. an unreadable CA bundle)."""


class UplinkAuthError(Exception):
    """The receiver refused our credentials (401/403)."""


@dataclass
class Counters:
    connected: bool = False
    enrolled: bool = False
    last_success_ts: float | None = None
    last_error: str | None = None
    last_error_ts: float | None = None
    retry_at: float | None = None
    bytes_sent: int = 0
    readings_sent: int = 0
    events_sent: int = 0
    batches_sent: int = 0
    batches_failed: int = 0
    duplicates_acked: int = 0
    rejected_batches: int = 0
    rejected_rows: int = 0
    heartbeats_sent: int = 0
    last_heartbeat_ts: float | None = None


@dataclass
class Session:
    config: CloudConfig
    gateway_id: str
    data_dir: Path
    counters: Counters = field(default_factory=Counters)
    token: str | None = None
    bucket: TokenBucket | None = None
    compression: Encoding = "zstd"
    #: ingest body: the binary columnar one, or JSON (the fallback a receiver that does not
    #: take the binary body gets; see Delivery)
    wire: Literal["columnar", "json"] = "columnar"

    @property
    def token_path(self) -> Path:
        return self.config.token_path(self.data_dir)

    def auth(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` plus the gateway's bearer token."""
        return {**headers, "Authorization": f"Bearer {self.token}"}

    def error(self, message: str) -> None:
        self.counters.last_error = message
        self.counters.last_error_ts = time.time()

    async def sleep_retry(self, delay: float) -> None:
        self.counters.retry_at = time.monotonic() + delay
        try:
            await asyncio.sleep(delay)
        finally:
            self.counters.retry_at = None


def detail(resp: httpx.Response) -> str:
    """The receiver's error detail, short enough for a log line."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict) and "detail" in body:
        text = body["detail"]
        return text if isinstance(text, str) else json.dumps(text)[:500]
    return json.dumps(body)[:300]


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
