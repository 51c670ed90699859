"""Client for the daemon's local API on its Unix socket (used by the CLI).

A missing or dead socket is the everyday case of "no agent running": it becomes one
`AgentNotRunning` error with a one-line message, never a traceback.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx


class AgentNotRunning(Exception):
    pass


class AgentAccessDenied(Exception):
    """The socket (or the data dir holding it) is not open to this user."""


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
        # imported here: the CLI module that holds this client is also the daemon's entry
        # point, and `outpost run` never calls its own API (httpx costs the daemon ≈ 2 MB)
        import httpx

        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        return httpx.Client(transport=transport, base_url="http://outpost", timeout=self._timeout)

    def request(
        self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        denied = self._access_denied()
        if denied is not None:
            raise AgentAccessDenied(denied)
        if not self.socket_path.exists():
            raise AgentNotRunning(
                f"no agent running: socket {self.socket_path} not found (start it with `outpost run`)"
            )
        import httpx

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

    def _access_denied(self) -> str | None:
        """Say who may use the socket, instead of a misleading "not found" or "no answer"."""
        path = self.socket_path
        for target, wanted in ((path.parent, os.X_OK), (path, os.R_OK | os.W_OK)):
            if target.exists() and not os.access(target, wanted):
                group = _group_name(target.stat().st_gid)
                return (
                    f"permission denied: {target} is open to the agent's user and group "
                    f"{group!r} only (an administrator can add you: usermod -aG {group} "
                    f"{_user_name()})"
                )
        return None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
