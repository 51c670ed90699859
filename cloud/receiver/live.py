"""Live updates: PostgreSQL NOTIFY on ingest/heartbeat/alarm/command → SSE to browsers.

Any receiver process may store a batch, and any other may hold the browser's SSE connection
(several receivers behind one load balancer), so the signal travels through the database:
the writer calls ``pg_notify('outpost_live', payload)`` inside its transaction (delivered on
commit, never for a rolled-back batch), and every process keeps ONE listening connection
(:class:`LiveHub`) that fans each notification out to its own SSE subscribers.

Payloads are JSON objects with ``t`` (the SSE event type) and ``gw`` (the gateway id):

- ``reading``: ``{"t":"reading","gw":G,"pts":{point_id:[ts_ms,value,quality]},"more":bool}``,
  the newest sample per point of one batch (several notifications when a batch has many
  points; ``more`` is true when points were left out to bound the NOTIFY traffic: clients
  re-read what they show then)
- ``hb``: ``{"t":"hb","gw":G}`` after a heartbeat
- ``alarm``: ``{"t":"alarm","gw":G,"n":N}`` after a batch with N alarm/operator events
- ``command``: ``{"t":"command","gw":G,"id":ID,"status":S}`` when a command changes state

Nothing here imports the storage layer: storage imports :func:`reading_payloads` and the
``NOTIFY_*`` statements, the web layer imports :class:`LiveHub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog

from outpost.cloud.receiver.reconnect import until_connected

log = structlog.get_logger(__name__)

CHANNEL = "outpost_live"
#: PostgreSQL caps a NOTIFY payload at 8000 bytes; stay clear of it.
MAX_PAYLOAD = 7000
#: at most this many reading notifications per batch (≈150 points each); more sets "more"
MAX_READING_NOTIFIES = 8
_KEEPALIVE_S = 15.0
_QUEUE_MAX = 512

#: one round trip for any number of payloads (``$1`` text[]); runs inside the caller's
#: transaction, so the notifications are sent on commit only
NOTIFY_MANY_SQL = f"SELECT pg_notify('{CHANNEL}', p) FROM unnest($1::text[]) AS p"
NOTIFY_ONE_SQL = f"SELECT pg_notify('{CHANNEL}', $1)"


def reading_payloads(
    gateway_id: str,
    point_ids: Sequence[str],
    point_index: Sequence[int],
    ts_ms: Sequence[int],
    values: Sequence[float | None],
    qualities: Sequence[int],
) -> list[str]:
    """The newest sample of each point of a columnar batch, as NOTIFY payloads."""
    # dict() over an enumerate keeps the last row index per point (C speed, no per-row branch)
    last = dict(zip(point_index, range(len(point_index)), strict=True))
    head = f'{{"t":"reading","gw":{json.dumps(gateway_id)},"pts":{{'
    out: list[str] = []
    parts: list[str] = []
    size = len(head) + 32
    more = False
    # point ids match the wire's POINT_ID_PATTERN ([a-z0-9_.-], checked at validation): they
    # need no JSON escaping, and values are finite floats or None (wire_value)
    for p, i in last.items():
        v = values[i]
        part = f'"{point_ids[p]}":[{ts_ms[i]},{"null" if v is None else repr(float(v))},{qualities[i]}]'

        if size + len(part) + 1 > MAX_PAYLOAD:
            out.append(head + ",".join(parts) + '},"more":false}')
            parts, size = [], len(head) + 32
            if len(out) == MAX_READING_NOTIFIES:
                more = True
                break
        parts.append(part)
        size += len(part) + 1
    if parts and not more:
        out.append(head + ",".join(parts) + '},"more":false}')
    if more and out:
        out[-1] = out[-1][: -len('"more":false}')] + '"more":true}'
    return out


def heartbeat_payload(gateway_id: str) -> str:
    return json.dumps({"t": "hb", "gw": gateway_id})


def alarm_payload(gateway_id: str, count: int) -> str:
    return json.dumps({"t": "alarm", "gw": gateway_id, "n": count})


def command_payload(gateway_id: str, command_id: int, status: str) -> str:
    """For the command lifecycle: NOTIFY this (``NOTIFY_ONE_SQL``) when a command changes
    state, so the alarm console's row goes pending → done/refused without a reload."""
    return json.dumps({"t": "command", "gw": gateway_id, "id": command_id, "status": status})


#: event kinds that change an alarm's state (the agent's fsm/alarms.py emits these)
ALARM_EVENT_KINDS = (
    "alarm",
    "operator.ack",
    "operator.shelve",
    "operator.unshelve",
    "operator.out_of_service",
    "operator.in_service",
)


def is_alarm_event(kind: str) -> bool:
    return kind in ALARM_EVENT_KINDS


# --- fan-out --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveEvent:
    type: str
    gateway_id: str
    raw: str  # the JSON payload as notified: sent to browsers as is (no re-encoding)


@dataclass(eq=False)  # identity: each subscriber is its own set member
class Subscription:
    accept: Callable[[str], bool]  # gateway id → may this subscriber see it
    queue: asyncio.Queue[LiveEvent | None] = field(
        default_factory=lambda: asyncio.Queue(_QUEUE_MAX)
    )
    dropped: int = 0


class LiveHub:
    """One LISTEN connection per process, started with the first subscriber and kept
    (re-connected with back-off when lost); fans notifications out to subscriber queues."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._subs: set[Subscription] = set()
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False
        self.notifications = 0

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    async def start(self) -> None:
        async with self._lock:
            if self._conn is None and not self._closed:
                await self._connect()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_lost)
        self._conn = conn
        log.info("live.listening", channel=CHANNEL)

    def _on_lost(self, _conn: object) -> None:
        self._conn = None
        if self._closed or (self._reconnect is not None and not self._reconnect.done()):
            return
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        async def connect() -> None:
            async with self._lock:
                await self._connect()

        if self._closed:
            return
        await until_connected(connect)  # cancelled by close()
        # updates may have been missed meanwhile: tell pages to re-read
        self._fan_out(LiveEvent("gateway", "*", '{"t":"gateway","gw":"*"}'))

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            head = json.loads(payload)
            event = LiveEvent(str(head.get("t", "")), str(head.get("gw", "")), payload)
        except (ValueError, AttributeError):
            log.warning("live.bad_payload", payload=payload[:200])
            return
        self._fan_out(event)

    def _fan_out(self, event: LiveEvent) -> None:
        for sub in self._subs:
            if event.gateway_id != "*" and not sub.accept(event.gateway_id):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped += 1  # a stalled browser must not hold the others back

    async def subscribe(self, accept: Callable[[str], bool]) -> Subscription:
        await self.start()
        sub = Subscription(accept)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    async def close(self) -> None:
        self._closed = True
        for sub in self._subs:
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
                await conn.close(timeout=2)

    async def stream(self, sub: Subscription) -> AsyncIterator[str]:
        """SSE frames for one subscriber: a ``ready`` event, then events, with keep-alive
        comments so proxies do not time the connection out."""
        try:
            yield "retry: 2000\nevent: ready\ndata: {}\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is None:
                    return
                yield f"event: {event.type}\ndata: {event.raw}\n\n"
        finally:
            self.unsubscribe(sub)
