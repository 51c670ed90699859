"""The command channel's client: long-poll, execute exactly once, report until confirmed.

Two loops share one HTTP client:

- poll: ``GET /api/v1/gateways/{id}/commands?after=CURSOR&wait=S`` where CURSOR is the
  largest id in the executed store. Each command is checked against the store (a repeat is
  never run: its stored result is queued for sending again), against its expiry (judged on
  the receiver's clock, carried in the poll, plus local monotonic time since), then recorded
  ``started`` (fsync'd), run, and its result recorded (fsync'd) before anything is sent.
- results: posts every unreported result, oldest first, until the receiver answers; a lost
  answer only means the result is posted again (the receiver ignores repeats).

Results also become ``command.result`` events, so they travel in the normal sync too.
Transport errors back off with the uplink's capped, jittered policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import structlog
from pydantic import ValidationError

from outpost.cloud.config import CloudConfig
from outpost.cloud.uplink.support import parse_retry_after, read_token, retry_backoff
from outpost.cloud.wire_commands import CommandPoll, CommandResult, CommandSpec, WireCommand

from .executor import CommandExecutor
from .store import ExecutedStore

log = structlog.get_logger(__name__)

Emit = Callable[[float, str, str, str | None, Mapping[str, Any]], None]
STORE_FILE = "commands.db"
_TOKEN_WAIT_S = 1.0


class CommandChannel:
    def __init__(
        self,
        config: CloudConfig,
        *,
        gateway_id: str,
        data_dir: Path,
        executor: CommandExecutor,
        emit: Emit | None = None,
        store: ExecutedStore | None = None,
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.data_dir = data_dir
        self.executor = executor
        self.emit = emit
        self.store = store or ExecutedStore(data_dir / STORE_FILE)
        self._results_ready = asyncio.Event()
        self._opened = False
        self._cursor = 0
        # status
        self.connected = False
        self.last_poll_ok: float | None = None
        self.last_error: str | None = None
        self.last_command: dict[str, Any] | None = None
        self.executed = 0
        self.executed_by_status: dict[str, int] = {}
        self.pending_results = 0

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For ``outpost status``: connected, last command, results not yet confirmed."""
        return {
            "connected": self.connected,
            "last_poll_ok": self.last_poll_ok,
            "last_error": self.last_error,
            "last_command": self.last_command,
            "executed": self.executed,
            "executed_by_status": dict(self.executed_by_status),
            "pending_results": self.pending_results,
            "remote_writes": self.executor.policy.allow_remote_writes,
            "remote_modes": self.executor.policy.allow_remote_modes,
        }

    # --- run --------------------------------------------------------------------------------

    async def run(self) -> None:
        if not self._opened:
            interrupted = await asyncio.to_thread(self.store.open)
            self._cursor = await asyncio.to_thread(self.store.cursor)
            self._opened = True
            for cid in interrupted:
                log.warning("command.interrupted", id=cid)
                self._emit_result(cid, "", "", await self._stored(cid))
        try:
            async with self._http() as client:
                token = await self._wait_token()
                client.headers["Authorization"] = f"Bearer {token}"
                self._results_ready.set()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._poll_loop(client), name="commands.poll")
                    tg.create_task(self._result_loop(client), name="commands.results")
        finally:
            self.connected = False

    def close(self) -> None:
        self.store.close()
        self._opened = False

    def _http(self) -> httpx.AsyncClient:
        cfg = self.config
        verify: ssl.SSLContext | bool = True
        if cfg.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(cfg.ca_file))
        return httpx.AsyncClient(
            base_url=cfg.url,
            verify=verify,
            timeout=httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout),
        )

    async def _wait_token(self) -> str:
        # The uplink enrolls and writes the token file; until then there is nobody to ask.
        path = self.config.token_path(self.data_dir)
        while True:
            token = await asyncio.to_thread(read_token, path)
            if token:
                return token
            await asyncio.sleep(_TOKEN_WAIT_S)

    async def _stored(self, cid: int) -> CommandResult:
        row = await asyncio.to_thread(self.store.lookup, cid)
        assert row is not None and row.result is not None
        return row.result

    # --- polling ----------------------------------------------------------------------------

    async def _poll_loop(self, client: httpx.AsyncClient) -> None:
        cfg = self.config
        backoff = retry_backoff(cfg.backoff_min, cfg.backoff_max)
        url = f"/api/v1/gateways/{self.gateway_id}/commands"
        wait = cfg.command_wait_s
        while True:
            retry_after: float | None = None
            try:
                resp = await client.get(
                    url,
                    params={"after": self._cursor, "wait": wait},
                    timeout=httpx.Timeout(wait + cfg.read_timeout, connect=cfg.connect_timeout),
                )
                received = time.monotonic()
                if resp.status_code == 200:
                    poll = CommandPoll.model_validate_json(resp.content)
                    self.connected, self.last_poll_ok, self.last_error = True, time.time(), None
                    backoff.reset()
                    for cmd in poll.commands:
                        await self._handle(cmd, poll.now, received)
                    continue
                if resp.status_code == 401:
                    await self._refresh_token(client)
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
                self.last_error = f"HTTP {resp.status_code}: {_detail(resp)}"
            except httpx.HTTPError as exc:
                self.last_error = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
            except ValidationError as exc:
                self.last_error = f"bad poll answer: {exc.error_count()} error(s)"
            self.connected = False
            delay = backoff.next_delay(retry_after)
            log.info("commands.poll_failed", error=self.last_error, retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)

    async def _refresh_token(self, client: httpx.AsyncClient) -> None:
        token = await asyncio.to_thread(read_token, self.config.token_path(self.data_dir))
        if token:
            client.headers["Authorization"] = f"Bearer {token}"

    async def _handle(self, cmd: WireCommand, receiver_now: int, received: float) -> None:
        self._cursor = max(self._cursor, cmd.id)
        remaining_s = (cmd.expires_at - receiver_now) / 1000 - (time.monotonic() - received)
        verdict: CommandSpec | CommandResult
        if remaining_s <= 0:
            verdict = CommandResult(
                status="expired",
                message="arrived after its expiry; not executed",
                executed_at=int(time.time() * 1000),
            )
        else:
            verdict = self.executor.validate(cmd)
        if isinstance(verdict, CommandResult):  # decided without running anything
            fresh = await asyncio.to_thread(self.store.record, cmd.id, cmd.kind, cmd.actor, verdict)
            if fresh:
                self._finished(cmd, verdict)
            else:
                await self._repeat(cmd.id)
            return
        # Durable BEFORE the action: a crash from here on never runs it again.
        if not await asyncio.to_thread(self.store.begin, cmd.id, cmd.kind, cmd.actor):
            await self._repeat(cmd.id)
            return
        t0 = time.perf_counter()
        result = await self.executor.execute(verdict, cmd.actor)
        await asyncio.to_thread(self.store.finish, cmd.id, result)
        log.info(
            "command.executed",
            id=cmd.id,
            kind=cmd.kind,
            actor=cmd.actor,
            status=result.status,
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )
        self._finished(cmd, result)

    async def _repeat(self, cid: int) -> None:
        """Delivered again: the receiver has no result yet. Never run it twice; resend the
        stored result (a row still ``started`` belongs to a crashed run: open() finished it)."""
        await asyncio.to_thread(self.store.mark_unreported, cid)
        self._results_ready.set()

    def _finished(self, cmd: WireCommand, result: CommandResult) -> None:
        self.executed += 1
        self.executed_by_status[result.status] = self.executed_by_status.get(result.status, 0) + 1
        self.last_command = {
            "id": cmd.id,
            "kind": cmd.kind,
            "actor": cmd.actor,
            "status": result.status,
            "at": time.time(),
        }
        self._emit_result(cmd.id, cmd.kind, cmd.actor, result)
        self._results_ready.set()

    def _emit_result(self, cid: int, kind: str, actor: str, result: CommandResult) -> None:
        if self.emit is None:
            return
        detail: dict[str, Any] = {
            "command_id": cid,
            "kind": kind,
            "status": result.status,
            "message": result.message,
        }
        if result.value is not None:
            detail["value"] = result.value
        outcome = result.detail.get("outcome")
        if outcome is not None:
            detail["outcome"] = outcome
        self.emit(time.time(), "command.result", f"command:{cid}", actor or None, detail)

    # --- results ----------------------------------------------------------------------------

    async def _result_loop(self, client: httpx.AsyncClient) -> None:
        cfg = self.config
        backoff = retry_backoff(cfg.backoff_min, cfg.backoff_max)
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            while True:
                batch = await asyncio.to_thread(self.store.unreported)
                self.pending_results = len(batch)
                if not batch:
                    break
                retry_after: float | None = None
                failed = False
                for cid, result in batch:
                    try:
                        resp = await client.post(
                            f"/api/v1/gateways/{self.gateway_id}/commands/{cid}/result",
                            content=result.model_dump_json(),
                            headers={"Content-Type": "application/json"},
                        )
                    except httpx.HTTPError as exc:
                        self.last_error = f"result {cid}: {exc.__class__.__name__}"
                        failed = True
                        break
                    if resp.status_code == 422 and result.detail:
                        # The receiver cannot take this result as is: keep the verdict, drop
                        # the detail, so the command still ends in its real state there.
                        slim = result.model_copy(
                            update={"detail": {}, "message": result.message[:500]}
                        )
                        log.error("commands.result_refused", id=cid, detail=_detail(resp))
                        await asyncio.to_thread(self.store.finish, cid, slim)
                        break
                    if resp.status_code in (200, 404, 422):
                        if resp.status_code != 200:  # unknown there, or refused even slim
                            log.warning(
                                "commands.result_dropped",
                                id=cid,
                                status=resp.status_code,
                                detail=_detail(resp),
                            )
                        await asyncio.to_thread(self.store.mark_reported, cid)
                        self.pending_results = max(0, self.pending_results - 1)
                        continue
                    if resp.status_code == 401:
                        await self._refresh_token(client)
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                    self.last_error = f"result {cid}: HTTP {resp.status_code}: {_detail(resp)}"
                    failed = True
                    break
                if failed:
                    await asyncio.sleep(backoff.next_delay(retry_after))
                else:
                    backoff.reset()


def _detail(resp: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(resp.json().get("detail", ""))[:200]
    return resp.text[:200]
