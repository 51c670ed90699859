"""Serving the local API on its Unix socket, and who may use it.

Who may connect: the socket is mode 0660, so only the agent's user and members of its group
(``outpost``: add technicians to it) can open it; the data dir around it is 0750. Who is
asking: the kernel tells us (``SO_PEERCRED``: the peer's uid at connect time), and that user's
name is the ``actor`` recorded with every action. A request body cannot name someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import socket
import struct
from collections.abc import Generator
from pathlib import Path

import uvicorn
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

SOCKET_MODE = 0o660
DIR_MODE = 0o750
_PEER_PREFIX = "uid:"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _PeerCredProtocol(H11Protocol):
    """h11 over a Unix socket, with the peer's uid as the ASGI ``client`` host (``uid:N``) and
    its pid as the port; there is no address to put there on a Unix socket anyway."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            pid, uid, _gid = _UCRED.unpack(raw)
            self.client = (f"{_PEER_PREFIX}{uid}", pid)


def peer_user(request: Request) -> str:
    """The user name of the process at the other end of the socket (who acts)."""
    client = request.client
    if client is None or not client.host.startswith(_PEER_PREFIX):
        raise HTTPException(403, "the caller is unknown: the local API answers on its socket only")
    uid = int(client.host.removeprefix(_PEER_PREFIX))
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (containers): still name someone
        return f"uid:{uid}"


#: Set by the status page's guard (``api.page``) on every request it passes on: the page's
#: session, or None. Absent on the Unix socket, whose requests never pass the guard.
PAGE_SESSION = "outpost.page_session"


def peer_or_page_user(request: Request) -> str:
    """Who acts, for routes served on both the socket and the status page (the page mounts
    the socket's app under ``/api``): the page's logged-in user (``<user>@page``), or
    on the socket the peer's user name."""
    if PAGE_SESSION in request.scope:
        session = request.scope[PAGE_SESSION]
        if session is None:
            raise HTTPException(401, "log in first")
        return str(session.actor)
    return peer_user(request)


def bind_socket(path: Path) -> socket.socket:
    """A listening-ready Unix socket at ``path``, mode 0660, group = the agent's group.

    Bound with the process umask (which never grants others write, so nobody else can
    connect in between), then widened to the group explicitly."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()  # stale socket of a previous (killed) run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(SOCKET_MODE)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn.Server without its own signal handling (the runtime owns SIGTERM/SIGINT/SIGHUP)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class LocalApiServer:
    """The API app served on one Unix socket until cancelled (or ``stop()``)."""

    def __init__(self, app: ASGIApp, path: Path) -> None:
        self.path = path
        self._server = _Server(
            uvicorn.Config(
                app, http=_PeerCredProtocol, log_config=None, access_log=False, lifespan="off"
            )
        )

    @property
    def started(self) -> bool:
        return self._server.started

    def stop(self) -> None:
        self._server.should_exit = True

    async def serve(self) -> None:
        sock = bind_socket(self.path)
        try:
            await self._server.serve(sockets=[sock])
        except asyncio.CancelledError:
            self._server.should_exit = True
            raise
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
