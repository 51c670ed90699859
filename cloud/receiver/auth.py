"""Who is calling: the ``Principal`` and the FastAPI dependencies that enforce roles.

Three ways in, checked in this order:

- ``Authorization: Bearer <token>``: the bootstrap admin token (``OUTPOST_RECEIVER_ADMIN_TOKEN``)
  or a user's personal token (``outpost cloud user token NAME``). Bearer requests carry no
  ambient credential, so they need no CSRF token.
- the session cookie ``outpost_session`` set by ``POST /login``. Every state-changing request
  (anything but GET/HEAD/OPTIONS) made with a session must carry the session's CSRF token, in
  the ``X-CSRF-Token`` header or the ``csrf_token`` form field; ``Principal.csrf_token`` is the
  value to put in templates.

Use in an endpoint::

    from outpost.cloud.receiver.auth import Principal, require

    @router.post("/api/v1/alarms/ack")
    async def ack(p: Annotated[Principal, Depends(require("operator"))]) -> ...:
        ...  # p.name, p.role, p.sites, p.kind; p.sees(site) for the site scope

A missing or bad credential is 401 (browsers asking for HTML are sent to ``/login?next=...``
by the handler the app installs), a too-low role 403, a missing or wrong CSRF token 403.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from . import audit, users
from .settings import ReceiverSettings
from .storage import Storage
from .users import ROLE_RANK, Role

SESSION_COOKIE = "outpost_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
ADMIN_TOKEN_ACTOR = "admin-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

AuthKind = Literal["session", "token", "admin_token"]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="a personal token (`outpost cloud user token NAME`) or the admin token",
)
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description="session cookie from POST /login; unsafe methods also need X-CSRF-Token",
)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    name: str
    role: Role
    #: None: every site; else only gateways of these sites are visible
    sites: frozenset[str] | None
    kind: AuthKind
    #: the session's CSRF token (put it in forms / the X-CSRF-Token header); None for bearers
    csrf_token: str | None = None

    def has(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def sees(self, site: str | None) -> bool:
        """Whether a gateway of ``site`` is visible (a scoped user never sees site-less ones)."""
        return self.sites is None or (site is not None and site in self.sites)

    @property
    def site_list(self) -> list[str] | None:
        """The scope as a list for SQL (``$n::text[] IS NULL OR site = ANY($n)``)."""
        return None if self.sites is None else sorted(self.sites)


class NotAuthenticated(HTTPException):
    """401; for a browser page request the app answers with a redirect to /login instead."""

    def __init__(self, detail: str) -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": "Bearer"})


def settings_of(request: Request) -> ReceiverSettings:
    return request.app.state.settings


def storage_of(request: Request) -> Storage:
    return request.app.state.storage


def client_address(request: Request) -> str:
    """The peer address (uvicorn rewrites it from X-Forwarded-For for trusted proxies)."""
    return request.client.host if request.client is not None else ""


def is_https(request: Request) -> bool:
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or proto == "https"


def set_session_cookie(response: Response, request: Request, sid: str, max_age_s: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=max_age_s,
        path="/",
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=is_https(request)
    )


def _from_user(user: users.User, kind: AuthKind, csrf: str | None = None) -> Principal:
    return Principal(
        name=user.name,
        role=user.role,
        sites=frozenset(user.sites) if user.sites is not None else None,
        kind=kind,
        csrf_token=csrf,
    )


async def authenticate(request: Request) -> Principal | None:
    """The caller, or None when the request carries no valid credential. A bearer token that
    is present but wrong is an error (never falls back to the cookie)."""
    settings = settings_of(request)
    db = storage_of(request).pool
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated("malformed Authorization header: expected 'Bearer <token>'")
        if settings.admin_token and hmac.compare_digest(
            token.encode(), settings.admin_token.encode()
        ):
            return Principal(ADMIN_TOKEN_ACTOR, "admin", None, "admin_token")
        user = await users.user_for_token(db, token)
        if user is None:
            raise NotAuthenticated("unknown or revoked token")
        return _from_user(user, "token")
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        info = await users.session(db, sid, timedelta(seconds=settings.session_idle_s))
        if info is not None:
            return _from_user(info.user, "session", info.csrf_token)
    return None


async def _csrf_ok(request: Request, expected: str) -> bool:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in _FORM_TYPES:
            form = await request.form()  # cached by Starlette: the endpoint reads it again
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


async def current_principal(
    request: Request,
    _bearer_doc: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _cookie_doc: Annotated[str | None, Depends(_cookie)],
) -> Principal:
    """Any authenticated caller (CSRF checked for sessions on unsafe methods)."""
    principal = await authenticate(request)
    if principal is None:
        raise NotAuthenticated("login required: session cookie or Authorization: Bearer token")
    if principal.kind == "session" and request.method not in SAFE_METHODS:
        assert principal.csrf_token is not None
        if not await _csrf_ok(request, principal.csrf_token):
            await audit.record(
                storage_of(request).pool,
                principal,
                "csrf_refused",
                f"{request.method} {request.url.path}",
                "denied",
                client_address(request),
            )
            raise HTTPException(
                403,
                f"CSRF token missing or wrong: send the session's token in the {CSRF_HEADER} "
                f"header or the {CSRF_FIELD} form field",
            )
    return principal


async def optional_principal(request: Request) -> Principal | None:
    """The caller if logged in, else None (no CSRF check: for GET pages such as /login)."""
    try:
        return await authenticate(request)
    except NotAuthenticated:
        return None


@functools.cache
def require(role: Role = "viewer") -> Callable[..., Awaitable[Principal]]:
    """Dependency: the caller, who must hold ``role`` or a higher one (viewer < operator <
    admin); 401 without credentials, 403 below the role or without the CSRF token."""
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(
        request: Request,
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        if not principal.has(role):
            await audit.record(
                storage_of(request).pool,
                principal,
                "denied",
                f"{request.method} {request.url.path}",
                "denied",
                client_address(request),
                {"required": role, "role": principal.role},
            )
            raise HTTPException(403, f"role {role} required; {principal.name} is {principal.role}")
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
