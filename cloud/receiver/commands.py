"""HTTP endpoints of the command channel and of schedule rollouts.

Operators (``require("operator")``; reads ``viewer``):

- ``POST /api/v1/gateways/{id}/commands``: queue one command of the closed set
  (``outpost.cloud.wire_commands``); 422 for an unknown kind or bad arguments, never stored.
- ``GET /api/v1/gateways/{id}/commands/{cid}``: one command with its lifecycle and result.
- ``GET /api/v1/commands?gateway=&state=&kind=&since=&rollout=&before=&limit=``: list, newest
  first.
- ``POST /api/v1/rollouts``, ``GET /api/v1/rollouts``, ``GET /api/v1/rollouts/{rid}``,
  ``POST /api/v1/rollouts/{rid}/abort``.

Gateways (their own bearer token):

- ``GET /api/v1/gateways/{id}/commands?after=ID&wait=S``: long-poll (:class:`CommandPoll`).
- ``POST /api/v1/gateways/{id}/commands/{cid}/result``: the outcome; idempotent.

The actor recorded with a command (and on the agent, in its events) is the central user as
``name@fleet``.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from outpost.cloud.wire_commands import (
    ID_PATTERN,
    KINDS,
    CommandPoll,
    CommandResult,
    CommandSpec,
    CommandState,
    CommandView,
)

from . import audit
from .auth import Principal, client_address, require
from .command_store import CommandStore
from .rollouts import RolloutEngine, RolloutError, RolloutRequest, RolloutView
from .settings import ReceiverSettings

_bearer = HTTPBearer(auto_error=False, description="gateway token or operator credential")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
GwPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
_BIGINT = 2**63 - 1
IdPath = Annotated[int, Path(ge=1, le=_BIGINT)]
FLEET_SUFFIX = "@fleet"


class ErrorOut(BaseModel):
    detail: str


def central_actor(name: str) -> str:
    """How a central user is recorded on the agent: ``alice`` -> ``alice@fleet``."""
    return name if name.endswith(FLEET_SUFFIX) else name + FLEET_SUFFIX


def commands_router(settings: ReceiverSettings) -> APIRouter:
    """The router; its lifespan opens the command store (LISTEN + expiry sweep) on the
    receiver's pool once the app's storage is up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = app.state.storage
        rollouts = RolloutEngine(storage.pool)
        store = CommandStore(storage.pool, on_final=rollouts.on_final)
        rollouts.commands = store
        await store.start(settings.dsn)
        app.state.commands, app.state.rollouts = store, rollouts
        try:
            yield
        finally:
            await store.close()

    router = APIRouter(lifespan=lifespan)

    def store_of(request: Request) -> CommandStore:
        return request.app.state.commands

    def rollouts_of(request: Request) -> RolloutEngine:
        return request.app.state.rollouts

    Store = Annotated[CommandStore, Depends(store_of)]
    Rollouts = Annotated[RolloutEngine, Depends(rollouts_of)]

    async def gateway_auth(request: Request, creds: Creds) -> str:
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        auth = await request.app.state.storage.authenticate(creds.credentials)
        if auth is None or auth.revoked:
            raise HTTPException(
                401, "unknown or revoked gateway token", headers={"WWW-Authenticate": "Bearer"}
            )
        return str(auth.gateway_id)

    Gateway = Annotated[str, Depends(gateway_auth)]
    Operator = Annotated[Principal, Depends(require("operator"))]
    Viewer = Annotated[Principal, Depends(require("viewer"))]
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut, "description": "missing or wrong credential"},
        403: {"model": ErrorOut, "description": "another gateway's token"},
        404: {"model": ErrorOut, "description": "no such gateway or command"},
    }

    def own(gateway_id: str, authed: str) -> None:
        if gateway_id != authed:
            raise HTTPException(403, f"token belongs to gateway {authed}, not {gateway_id}")

    async def visible_gateway(request: Request, who: Principal, gateway_id: str) -> None:
        row = await request.app.state.storage.pool.fetchrow(
            "SELECT site FROM gateways WHERE id = $1", gateway_id
        )
        if row is None or not who.sees(row["site"]):
            raise HTTPException(404, f"unknown gateway {gateway_id}")

    # --- operators --------------------------------------------------------------------------

    @router.post(
        "/api/v1/gateways/{gateway_id}/commands",
        response_model=CommandView,
        status_code=201,
        tags=["commands"],
        responses=errors,
        description="Queue a command; the gateway's waiting long-poll answers at once. "
        f"Kinds: {', '.join(KINDS)} (schedule_apply only through rollouts). Unknown kinds "
        "and bad arguments are a 422 and nothing is stored.",
    )
    async def create_command(
        request: Request, gateway_id: GwPath, body: CommandSpec, who: Operator, store: Store
    ) -> CommandView:
        await visible_gateway(request, who, gateway_id)
        if body.kind == "schedule_apply":
            raise HTTPException(422, "schedule_apply is sent by a rollout: POST /api/v1/rollouts")
        async with _storable(), store.pool.acquire() as conn, conn.transaction():
            created = await store.create(
                gateway_id,
                body,
                central_actor(who.name),
                expires_in_s=body.expires_in_s,
                conn=conn,
            )
            await audit.record(
                conn,
                who,
                f"command.{body.kind}",
                f"{gateway_id}/{created.id}",
                "ok",
                client_address(request),
                created.args,
            )
        return created

    @router.get(
        "/api/v1/gateways/{gateway_id}/commands/{command_id}",
        response_model=CommandView,
        tags=["commands"],
        responses=errors,
    )
    async def get_command(
        request: Request, gateway_id: GwPath, command_id: IdPath, who: Viewer, store: Store
    ) -> CommandView:
        await visible_gateway(request, who, gateway_id)
        found = await store.get(gateway_id, command_id)
        if found is None:
            raise HTTPException(404, f"no command {command_id} for gateway {gateway_id}")
        return found

    @router.get("/api/v1/commands", response_model=list[CommandView], tags=["commands"])
    async def list_commands(
        who: Viewer,
        store: Store,
        gateway: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=128)] = None,
        state: Annotated[list[CommandState] | None, Query()] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[datetime | None, Query(description="ISO 8601")] = None,
        rollout: Annotated[int | None, Query(ge=1, le=_BIGINT)] = None,
        before: Annotated[
            int | None, Query(ge=1, le=_BIGINT, description="page: ids below this one")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[CommandView]:
        """Commands, newest first, filtered by gateway, state (repeatable), kind, creation
        time, rollout; page with ``before`` = the last id seen."""
        return await store.list(
            gateway,
            states=state or (),
            kind=kind,
            since=None if since is None else _utc(since),
            before_id=before,
            rollout_id=rollout,
            sites=who.site_list,
            limit=limit,
        )

    # --- gateways ---------------------------------------------------------------------------

    @router.get(
        "/api/v1/gateways/{gateway_id}/commands",
        response_model=CommandPoll,
        tags=["gateway"],
        responses=errors,
    )
    async def poll_commands(
        request: Request,
        gateway_id: GwPath,
        authed: Gateway,
        store: Store,
        after: Annotated[
            int,
            Query(
                ge=0,
                le=_BIGINT,
                description="largest command id the agent has recorded; newer open commands "
                "are returned (and marked delivered)",
            ),
        ] = 0,
        wait: Annotated[float | None, Query(ge=0, le=60, description="long-poll seconds")] = None,
    ) -> CommandPoll:
        """Long-poll: answers as soon as an open command newer than ``after`` exists, else
        with none after ``wait`` seconds."""
        own(gateway_id, authed)
        return await store.wait(
            gateway_id,
            after,
            settings.command_wait_s if wait is None else wait,
            gone=request.is_disconnected,
        )

    @router.post(
        "/api/v1/gateways/{gateway_id}/commands/{command_id}/result",
        response_model=CommandView,
        tags=["gateway"],
        responses=errors,
    )
    async def post_result(
        gateway_id: GwPath,
        command_id: IdPath,
        body: CommandResult,
        authed: Gateway,
        store: Store,
    ) -> CommandView:
        """Record the agent's outcome. A repeat (the agent re-sends results it has no
        confirmation for) answers with the stored state and changes nothing."""
        own(gateway_id, authed)
        async with _storable():
            found = await store.record_result(gateway_id, command_id, body)
        if found is None:
            raise HTTPException(404, f"no command {command_id} for gateway {gateway_id}")
        return found

    # --- rollouts ---------------------------------------------------------------------------

    @router.post(
        "/api/v1/rollouts",
        response_model=RolloutView,
        status_code=201,
        tags=["rollouts"],
        responses={**errors, 409: {"model": ErrorOut}},
    )
    async def start_rollout(
        request: Request, body: RolloutRequest, who: Operator, engine: Rollouts
    ) -> RolloutView:
        """Push schedule files to the canary gateway(s) first; the rest follow in waves only
        when every canary verified; the first failure halts the rollout."""
        try:
            async with _storable():
                started = await engine.start(body, central_actor(who.name), sites=who.site_list)
        except RolloutError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        await audit.record(
            engine.pool,
            who,
            "rollout.start",
            f"rollout/{started.id}",
            "ok",
            client_address(request),
            {"version": started.version, "gateways": [t.gateway_id for t in started.targets]},
        )
        return started

    @router.get("/api/v1/rollouts", response_model=list[RolloutView], tags=["rollouts"])
    async def list_rollouts(
        _who: Viewer, engine: Rollouts, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> list[RolloutView]:
        return await engine.list(limit)

    @router.get(
        "/api/v1/rollouts/{rollout_id}",
        response_model=RolloutView,
        tags=["rollouts"],
        responses=errors,
    )
    async def get_rollout(rollout_id: IdPath, _who: Viewer, engine: Rollouts) -> RolloutView:
        found = await engine.get(rollout_id)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return found

    @router.post(
        "/api/v1/rollouts/{rollout_id}/abort",
        response_model=RolloutView,
        tags=["rollouts"],
        responses={**errors, 409: {"model": ErrorOut}},
    )
    async def abort_rollout(
        request: Request, rollout_id: IdPath, who: Operator, engine: Rollouts
    ) -> RolloutView:
        """Stop queuing further gateways; commands still queued are withdrawn (expired)."""
        try:
            aborted = await engine.abort(rollout_id, central_actor(who.name))
        except RolloutError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        await audit.record(
            engine.pool,
            who,
            "rollout.abort",
            f"rollout/{rollout_id}",
            "ok",
            client_address(request),
        )
        return aborted

    return router


@asynccontextmanager
async def _storable() -> AsyncIterator[None]:
    # Text PostgreSQL cannot store (a NUL character) is the client's problem, not a 500.
    try:
        yield
    except asyncpg.DataError as exc:
        raise HTTPException(422, f"cannot store this text: {exc}") from None


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
