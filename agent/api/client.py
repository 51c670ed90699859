"""Client for the daemon's local API on its Unix socket (used by the CLI).

A missing or dead socket is the everyday case of "no agent running": it becomes one
`AgentNotRunning` error with a one-line message, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


class AgentNotRunning(Exception):
    pass


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AgentClient:
    def __init__(self, socket_path: Path, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout

    def _client(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        return httpx.Client(transport=transport, base_url="http://outpost", timeout=self._timeout)

    def request(
        self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        if not self.socket_path.exists():
            raise AgentNotRunning(
                f"no agent running: socket {self.socket_path} not found (start it with `outpost run`)"
            )
        try:
            with self._client() as client:
                response = client.request(method, path, json=json, params=params)
        except (httpx.ConnectError, httpx.RemoteProtocolError, ConnectionRefusedError) as exc:
            raise AgentNotRunning(
                f"no agent running: socket {self.socket_path} does not answer ({exc.__class__.__name__})"
            ) from None
        except httpx.TimeoutException:
            raise AgentNotRunning(
                f"agent did not answer within {self._timeout:.0f}s on {self.socket_path} (busy or hung?)"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, str(detail))
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)
