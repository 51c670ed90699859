"""A TCP proxy for fault tests: forwards bytes and, on command, cuts connections mid-stream.

It sits between the uplink and a real receiver. Cutting *upstream* (client → server) at a
random byte offset kills a request half-sent: the receiver must write nothing. Cutting
*downstream* (server → client) kills a response half-delivered: the receiver has committed
the batch but the agent never sees the ack, so it must replay and the receiver must
deduplicate. Cuts are abortive (SO_LINGER 0 → RST) like a real dropped link.

Use it from the test's event loop::

    proxy = ChaosProxy("127.0.0.1", receiver_port)
    await proxy.start()
    proxy.arm(requests=30, responses=30)      # the next 60 matching chunks get cut
    ...
    assert proxy.cuts["request"] >= 30
    await proxy.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Plan:
    requests: int = 0
    responses: int = 0
    # Probability that a given chunk is cut while cuts remain armed; < 1 spreads the cuts over
    # many batches instead of cutting every chunk in a row.
    probability: float = 1.0


@dataclass
class ChaosProxy:
    upstream_host: str
    upstream_port: int
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    cuts: dict[str, int] = field(default_factory=lambda: {"request": 0, "response": 0})
    connections: int = 0
    refuse: bool = False
    #: Terminate TLS here (the receiver behind stays plain HTTP), like a TLS front end.
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self._plan = _Plan()
        self._rng = random.Random(self.seed)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._canned: tuple[int, str, dict[str, str], int] | None = None
        self._body_matches: Callable[[bytes], bool] | None = None
        self.answered = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop_all()
            await self._server.wait_closed()
            self._server = None

    def arm(self, *, requests: int = 0, responses: int = 0, probability: float = 1.0) -> None:
        """Cut the next `requests` client→server and `responses` server→client chunks."""
        self._plan = _Plan(requests, responses, probability)

    @property
    def armed(self) -> int:
        return self._plan.requests + self._plan.responses

    def answer(
        self,
        status: int,
        *,
        count: int,
        path_prefix: str = "/",
        headers: dict[str, str] | None = None,
        body_matches: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Answer the next `count` requests under `path_prefix` ourselves with `status` (like
        an overloaded load balancer: 503/429 with Retry-After) instead of forwarding them.

        With `body_matches`, only requests whose (raw) body it accepts are answered, like a
        receiver that fails on one poisoned row; the others are forwarded."""
        self._canned = (status, path_prefix, dict(headers or {}), count)
        self._body_matches = body_matches
        self.answered = 0
        # Connections opened from now on are inspected request by request: make clients
        # reconnect.
        self.drop_all()

    def drop_all(self) -> None:
        """Abort every open connection now (a link flap)."""
        for writer in list(self._writers):
            _abort(writer)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refuse:
            _abort(client_w)
            return
        try:
            server_r, server_w = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            _abort(client_w)
            return
        self._writers.update((client_w, server_w))
        try:
            async with asyncio.TaskGroup() as tg:
                if self._canned is not None:
                    tg.create_task(self._requests(client_r, server_w, client_w))
                else:
                    tg.create_task(self._pump(client_r, server_w, client_w, "request"))
                tg.create_task(self._pump(server_r, client_w, server_w, "response"))
        except* (OSError, _Cut):
            pass
        finally:
            for w in (client_w, server_w):
                _abort(w)
                self._writers.discard(w)

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_w: asyncio.StreamWriter,
    ) -> None:
        """Client → server, request by request: forward each, or answer it ourselves."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            parts = head.split(b" ", 2)
            path = parts[1].decode("latin-1") if len(parts) > 2 else ""
            canned = self._canned
            match = self._body_matches
            if (
                canned is not None
                and canned[3] > 0
                and path.startswith(canned[1])
                and (match is None or match(body))
            ):
                status, prefix, headers, count = canned
                self._canned = (status, prefix, headers, count - 1)
                self.answered += 1
                text = b'{"detail": "answered by the chaos proxy"}'
                lines = [
                    f"HTTP/1.1 {status} Proxy",
                    "Content-Type: application/json",
                    f"Content-Length: {len(text)}",
                    "Connection: close",
                    *(f"{k}: {v}" for k, v in headers.items()),
                ]
                client_w.write(("\r\n".join(lines) + "\r\n\r\n").encode() + text)
                await client_w.drain()
                raise _Cut  # closes both sides, like a front end that hangs up
            writer.write(head + body)
            await writer.drain()

    def _should_cut(self, direction: str) -> bool:
        remaining = self._plan.requests if direction == "request" else self._plan.responses
        if remaining <= 0 or self._rng.random() > self._plan.probability:
            return False
        if direction == "request":
            self._plan.requests -= 1
        else:
            self._plan.responses -= 1
        self.cuts[direction] += 1
        return True

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                # Half-close: pass the FIN on, keep the other direction running.
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            if self._should_cut(direction):
                keep = self._rng.randrange(0, len(chunk))
                if keep:
                    writer.write(chunk[:keep])
                    with contextlib.suppress(OSError):
                        await writer.drain()
                _abort(writer)
                _abort(other)
                raise _Cut
            writer.write(chunk)
            await writer.drain()


class _Cut(Exception):
    pass


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
