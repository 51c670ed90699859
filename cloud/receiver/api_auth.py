"""Login, logout, the caller's identity, user and token administration, and the audit log API.

``POST /login`` takes the form fields ``username``, ``password`` (and ``next``, a local path to
go to afterwards). Browsers get a 303 to ``next`` with the session cookie; a client sending
``Accept: application/json`` gets the session's details (its CSRF token included) as JSON.
Failed logins count per user name and per address over ``login_window_s``; past
``login_max_per_user`` / ``login_max_per_ip`` the answer is 429 without checking the password.

The login *page* (``GET /login``) belongs to the dashboard's templates; when the dashboard
answers a failed POST itself it sets ``app.state.render_login(request, error, status)``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Form, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from . import audit, users
from .auth import (
    SESSION_COOKIE,
    Admin,
    Principal,
    Viewer,
    clear_session_cookie,
    client_address,
    set_session_cookie,
    settings_of,
    storage_of,
)
from .settings import ReceiverSettings
from .users import NAME_PATTERN, SITE_PATTERN, Role, UserError, UserExists

# --- models ------------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    detail: str


class InvalidOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what is wrong: a sentence, or FastAPI's list of {loc, msg, type}"
    )


INVALID: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body could not be parsed"},
    422: {"model": InvalidOut, "description": "invalid parameters or body"},
}


class SessionOut(BaseModel):
    name: str
    role: Role
    sites: list[str] | None = Field(description="null: every site")
    csrf_token: str = Field(description="send as X-CSRF-Token (or form field csrf_token)")
    expires_at: datetime


class MeOut(BaseModel):
    name: str
    role: Role
    sites: list[str] | None = Field(description="null: every site")
    auth_kind: Literal["session", "token", "admin_token"]
    csrf_token: str | None = Field(description="the session's CSRF token; null for bearers")


class UserOut(BaseModel):
    name: str
    role: Role
    sites: list[str] | None = Field(description="null: every site")
    created_at: datetime
    updated_at: datetime


class UserIn(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    role: Role
    sites: list[Annotated[str, Field(pattern=SITE_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=1000, description="omit or null: every site"
    )
    password: str = Field(min_length=users.MIN_PASSWORD, max_length=1024)


class UserPatch(BaseModel):
    role: Role | None = None
    sites: list[Annotated[str, Field(pattern=SITE_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=1000, description="new site scope"
    )
    all_sites: bool = Field(default=False, description="true: lift the site scope")
    password: str | None = Field(default=None, min_length=users.MIN_PASSWORD, max_length=1024)


class TokenIn(BaseModel):
    label: str = Field(default="", max_length=200)


class TokenOut(BaseModel):
    id: int
    user: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="the token itself; shown only in this response")


class AuditOut(BaseModel):
    id: int
    ts: datetime
    actor: str
    auth_kind: str = Field(description="session, token, admin_token, cli, or empty")
    action: str
    target: str
    outcome: str
    address: str
    detail: dict[str, Any]


class AuditPageOut(BaseModel):
    items: list[AuditOut] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


def _user_out(u: users.User) -> UserOut:
    return UserOut(
        name=u.name,
        role=u.role,
        sites=list(u.sites) if u.sites is not None else None,
        created_at=u.created_at,
        updated_at=u.updated_at,
    )


def _token_out(t: users.TokenInfo) -> TokenOut:
    return TokenOut(
        id=t.id,
        user=t.user,
        label=t.label,
        created_at=t.created_at,
        last_used_at=t.last_used_at,
        revoked_at=t.revoked_at,
    )


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def safe_next(target: str | None) -> str:
    """Only local absolute paths: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_failed_page(request: Request, error: str, status: int) -> Response:
    render: Callable[[Request, str, int], Response] | None = getattr(
        request.app.state, "render_login", None
    )
    if render is not None:
        return render(request, error, status)
    return HTMLResponse(login_form_html(error), status_code=status)


def login_form_html(error: str | None = None, next_path: str = "/") -> str:
    """A plain login form; the dashboard's template replaces it when installed."""
    err = f'<p role="alert">{html.escape(error)}</p>' if error else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Outpost — log in</title></head><body><h1>Outpost receiver</h1>"
        f'{err}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{html.escape(next_path)}">'
        '<label>User <input name="username" autocomplete="username" required></label> '
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label> '
        '<button type="submit">Log in</button></form></body></html>'
    )


UserName = Annotated[str, Path(pattern=NAME_PATTERN)]


async def _attempt(
    pool: asyncpg.Pool, settings: ReceiverSettings, username: str, password: str, address: str
) -> tuple[
    Literal["ok", "failed", "rate_limited"],
    users.User | None,
    str | None,
    users.SessionInfo | None,
]:
    """One login attempt, serialised per user name and per address (advisory locks held for
    the transaction), so parallel guesses cannot slip past the failure limits."""
    window = timedelta(seconds=settings.login_window_s)
    user_key, ip_key = f"user:{username}", f"ip:{address}"
    async with pool.acquire() as conn, conn.transaction():
        await users.lock_login(conn, user_key, ip_key)
        counts = await users.failures(conn, [user_key, ip_key], window)
        if (
            counts.get(user_key, 0) >= settings.login_max_per_user
            or counts.get(ip_key, 0) >= settings.login_max_per_ip
        ):
            await audit.record(conn, username, "login", username, "rate_limited", address)
            return "rate_limited", None, None, None
        user = await users.authenticate_password(conn, username, password)
        if user is None:
            await users.record_failure(conn, [user_key, ip_key])
            await audit.record(conn, username, "login", username, "failed", address)
            return "failed", None, None, None
        await users.clear_failures(conn, user_key)
        await users.purge_expired(conn, window)
        lifetime = timedelta(seconds=settings.session_max_s)
        sid, info = await users.create_session(conn, user, address, lifetime)
        await audit.record(conn, user.name, "login", user.name, "ok", address, {"role": user.role})
        return "ok", user, sid, info


# --- router ------------------------------------------------------------------------------------


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/login",
        tags=["auth"],
        response_model=SessionOut,
        responses={
            303: {"description": "browser form: redirect to `next` with the session cookie"},
            **INVALID,
            401: {"model": ErrorOut, "description": "wrong user name or password"},
            429: {"model": ErrorOut, "description": "too many failed logins; retry later"},
        },
    )
    async def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=1024)],
        next: Annotated[str, Form(max_length=2048)] = "/",
    ) -> Response:
        """Log in with a user name and password (form fields). Sets the session cookie
        (HttpOnly, SameSite=Lax, Secure behind HTTPS)."""
        settings = settings_of(request)
        address = client_address(request)
        outcome, user, sid, info = await _attempt(
            storage_of(request).pool, settings, username, password, address
        )
        if outcome == "rate_limited":
            retry = str(int(settings.login_window_s))
            msg = "too many failed logins; try again later"
            if wants_json(request):
                return JSONResponse({"detail": msg}, 429, headers={"Retry-After": retry})
            page = _login_failed_page(request, msg, 429)
            page.headers["Retry-After"] = retry
            return page
        if outcome == "failed":
            msg = "wrong user name or password"
            if wants_json(request):
                return JSONResponse({"detail": msg}, 401)
            return _login_failed_page(request, msg, 401)
        assert user is not None and sid is not None and info is not None
        previous = request.cookies.get(SESSION_COOKIE)
        if previous:  # the browser's earlier session ends: one live session per cookie jar
            await users.end_session(storage_of(request).pool, previous)
        resp: Response
        if wants_json(request):
            resp = JSONResponse(
                SessionOut(
                    name=user.name,
                    role=user.role,
                    sites=list(user.sites) if user.sites is not None else None,
                    csrf_token=info.csrf_token,
                    expires_at=info.expires_at,
                ).model_dump(mode="json")
            )
        else:
            resp = RedirectResponse(safe_next(next), status_code=303)
        set_session_cookie(resp, request, sid, int(settings.session_max_s))
        return resp

    @r.post(
        "/logout",
        tags=["auth"],
        responses={
            200: {"description": "JSON clients: logged out"},
            303: {"description": "browsers: back to /login"},
        },
    )
    async def logout(request: Request, principal: Viewer) -> Response:
        """End this session (needs its CSRF token, like every state-changing request)."""
        db = storage_of(request).pool
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            await users.end_session(db, sid)
        await audit.record(db, principal, "logout", principal.name, "ok", client_address(request))
        resp: Response = (
            JSONResponse({"logged_out": True})
            if wants_json(request)
            else RedirectResponse("/login", status_code=303)
        )
        clear_session_cookie(resp, request)
        return resp

    @r.get("/api/v1/me", tags=["auth"], response_model=MeOut)
    async def me(principal: Viewer) -> MeOut:
        """Who is calling, with which role and scope (and the session's CSRF token)."""
        return MeOut(
            name=principal.name,
            role=principal.role,
            sites=principal.site_list,
            auth_kind=principal.kind,
            csrf_token=principal.csrf_token,
        )

    # --- users (admin) -------------------------------------------------------------------

    @r.get("/api/v1/users", tags=["users"], response_model=list[UserOut])
    async def list_users(request: Request, _p: Admin) -> list[UserOut]:
        return [_user_out(u) for u in await users.list_users(storage_of(request).pool)]

    @r.post(
        "/api/v1/users",
        tags=["users"],
        response_model=UserOut,
        status_code=201,
        responses={**INVALID, 409: {"model": ErrorOut, "description": "the user exists"}},
    )
    async def add_user(request: Request, body: UserIn, principal: Admin) -> UserOut:
        """Create a user (viewer, operator or admin; optionally scoped to sites)."""
        pool = storage_of(request).pool
        address = client_address(request)
        async with pool.acquire() as conn, conn.transaction():
            try:
                user = await users.add_user(conn, body.name, body.role, body.password, body.sites)
            except UserExists as exc:
                raise HTTPException(409, str(exc)) from None
            except UserError as exc:
                raise HTTPException(422, str(exc)) from None
            await audit.record(
                conn,
                principal,
                "user.add",
                body.name,
                "ok",
                address,
                {"role": body.role, "sites": body.sites},
            )
        return _user_out(user)

    @r.patch(
        "/api/v1/users/{name}",
        tags=["users"],
        response_model=UserOut,
        responses={**INVALID, 404: {"model": ErrorOut}},
    )
    async def update_user(
        request: Request, name: UserName, body: UserPatch, principal: Admin
    ) -> UserOut:
        """Change role, site scope and/or password (a new password ends the user's sessions)."""
        pool = storage_of(request).pool
        async with pool.acquire() as conn, conn.transaction():
            try:
                user = await users.update_user(
                    conn, name, role=body.role, sites=body.sites, all_sites=body.all_sites
                )
            except UserError as exc:
                raise HTTPException(422, str(exc)) from None
            if user is None:
                raise HTTPException(404, f"unknown user {name}")
            if body.password is not None:
                await users.set_password(conn, name, body.password)
            await audit.record(
                conn,
                principal,
                "user.update",
                name,
                "ok",
                client_address(request),
                {
                    "role": body.role,
                    "sites": body.sites,
                    "all_sites": body.all_sites,
                    "password_changed": body.password is not None,
                },
            )
        return _user_out(user)

    @r.delete(
        "/api/v1/users/{name}",
        tags=["users"],
        status_code=204,
        responses={**INVALID, 404: {"model": ErrorOut}},
    )
    async def remove_user(request: Request, name: UserName, principal: Admin) -> Response:
        """Delete a user, their sessions and tokens."""
        pool = storage_of(request).pool
        async with pool.acquire() as conn, conn.transaction():
            if not await users.remove_user(conn, name):
                raise HTTPException(404, f"unknown user {name}")
            await audit.record(conn, principal, "user.remove", name, "ok", client_address(request))
        return Response(status_code=204)

    def own_or_admin(principal: Principal, name: str) -> None:
        if principal.name != name and not principal.has("admin"):
            raise HTTPException(403, "only admins manage other users' tokens")

    @r.get(
        "/api/v1/users/{name}/tokens",
        tags=["users"],
        response_model=list[TokenOut],
        responses=INVALID,
    )
    async def list_tokens(request: Request, name: UserName, principal: Viewer) -> list[TokenOut]:
        """A user's personal tokens (never the tokens themselves): the user or an admin."""
        own_or_admin(principal, name)
        return [_token_out(t) for t in await users.list_tokens(storage_of(request).pool, name)]

    @r.post(
        "/api/v1/users/{name}/tokens",
        tags=["users"],
        response_model=TokenCreatedOut,
        status_code=201,
        responses={**INVALID, 404: {"model": ErrorOut}},
    )
    async def create_token(
        request: Request, name: UserName, principal: Viewer, body: TokenIn | None = None
    ) -> TokenCreatedOut:
        """A new personal token for `Authorization: Bearer`; the response is the only place
        it is ever shown. The user themself or an admin."""
        own_or_admin(principal, name)
        pool = storage_of(request).pool
        label = (body or TokenIn()).label
        async with pool.acquire() as conn, conn.transaction():
            try:
                info, token = await users.create_token(conn, name, label)
            except UserError as exc:
                raise HTTPException(404, str(exc)) from None
            await audit.record(
                conn,
                principal,
                "token.create",
                name,
                "ok",
                client_address(request),
                {"token_id": info.id, "label": label},
            )
        return TokenCreatedOut(**_token_out(info).model_dump(), token=token)

    @r.delete(
        "/api/v1/users/{name}/tokens/{token_id}",
        tags=["users"],
        status_code=204,
        responses={**INVALID, 404: {"model": ErrorOut}},
    )
    async def revoke_token(
        request: Request,
        name: UserName,
        token_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
        principal: Viewer,
    ) -> Response:
        """Revoke one personal token: the user themself or an admin."""
        own_or_admin(principal, name)
        pool = storage_of(request).pool
        async with pool.acquire() as conn, conn.transaction():
            if not await users.revoke_token(conn, name, token_id):
                raise HTTPException(404, f"no active token {token_id} of user {name}")
            await audit.record(
                conn,
                principal,
                "token.revoke",
                name,
                "ok",
                client_address(request),
                {"token_id": token_id},
            )
        return Response(status_code=204)

    # --- audit ---------------------------------------------------------------------------

    @r.get(
        "/api/v1/audit",
        tags=["audit"],
        response_model=AuditPageOut,
        responses=INVALID,
    )
    async def audit_log(
        request: Request,
        _p: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        actor: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[
            str | None,
            Query(max_length=64, description="e.g. `login`, or a prefix such as `user`"),
        ] = None,
    ) -> AuditPageOut:
        """The audit log, newest first, `limit` rows a page; follow `next_cursor`."""
        before: int | None = None
        if cursor is not None:
            try:
                before = audit.decode_cursor(cursor)
            except ValueError:
                raise HTTPException(422, f"bad cursor {cursor!r}") from None
        rows = await audit.page(
            storage_of(request).pool,
            limit=limit + 1,
            before_id=before,
            actor=actor,
            action=action,
        )
        items = [AuditOut(**vars(row)) for row in rows[:limit]]
        nxt = audit.encode_cursor(items[-1].id) if len(rows) > limit else None
        return AuditPageOut(items=items, next_cursor=nxt)

    return r


def fallback_login_router() -> APIRouter:
    """``GET /login`` as a plain form, registered after the dashboard's routes so the
    dashboard's own login page wins when it is installed."""
    r = APIRouter()

    @r.get("/login", include_in_schema=False)
    async def login_page(next: Annotated[str, Query(max_length=2048)] = "/") -> HTMLResponse:
        return HTMLResponse(login_form_html(None, safe_next(next)))

    return r
