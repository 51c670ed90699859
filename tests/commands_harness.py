"""Helpers for the command-channel tests: a real agent with ``[cloud]`` against a real receiver,
and an operator client queuing commands and waiting for their final state."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from tests.agent_process import write_config
from tests.modbus_server import ModbusTestServer
from tests.receiver_fixtures import ReceiverHandle

FINAL = {"succeeded", "failed", "refused", "expired"}
#: Modbus function codes of writes (single/multiple coils/registers)
WRITE_FCS = {5, 6, 15, 16}


def cloud_section(url: str, enrollment: str, **overrides: Any) -> str:
    keys: dict[str, Any] = {
        "heartbeat_interval": 0.5,
        "flush_interval": 0.2,
        "backoff_min": 0.05,
        "backoff_max": 0.5,
        "connect_timeout": 2,
        "read_timeout": 5,
        "command_wait_s": 5,
        **overrides,
    }
    lines = ["[cloud]", f'url = "{url}"', f'enrollment_token = "{enrollment}"']
    for key, value in keys.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def agent_config(
    tmp_path: Path,
    server: ModbusTestServer,
    schedule: str,
    cloud: str,
    gateway_id: str,
    *,
    poll_interval: float = 0.2,
) -> Path:
    return write_config(
        tmp_path,
        {
            "plc": {
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "poll_interval": poll_interval,
                "timeout": 0.5,
            }
        },
        schedule,
        extra=cloud,
        gateway_id=gateway_id,
    )


class Operator:
    """The fleet operator's side: the receiver's HTTP API with the admin token."""

    def __init__(self, receiver: ReceiverHandle, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.http = httpx.AsyncClient(
            base_url=receiver.url, headers=receiver.admin_headers, timeout=30
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def queue(self, kind: str, args: dict[str, Any] | None = None, **extra: Any) -> int:
        r = await self.http.post(
            f"/api/v1/gateways/{self.gateway_id}/commands",
            json={"kind": kind, "args": args or {}, **extra},
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    async def get(self, cid: int) -> dict[str, Any]:
        r = await self.http.get(f"/api/v1/gateways/{self.gateway_id}/commands/{cid}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def final(self, cid: int, within: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            body = await self.get(cid)
            if body["state"] in FINAL:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"command {cid} not final after {within} s: {body}")
            await asyncio.sleep(0.05)

    async def run(self, kind: str, args: dict[str, Any] | None = None, **extra: Any) -> Any:
        return await self.final(await self.queue(kind, args, **extra))


def writes_to(server: ModbusTestServer, address: int) -> int:
    """Write requests the pymodbus server received for ``address``."""
    return sum(1 for r in server.requests if r.fc in WRITE_FCS and r.address == address)
