"""The receiver's HTTP API (FastAPI): enrollment, ingest, heartbeat, commands, read API.

Gateway endpoints take the gateway's own bearer token and accept data only for that gateway
(401 for a missing, unknown or revoked token; 403 for another gateway's id). The read API and
the admin endpoints take the admin token (``OUTPOST_RECEIVER_ADMIN_TOKEN``) until dashboard
users exist.

Ingest checks in this order, writing nothing unless all pass: token (401), compressed size
(413), decompressed size (413, read with a cap so a compression bomb never expands in memory),
encoding (415/400), strict schema (422), gateway id matches the token (403). The ingest body is
JSON (:class:`~outpost.cloud.wire.IngestBatch`) or, with ``Content-Type:
application/vnd.outpost.columnar.v1``, the binary columnar body (``cloud/wire.py``,
``docs/wire-format.md``), validated as strictly.
"""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

import asyncpg
import structlog
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from outpost.cloud.wire import (
    COLUMNAR_CONTENT_TYPE,
    ID_PATTERN,
    BodyError,
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    HeartbeatAck,
    IngestAck,
    IngestBatch,
    decode_body,
)

from . import api_auth, api_read, audit, read_store
from .auth import Admin, NotAuthenticated, client_address
from .commands import commands_router
from .ingest_columns import ColumnarError, ColumnBatch, decode_columnar
from .metrics import ReceiverMetrics, metrics_router
from .settings import ReceiverSettings
from .storage import EnrollError, Storage
from .users import SITE_PATTERN
from .web import install_dashboard

log = structlog.get_logger(__name__)

_bearer = HTTPBearer(auto_error=False, description="gateway token or admin token")
_DRAIN_CAP = 64 * 1024 * 1024  # bytes of an oversized body read and discarded before 413


# --- response models (they make /docs accurate) --------------------------------------------


class ErrorOut(BaseModel):
    detail: str


# Operations anyone may call: everything else authenticates (bearer token or session) and
# may answer 401/403 before its own code runs.
_PUBLIC_OPERATIONS = {
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/api/v1/enroll", "post"),
    ("/login", "post"),
}
_ERROR_BODY = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
_INVALID_BODY = {
    "type": "object",
    "properties": {
        "detail": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
    },
    "required": ["detail"],
}


def _complete_error_responses(schema: dict[str, Any]) -> None:
    """Document the answers that come from shared layers rather than from an operation's own
    code, wherever they can occur: 401/403 (authentication, role, site scope, CSRF) on every
    operation that is not public, 404 wherever a path names a resource, 400 (unparsable body)
    wherever there is a body; the login form also answers in HTML to a browser."""
    json_error = {"application/json": {"schema": _ERROR_BODY}}
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            if (path, method) not in _PUBLIC_OPERATIONS:
                responses.setdefault(
                    "401",
                    {
                        "description": "no, unknown, expired or revoked credentials",
                        "content": json_error,
                    },
                )
                responses.setdefault(
                    "403",
                    {
                        "description": "not allowed: role, site scope, CSRF or another gateway",
                        "content": json_error,
                    },
                )
            if any(p.get("in") == "path" for p in op.get("parameters", ())):
                responses.setdefault(
                    "404",
                    {
                        "description": "no such resource, or not visible to the caller",
                        "content": json_error,
                    },
                )
            if "requestBody" in op:
                responses.setdefault(
                    "400",
                    {
                        "description": "body is not parseable",
                        "content": {"application/json": {"schema": _INVALID_BODY}},
                    },
                )
            if path == "/login":
                for answer in responses.values():
                    answer.setdefault("content", {}).setdefault(
                        "text/html", {"schema": {"type": "string"}}
                    )


class EnrollmentTokenIn(BaseModel):
    ttl_s: float = Field(default=86_400.0, gt=0, le=30 * 86_400)
    site: str | None = Field(default=None, pattern=SITE_PATTERN, description="gateway's site")


class SiteIn(BaseModel):
    site: str | None = Field(pattern=SITE_PATTERN, description="null: the heartbeat's site")


class SiteOut(BaseModel):
    gateway_id: str
    site: str | None


class EnrollmentTokenOut(BaseModel):
    gateway_id: str
    enrollment_token: str
    expires_at: datetime


class RevokeOut(BaseModel):
    gateway_id: str
    revoked: bool


class ReadyOut(BaseModel):
    ready: bool
    detail: str
    timescaledb: bool | None = None


# --- app --------------------------------------------------------------------------------------


def create_app(settings: ReceiverSettings, storage: Storage | None = None) -> FastAPI:
    """The receiver app. Without ``storage`` the lifespan opens one on ``settings.dsn``
    (migrations applied, TimescaleDB detected) and closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if storage is not None:
            app.state.storage = storage
            yield
            return
        st = await Storage.open(
            settings.dsn,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            retention_days=settings.retention_days,
            use_timescaledb=settings.use_timescaledb,
        )
        st.start_maintenance(settings.retention_check_s)
        app.state.storage = st
        try:
            yield
        finally:
            await st.close()

    app = FastAPI(
        title="Outpost receiver",
        version="1",
        lifespan=lifespan,
        description="Central receiver: gateways enroll, sync readings/events, send heartbeats "
        "and long-poll commands; operators read history. All times are UTC.",
        # /docs and /redoc come from install_dashboard with vendored assets; FastAPI's own
        # pages load Swagger UI / ReDoc from a CDN and render blank on air-gapped networks
        docs_url=None,
        redoc_url=None,
    )

    app.state.settings = settings
    metrics = ReceiverMetrics()
    app.state.metrics = metrics

    def get_storage(request: Request) -> Storage:
        return request.app.state.storage

    StorageDep = Annotated[Storage, Depends(get_storage)]
    Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

    async def gateway_auth(creds: Creds, storage: StorageDep) -> str:
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        auth = await storage.authenticate(creds.credentials)
        if auth is None:
            raise HTTPException(
                401, "unknown gateway token", headers={"WWW-Authenticate": "Bearer"}
            )
        if auth.revoked:
            raise HTTPException(
                401,
                f"gateway {auth.gateway_id} has been revoked; re-enroll it",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return auth.gateway_id

    GatewayAuth = Annotated[str, Depends(gateway_auth)]
    GwPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
    auth_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut, "description": "missing, unknown or revoked token"},
        403: {"model": ErrorOut, "description": "token of another gateway"},
    }
    body_errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorOut, "description": "corrupt compressed body"},
        413: {"model": ErrorOut, "description": "body too large (compressed or decompressed)"},
        415: {"model": ErrorOut, "description": "unsupported Content-Encoding"},
        422: {"description": "body is not valid JSON or does not match the schema"},
    }

    async def read_body(request: Request) -> bytes:
        raw = await _read_body(request, settings.max_body_bytes)
        try:
            return decode_body(
                raw,
                request.headers.get("content-encoding"),
                max_decompressed=settings.max_decompressed_bytes,
            )
        except BodyError as exc:
            raise HTTPException(exc.status, exc.message) from None

    async def read_model(request: Request, model: type[Any]) -> Any:
        data = await read_body(request)
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            raise _ValidationFailed(exc) from None

    @app.exception_handler(OSError)
    @app.exception_handler(TimeoutError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.OperatorInterventionError)
    @app.exception_handler(asyncpg.InsufficientResourcesError)
    @app.exception_handler(asyncpg.InterfaceError)
    async def _on_db_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database is down, restarting or out of connections: nothing was committed, so
        # the client retries the same batch later (it is idempotent anyway).
        log.warning(
            "receiver.db_unavailable",
            path=request.url.path,
            error=f"{exc.__class__.__name__}: {exc}",
        )
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "5"},
            content={"detail": f"database unavailable ({exc.__class__.__name__}); retry later"},
        )

    @app.exception_handler(asyncpg.DataError)
    async def _on_bad_value(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value PostgreSQL cannot take (a NUL character, a number beyond int8): the caller's
        # input, so a 422, not a 500. Endpoints validate what they can before this point.
        log.info("receiver.bad_value", path=request.url.path, error=str(exc).splitlines()[0])
        return JSONResponse(
            status_code=422, content={"detail": f"invalid value: {str(exc).splitlines()[0]}"}
        )

    @app.exception_handler(NotAuthenticated)
    async def _on_not_authenticated(request: Request, exc: NotAuthenticated) -> Any:
        # A browser asking for a page goes to the login form; API clients get the 401.
        accept = request.headers.get("accept", "")
        if (
            request.method == "GET"
            and "text/html" in accept
            and not request.url.path.startswith("/api/")
        ):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return JSONResponse(status_code=401, content={"detail": exc.detail}, headers=exc.headers)

    @app.exception_handler(_ValidationFailed)
    async def _on_invalid(_request: Request, exc: _ValidationFailed) -> JSONResponse:
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.error.errors(include_input=False)[:20]
        ]
        first = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:3]
        )
        return JSONResponse(
            status_code=422,
            content={"detail": f"invalid {exc.error.title}: {first}", "errors": errors},
        )

    # --- gateway endpoints ------------------------------------------------------------------

    @app.post(
        "/api/v1/enroll",
        response_model=EnrollResponse,
        tags=["gateway"],
        responses={401: {"model": ErrorOut, "description": "bad enrollment token"}},
    )
    async def enroll(body: EnrollRequest, storage: StorageDep) -> EnrollResponse:
        """Exchange a one-time enrollment token (from `outpost cloud enroll`) for the
        gateway's long-lived token. Retry-safe: until the gateway has been heard with the
        token it got (or is revoked, or the enrollment token expires), the same enrollment
        token returns a fresh gateway token and the previous one, lost on the wire, stops
        working; after that the enrollment token is spent."""
        try:
            token = await storage.enroll(body.gateway_id, body.enrollment_token)
        except EnrollError as exc:
            raise HTTPException(401, str(exc)) from None
        return EnrollResponse(gateway_id=body.gateway_id, gateway_token=token)

    @app.post(
        "/api/v1/ingest",
        response_model=IngestAck,
        tags=["gateway"],
        responses={**auth_errors, **body_errors},
        openapi_extra=_raw_body_doc(IngestBatch),
    )
    async def ingest(request: Request, gateway_id: GatewayAuth, storage: StorageDep) -> IngestAck:
        """Store one batch idempotently, in one transaction, and acknowledge its exact
        sequence range. A replayed batch inserts nothing and is acknowledged the same way."""
        t0 = time.perf_counter()
        batch: IngestBatch | ColumnBatch
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype == COLUMNAR_CONTENT_TYPE:
            data = await read_body(request)
            try:
                batch = decode_columnar(data)
            except ColumnarError as exc:
                raise HTTPException(422, f"invalid columnar body: {exc}") from None
            except ValidationError as exc:
                raise _ValidationFailed(exc) from None
        else:  # JSON, as before the binary format (whatever the client declared)
            batch = await read_model(request, IngestBatch)
        if batch.gateway_id != gateway_id:
            raise HTTPException(
                403, f"token belongs to gateway {gateway_id}, batch is for {batch.gateway_id}"
            )
        ack = await storage.ingest(batch)
        metrics.record_ingest(ack, time.perf_counter() - t0)
        # per batch at debug (a fleet sends many); replays at info: they mean lost acks
        emit = log.info if ack.readings_duplicate else log.debug
        emit(
            "receiver.ingest",
            gateway=gateway_id,
            first_seq=ack.first_seq,
            last_seq=ack.last_seq,
            readings=len(batch.readings),
            inserted=ack.readings_inserted,
            duplicate=ack.readings_duplicate,
            events=ack.events_inserted,
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )
        return ack

    @app.post(
        "/api/v1/gateways/{gateway_id}/heartbeat",
        response_model=HeartbeatAck,
        tags=["gateway"],
        responses={**auth_errors, **body_errors},
        openapi_extra=_raw_body_doc(Heartbeat),
    )
    async def heartbeat(
        request: Request, gateway_id: GwPath, authed: GatewayAuth, storage: StorageDep
    ) -> HeartbeatAck:
        """Keep the gateway's latest heartbeat and last-seen time."""
        if gateway_id != authed:
            raise HTTPException(403, f"token belongs to gateway {authed}, not {gateway_id}")
        hb: Heartbeat = await read_model(request, Heartbeat)
        if hb.gateway_id != authed:
            raise HTTPException(
                403, f"token belongs to gateway {authed}, heartbeat is for {hb.gateway_id}"
            )
        await storage.heartbeat(hb)
        return HeartbeatAck(gateway_id=authed, received_at=int(time.time() * 1000))

    # --- admin endpoints --------------------------------------------------------------------

    @app.post(
        "/api/v1/gateways/{gateway_id}/enrollment-tokens",
        response_model=EnrollmentTokenOut,
        tags=["admin"],
        responses=api_auth.INVALID,
    )
    async def create_enrollment_token(
        request: Request,
        gateway_id: GwPath,
        storage: StorageDep,
        principal: Admin,
        body: EnrollmentTokenIn | None = None,
    ) -> EnrollmentTokenOut:
        """Issue a one-time enrollment token (same as `outpost cloud enroll`); this response
        is the only place it is shown. `site`, when given, becomes the gateway's site."""
        req = body or EnrollmentTokenIn()
        tok = await storage.create_enrollment_token(gateway_id, timedelta(seconds=req.ttl_s))
        if req.site is not None:
            await read_store.set_site(storage.pool, gateway_id, req.site)
        await audit.record(
            storage.pool,
            principal,
            "gateway.enrollment_token",
            gateway_id,
            "ok",
            client_address(request),
            {"expires_at": tok.expires_at.isoformat(), "site": req.site},
        )
        return EnrollmentTokenOut(
            gateway_id=gateway_id, enrollment_token=tok.token, expires_at=tok.expires_at
        )

    @app.post(
        "/api/v1/gateways/{gateway_id}/revoke",
        response_model=RevokeOut,
        tags=["admin"],
        responses={**api_auth.INVALID, 404: {"model": ErrorOut}},
    )
    async def revoke(
        request: Request, gateway_id: GwPath, storage: StorageDep, principal: Admin
    ) -> RevokeOut:
        """Revoke the gateway's token (and its unused enrollment tokens)."""
        known = await storage.revoke(gateway_id)
        await audit.record(
            storage.pool,
            principal,
            "gateway.revoke",
            gateway_id,
            "ok" if known else "not_found",
            client_address(request),
        )
        if not known:
            raise HTTPException(404, f"unknown gateway {gateway_id}")
        return RevokeOut(gateway_id=gateway_id, revoked=True)

    @app.put(
        "/api/v1/gateways/{gateway_id}/site",
        response_model=SiteOut,
        tags=["admin"],
        responses=api_auth.INVALID,
    )
    async def set_site(
        request: Request, gateway_id: GwPath, body: SiteIn, storage: StorageDep, principal: Admin
    ) -> SiteOut:
        """Assign the gateway to a site (null: back to the site its heartbeat reports)."""
        await read_store.set_site(storage.pool, gateway_id, body.site)
        await audit.record(
            storage.pool,
            principal,
            "gateway.site",
            gateway_id,
            "ok",
            client_address(request),
            {"site": body.site},
        )
        return SiteOut(gateway_id=gateway_id, site=body.site)

    app.include_router(api_auth.router())
    app.include_router(api_read.router())

    def openapi() -> dict[str, Any]:
        # The raw-body endpoints (ingest, heartbeat) read and validate their body themselves
        # (size limits, decompression); their models are added to the document here.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (IngestBatch, Heartbeat):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in js.pop("$defs", {}).items():
                    comps.setdefault(name, sub)
                comps[model.__name__] = js
            _complete_error_responses(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # --- health -----------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz", response_model=ReadyOut, tags=["health"], responses={503: {"model": ReadyOut}}
    )
    async def readyz(request: Request) -> Any:
        """Database reachable and all migrations applied."""
        st: Storage | None = getattr(request.app.state, "storage", None)
        if st is None:
            return JSONResponse(status_code=503, content={"ready": False, "detail": "starting"})
        ok, detail = await st.ready()
        body = ReadyOut(ready=ok, detail=detail, timescaledb=st.timescaledb)
        if not ok:
            return JSONResponse(status_code=503, content=body.model_dump())
        return body

    install_dashboard(app, settings)  # pages, live SSE, UI static files, /docs without CDN
    app.include_router(commands_router(settings))
    app.include_router(metrics_router(settings, metrics))
    # last: the dashboard's own GET /login (if installed above) takes precedence
    app.include_router(api_auth.fallback_login_router())
    return app


def _raw_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": f"{model.__name__} as JSON; Content-Encoding zstd, gzip or identity",
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


class _ValidationFailed(Exception):
    def __init__(self, error: ValidationError) -> None:
        self.error = error


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, or 413 once it exceeds ``limit`` (rest drained so the client, still
    sending, reads the 413 instead of a reset connection)."""
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if too_big:
            if size > _DRAIN_CAP:
                break
            continue
        chunks.append(chunk)
    if too_big:
        raise HTTPException(
            413,
            f"request body exceeds the limit of {limit} bytes "
            f"(Content-Length {declared or 'not given'}); send smaller batches",
        )
    return b"".join(chunks)
