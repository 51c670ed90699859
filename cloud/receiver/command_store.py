"""SQL for the command channel: queue, long-poll delivery, results, expiry.

Ordering: ids of one gateway's commands are assigned and committed in order (a per-gateway
transaction advisory lock around the INSERT), so an agent that has seen id N never misses a
smaller id committed later; its cursor (``after``) is safe.

Wake-up: an INSERT notifies ``outpost_command_queued`` with the gateway id; every receiver
process LISTENs on one connection and wakes its waiting long-polls at once. While that
connection is down, long-polls re-check every few seconds, so any number of stateless
receivers behind a load balancer deliver within that bound.

A finalised command (result posted, or expired) is reported to ``on_final`` inside the same
transaction: the rollout engine advances there, so a rollout never misses a step even when
the receiver restarts between two steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from outpost.cloud.receiver.reconnect import until_connected
from outpost.cloud.wire_commands import (
    DEFAULT_EXPIRY_S,
    CommandPoll,
    CommandResult,
    CommandSpec,
    CommandView,
    WireCommand,
)

log = structlog.get_logger(__name__)

CHANNEL = "outpost_command_queued"
#: pg_advisory_xact_lock namespace for per-gateway command ordering ("cmds")
_LOCK_NS = 0x636D6473
_RECHECK_WITHOUT_LISTENER_S = 2.0
_COLUMNS = (
    "id, gateway_id, kind, args, created_by, state, created_at, expires_at, delivered_at, "
    "finished_at, result, rollout_id"
)


@dataclass(frozen=True, slots=True)
class Finalized:
    """A command that just reached a final state."""

    id: int
    gateway_id: str
    kind: str
    state: str
    result: dict[str, Any] | None
    rollout_id: int | None


OnFinal = Callable[[asyncpg.Connection, Sequence[Finalized]], Awaitable[None]]


class CommandStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        expiry_s: dict[str, float] | None = None,
        on_final: OnFinal | None = None,
    ) -> None:
        self.pool = pool
        self.expiry_s = {**DEFAULT_EXPIRY_S, **(expiry_s or {})}
        self.on_final = on_final
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncpg.Connection | None = None
        self._dsn = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, dsn: str, *, sweep_s: float = 5.0) -> None:
        """LISTEN for new commands and sweep expired queued ones every ``sweep_s``."""
        self._dsn = dsn
        try:
            await self._connect_listener()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("commands.listener_unavailable", error=str(exc))
            self._spawn(self._relisten_loop())
        self._spawn(self._sweep_loop(sweep_s))

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            with contextlib.suppress(OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
                await self._listener.close(timeout=2)
            self._listener = None
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_listener(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_listener_lost(self, _conn: object) -> None:
        self._listener = None
        if not self._closing:
            self._spawn(self._relisten_loop())

    async def _relisten_loop(self) -> None:
        if self._closing or self._listener is not None:
            return
        await until_connected(self._connect_listener)  # cancelled by close()
        log.info("commands.listener_reconnected")
        self._wake_all()  # a command may have come meanwhile

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for event in self._waiters.get(payload, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _sweep_loop(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.expire_due(None)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("commands.sweep_failed", error=str(exc))

    # --- queue ------------------------------------------------------------------------------

    async def create(
        self,
        gateway_id: str,
        spec: CommandSpec,
        actor: str,
        *,
        expires_in_s: float | None = None,
        rollout_id: int | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> CommandView:
        """Queue one command (validated already). With ``conn`` it joins the caller's
        transaction (the rollout engine queues steps atomically with its own rows)."""
        lifetime = expires_in_s if expires_in_s is not None else self.expiry_s[spec.kind]
        args = spec.args.model_dump(mode="json")
        if conn is None:
            async with self.pool.acquire() as own, own.transaction():
                return await self._insert(
                    own, gateway_id, spec.kind, args, actor, lifetime, rollout_id
                )
        return await self._insert(conn, gateway_id, spec.kind, args, actor, lifetime, rollout_id)

    async def _insert(
        self,
        conn: asyncpg.Connection,
        gateway_id: str,
        kind: str,
        args: dict[str, Any],
        actor: str,
        lifetime_s: float,
        rollout_id: int | None,
    ) -> CommandView:
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_NS, gateway_id)
        row = await conn.fetchrow(
            f"""INSERT INTO commands (gateway_id, kind, args, created_by, state, expires_at,
                                      rollout_id)
                VALUES ($1, $2, $3::jsonb, $4, 'queued', now() + $5::interval, $6)
                RETURNING {_COLUMNS}""",
            gateway_id,
            kind,
            json.dumps(args),
            actor,
            timedelta(seconds=lifetime_s),
            rollout_id,
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, gateway_id)
        assert row is not None
        return view(row)

    # --- delivery ---------------------------------------------------------------------------

    async def expire_due(self, gateway_id: str | None) -> int:
        """Mark queued commands past their expiry as expired (never delivered)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._expire(conn, gateway_id)

    async def _expire(self, conn: asyncpg.Connection, gateway_id: str | None) -> int:
        where = "state = 'queued' AND expires_at <= now()"
        args: list[Any] = []
        if gateway_id is not None:
            where += " AND gateway_id = $1"
            args.append(gateway_id)
        rows = await conn.fetch(
            f"""UPDATE commands SET state = 'expired', finished_at = now(),
                    result = jsonb_build_object('status', 'expired', 'message',
                        'not delivered before it expired at '
                        || to_char(expires_at AT TIME ZONE 'UTC',
                                   'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                WHERE {where}
                RETURNING id, gateway_id, kind, state, result, rollout_id""",
            *args,
        )
        if rows:
            await self._finalized(conn, rows)
        if rows:
            log.info("commands.expired", count=len(rows), ids=[r["id"] for r in rows][:20])
        return len(rows)

    async def take(self, gateway_id: str, after: int) -> CommandPoll:
        """Open commands newer than ``after`` (queued ones become delivered). Already
        delivered ones are sent again: the agent keeps executed ids and answers a repeat with
        its stored result instead of executing again."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._expire(conn, gateway_id)
            rows = await conn.fetch(
                f"""UPDATE commands
                    SET state = 'delivered', delivered_at = coalesce(delivered_at, now())
                    WHERE gateway_id = $1 AND id > $2 AND state IN ('queued', 'delivered')
                    RETURNING {_COLUMNS}""",
                gateway_id,
                after,
            )
            now = await conn.fetchval("SELECT now()")
        commands = [
            WireCommand(
                id=r["id"],
                kind=r["kind"],
                args=json.loads(r["args"]),
                actor=r["created_by"],
                created_at=_ms(r["created_at"]),
                expires_at=_ms(r["expires_at"]),
            )
            for r in sorted(rows, key=lambda r: r["id"])
        ]
        return CommandPoll(now=_ms(now), commands=commands)

    async def wait(
        self,
        gateway_id: str,
        after: int,
        wait_s: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> CommandPoll:
        """Long-poll: answer as soon as an open command newer than ``after`` exists, else an
        empty poll after ``wait_s``. ``gone``: whether the client hung up meanwhile; then
        nothing is taken (a command marked delivered to a dead connection would only be
        delivered again later, but its state would say "delivered" to nobody)."""
        deadline = time.monotonic() + wait_s
        event = asyncio.Event()
        self._waiters.setdefault(gateway_id, set()).add(event)
        first = True
        try:
            while True:
                event.clear()
                if not first and gone is not None and await gone():
                    return CommandPoll(now=int(time.time() * 1000), commands=[])
                first = False
                found = await self.take(gateway_id, after)
                remaining = deadline - time.monotonic()
                if found.commands or remaining <= 0 or self._closing:
                    return found
                step = remaining if self._listener is not None else _RECHECK_WITHOUT_LISTENER_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=min(remaining, step))
        finally:
            waiters = self._waiters.get(gateway_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[gateway_id]

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    # --- results ----------------------------------------------------------------------------

    async def record_result(
        self, gateway_id: str, command_id: int, result: CommandResult
    ) -> CommandView | None:
        """Store the agent's outcome; a repeat (lost answer, re-sent result) changes nothing.
        None when the gateway has no such command."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE commands
                    SET state = $3, finished_at = now(), result = $4::jsonb,
                        delivered_at = coalesce(delivered_at, now())
                    WHERE id = $1 AND gateway_id = $2 AND state IN ('queued', 'delivered')
                    RETURNING {_COLUMNS}""",
                command_id,
                gateway_id,
                result.status,
                result.model_dump_json(),
            )
            if row is not None:
                await self._finalized(conn, [row])
                log.info(
                    "commands.result",
                    gateway=gateway_id,
                    id=command_id,
                    kind=row["kind"],
                    status=result.status,
                )
                return view(row)
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM commands WHERE id = $1 AND gateway_id = $2",
                command_id,
                gateway_id,
            )
        return None if row is None else view(row)

    async def _finalized(self, conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> None:
        if self.on_final is None:
            return
        done = [
            Finalized(
                id=r["id"],
                gateway_id=r["gateway_id"],
                kind=r["kind"],
                state=r["state"],
                result=_json(r["result"]),
                rollout_id=r["rollout_id"],
            )
            for r in rows
        ]
        await self.on_final(conn, done)

    # --- reads ------------------------------------------------------------------------------

    async def get(self, gateway_id: str, command_id: int) -> CommandView | None:
        await self.expire_due(gateway_id)
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM commands WHERE id = $1 AND gateway_id = $2",
            command_id,
            gateway_id,
        )
        return None if row is None else view(row)

    async def list(
        self,
        gateway_id: str | None,
        *,
        states: Sequence[str] = (),
        kind: str | None = None,
        since: datetime | None = None,
        before_id: int | None = None,
        rollout_id: int | None = None,
        sites: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[CommandView]:
        """Newest first; all gateways when ``gateway_id`` is None."""
        await self.expire_due(gateway_id)
        where = ["true"]
        args: list[Any] = []

        def add(clause: str, value: Any) -> None:
            args.append(value)
            where.append(clause.format(f"${len(args)}"))

        if gateway_id is not None:
            add("gateway_id = {}", gateway_id)
        if states:
            add("state = ANY({}::text[])", list(states))
        if kind is not None:
            add("kind = {}", kind)
        if since is not None:
            add("created_at >= {}", since)
        if before_id is not None:
            add("id < {}", before_id)
        if rollout_id is not None:
            add("rollout_id = {}", rollout_id)
        if sites is not None:  # a site-scoped user sees only its sites' gateways
            add("gateway_id IN (SELECT id FROM gateways WHERE site = ANY({}::text[]))", sites)
        args.append(limit)
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM commands WHERE {' AND '.join(where)} "
            f"ORDER BY id DESC LIMIT ${len(args)}",
            *args,
        )
        return [view(r) for r in rows]


def view(row: asyncpg.Record) -> CommandView:
    result = _json(row["result"])
    return CommandView(
        id=row["id"],
        gateway_id=row["gateway_id"],
        kind=row["kind"],
        args=json.loads(row["args"]),
        actor=row["created_by"],
        state=row["state"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        delivered_at=row["delivered_at"],
        finished_at=row["finished_at"],
        result=_result(result),
        rollout_id=row["rollout_id"],
    )


def _result(data: dict[str, Any] | None) -> CommandResult | None:
    if data is None:
        return None
    data = {"message": "", "executed_at": 0, **data}
    return CommandResult.model_validate(data)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _ms(dt: datetime | int) -> int:
    # The pool's codec may already give epoch ms (see storage._init_connection).
    if isinstance(dt, int):
        return dt
    return int(dt.astimezone(UTC).timestamp() * 1000)
