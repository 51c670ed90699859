"""The status page on ``[api] bind``: what a technician sees at a glance, with no internet.

One HTML page (server-rendered with the shared UI kit, ``outpost.cloud.ui``: same templates,
CSS, vendored htmx and uPlot as the fleet dashboard) over the local API's own routes, mounted
under ``/api``: the read routes (``api.read``: status, points, a point's trend from the
buffer, the ``/live`` SSE stream) and the control routes (``api.control``: ack, shelve …). So
the page can do nothing the CLI cannot do over the Unix socket.

Routes: ``GET /`` the page (``?device=&quality=&q=`` filter the points, ``?trend=&hours=``
picks the trend); ``GET /fragments/{alarms,overview,devices,events}`` its live-refreshed
parts (htmx); ``GET|POST /login``, ``POST /logout``; ``/api/...``; ``/static/ui/...`` (the
kit); ``GET /metrics`` (Prometheus, its own bearer-token rule, see ``core.metrics``).

Who may use it:

- Login is needed when local users exist (``outpost user add``, ``api.users``) or the page is
  bound to anything but loopback (where the agent refuses to start without users, see
  ``api.users.lan_bind_problem``). Without login (127.0.0.1, no users) everyone on the box is
  ``local`` with the operator role, as on the Unix socket's group; requests must then name a
  loopback ``Host`` (no DNS rebinding from a web page).
- Sessions: a random id in the ``outpost_session`` cookie (HttpOnly, SameSite=Lax, Path=/),
  kept in memory (a restart logs everyone out), 12 h at most, 1 h idle. Removing a user or
  changing their password ends their sessions at the next request.
- CSRF: every state-changing request carries the session's token (``X-CSRF-Token`` header
  from the page's ``<meta name="csrf-token">``, or a ``csrf_token`` form field for log-out);
  the login form uses a double-submit cookie. Missing or wrong: 403, nothing happens.
- Roles, checked here on the server: ``viewer`` reads; ``operator`` also acts (403 for a
  viewer's POST, forged or not).
- Actors: every action is recorded with the actor ``<user>@page`` (``local@page`` without
  login), so the event log tells the page apart from the CLI (OS user name) and the cloud
  (``user@fleet``). Routes that only the socket's peer may use (``/reload``, the schedule
  routes) answer 403 here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import structlog
import uvicorn
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outpost.agent.api.control import add_error_handlers
from outpost.agent.api.http import RequestInvalid, query
from outpost.agent.api.read import full_status
from outpost.agent.api.server import PAGE_SESSION
from outpost.agent.api.users import UserStore, is_loopback_bind
from outpost.agent.api.view import AgentView
from outpost.agent.control.events import recent_events
from outpost.agent.control.local import LocalControl
from outpost.cloud.ui import NavItem, make_env, mount_static

log = structlog.get_logger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "outpost_session"
LOGIN_COOKIE = "outpost_login"
CSRF_HEADER = "x-csrf-token"
SESSION_MAX_S = 12 * 3600.0
SESSION_IDLE_S = 3600.0
RENDER_CHUNK = 64 * 1024
LOCAL_USER = "local"
ACTOR_SUFFIX = "@page"
LOGIN_FAILURES = 5  # per client address within LOGIN_WINDOW_S, then a pause
LOGIN_WINDOW_S = 300.0
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'none'",
    ),
]


class PageView(AgentView, Protocol):
    """The agent as the page reads it: the local API's view plus its gateway id."""

    @property
    def gateway_id(self) -> str: ...


@dataclass
class Session:
    user: str
    role: str
    csrf: str
    stamp: str  # the user's password hash at login (salted: a new password ends the session)
    created: float
    seen: float

    @property
    def actor(self) -> str:
        return self.user + ACTOR_SUFFIX


@dataclass
class PageAuth:
    """Sessions and the login rule of one page server."""

    users: UserStore
    force_login: bool  # bound off loopback: login even before the first user exists
    clock: Callable[[], float] = time.monotonic
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, list[float]] = field(default_factory=dict)

    @property
    def login_required(self) -> bool:
        return self.force_login or bool(self.users.users())

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        s = self.sessions.get(sid)
        if s is None:
            return None
        now = self.clock()
        if now - s.created > SESSION_MAX_S or now - s.seen > SESSION_IDLE_S:
            del self.sessions[sid]
            return None
        if s.user != LOCAL_USER or self.login_required:
            user = self.users.get(s.user)
            if user is None or user.hash != s.stamp or user.role != s.role:
                del self.sessions[sid]  # removed, new password or new role: log in again
                return None
        s.seen = now
        return s

    def open(self, user: str, role: str, stamp: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        s = Session(user, role, secrets.token_urlsafe(32), stamp, now, now)
        self.sessions[sid] = s
        if len(self.sessions) > 1_000:  # bounded: drop the oldest
            oldest = min(self.sessions, key=lambda k: self.sessions[k].seen)
            del self.sessions[oldest]
        return sid, s

    def close(self, sid: str | None) -> None:
        if sid:
            self.sessions.pop(sid, None)

    def throttled(self, client: str) -> bool:
        now = self.clock()
        recent = [t for t in self.failures.get(client, []) if now - t < LOGIN_WINDOW_S]
        self.failures[client] = recent
        return len(recent) >= LOGIN_FAILURES

    def failed(self, client: str) -> None:
        self.failures.setdefault(client, []).append(self.clock())
        if len(self.failures) > 10_000:
            self.failures.clear()


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            with contextlib.suppress(Exception):
                jar.load(value.decode("latin-1"))
    return {k: m.value for k, m in jar.items()}


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _host_is_loopback(host_header: str) -> bool:
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    else:
        host = host.rpartition(":")[0] if host.count(":") == 1 else host
    return host in LOOPBACK_NAMES


class _Guard:
    """Every request passes here first (pure ASGI, so the SSE stream is not buffered):
    security headers; the loopback Host rule without login; for ``/api`` and
    ``/fragments``: a session (401), and for a state-changing method the CSRF token (403) and
    the operator role (403), all before any route or body parsing runs."""

    def __init__(self, app: ASGIApp, auth: PageAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        path: str = scope["path"]
        if path == "/metrics":  # its own rule (bearer token off loopback), see core.metrics
            await self.app(scope, receive, send_with_headers)
            return
        login = self.auth.login_required
        if not login and not _host_is_loopback(_header(scope, b"host")):
            await _plain(send_with_headers, 403, "this page answers to 127.0.0.1 only")
            return
        session = self.auth.session(_cookies(scope).get(SESSION_COOKIE))
        scope[PAGE_SESSION] = session
        if path.startswith(("/api/", "/fragments/")):
            if session is None:
                await _plain(send_with_headers, 401, "log in first: /login")
                return
            if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                token = _header(scope, CSRF_HEADER.encode())
                if not token or not hmac.compare_digest(token, session.csrf):
                    await _plain(send_with_headers, 403, "missing or wrong CSRF token")
                    return
                if session.role != "operator":
                    await _plain(send_with_headers, 403, f"{session.user} is a viewer")
                    return
        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, text: str) -> None:
    body = ('{"detail": "' + text.replace('"', "'") + '"}').encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _session_of(request: Request) -> Session | None:
    session: Session | None = request.scope.get(PAGE_SESSION)
    return session


def _set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, httponly=True, samesite="lax", path="/", secure=False
    )


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class _PageQuery(BaseModel):
    device: str | None = Field(None, max_length=200)
    quality: str | None = Field(None, max_length=40)
    q: str | None = Field(None, max_length=200)
    trend: str | None = Field(None, max_length=300)
    hours: float = Field(6.0, gt=0, le=24 * 366)


class _LoginQuery(BaseModel):
    next: str | None = None


class _LoginForm(BaseModel):
    username: str = Field("", max_length=64)
    password: str = Field("", max_length=1024)
    csrf_token: str = Field("", max_length=200)
    next: str = Field("/", max_length=2000)


class _LogoutForm(BaseModel):
    csrf_token: str = Field("", max_length=200)


_Form = TypeVar("_Form", bound=BaseModel)


async def _form(request: Request, model: type[_Form]) -> _Form:
    """The url-encoded (or multipart) form validated by ``model``; 422 names the field."""
    async with request.form() as form:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestInvalid(
            [
                {"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
        ) from None


def create_page_app(
    view: PageView,
    control: LocalControl,
    api: ASGIApp,
    *,
    users: UserStore,
    force_login: bool,
    metrics_app: ASGIApp | None = None,
) -> ASGIApp:
    """The page's ASGI app (``_Guard`` around a Starlette app). ``api``: the local API app of
    the Unix socket (``api.app.create_app``), mounted as it is under ``/api``: one set of
    routes for the CLI and the page, actions named by ``server.peer_or_page_user``."""
    auth = PageAuth(users, force_login)
    env = make_env(TEMPLATES)
    app = Starlette()
    add_error_handlers(app)
    mount_static(app)
    app.mount("/static/page", StaticFiles(directory=STATIC), name="page-static")
    gateway = view.gateway_id
    if metrics_app is not None:
        app.router.routes.append(Route("/metrics", metrics_app, methods=["GET"]))
    app.mount("/api", api)

    def render(name: str, code: int = 200, **ctx: Any) -> Response:
        """Streamed in ~64 KB chunks: a page of thousands of points never exists as one list
        of fragments plus one string (the agent's memory high-water stays low)."""
        pieces = env.get_template(name).generate(brand="Outpost", gateway=gateway, **ctx)

        async def chunks() -> AsyncIterator[bytes]:
            buf: list[str] = []
            size = 0
            for piece in pieces:
                buf.append(piece)
                size += len(piece)
                if size >= RENDER_CHUNK:
                    yield "".join(buf).encode()
                    buf.clear()
                    size = 0
            if buf:
                yield "".join(buf).encode()

        return StreamingResponse(
            chunks(),
            status_code=code,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    def base_ctx(session: Session) -> dict[str, Any]:
        return {
            "principal": {"name": session.user, "role": session.role},
            "csrf_token": session.csrf,
            "logout_url": "/logout" if auth.login_required else None,
            "can_act": session.role == "operator",
            "nav": [NavItem("/", "Status", True)],
        }

    async def ensure_session(request: Request) -> tuple[Session | None, str | None]:
        """The request's session; without login a new ``local`` one (its id to set)."""
        session = _session_of(request)
        if session is not None or auth.login_required:
            return session, None
        sid, session = auth.open(LOCAL_USER, "operator", "")
        return session, sid

    async def page(request: Request) -> Response:
        params = query(request, _PageQuery)
        device, quality, q, trend = params.device, params.quality, params.q, params.trend
        hours = params.hours
        session, new_sid = await ensure_session(request)
        if session is None:
            return RedirectResponse("/login?next=" + quote(str(request.url.path)), 303)
        data = await page_data(view, control, device=device, quality=quality, q=q)
        points = data["points"]
        trend_id = trend if trend and view.point_meta(trend) else _default_trend(points)
        response = render(
            "status.html",
            title=f"{data['status'].get('site') or gateway} status",
            live_url="/api/live",
            filters={"device": device or "", "quality": quality or "", "q": q or ""},
            trend=trend_id,
            hours=hours,
            all_point_ids=[p["point_id"] for p in view.live_points()],
            **data,
            **base_ctx(session),
        )
        if new_sid is not None:
            _set_cookie(response, SESSION_COOKIE, new_sid, int(SESSION_MAX_S))
        return response

    async def fragment(request: Request) -> Response:
        part = request.path_params["part"]
        session = _session_of(request)
        assert session is not None  # the guard let only sessions through
        if part not in ("alarms", "overview", "devices", "events"):
            return HTMLResponse("unknown fragment", 404)
        data = await page_data(view, control, device=None, quality=None, q=None)
        return render(f"status_{part}.html", **data, **base_ctx(session))

    async def login_form(request: Request) -> Response:
        next = query(request, _LoginQuery).next
        if not auth.login_required:
            return RedirectResponse("/", 303)
        token = secrets.token_urlsafe(24)
        response = render(
            "status_login.html", title="Log in", login_csrf=token, next=_safe_next(next)
        )
        _set_cookie(response, LOGIN_COOKIE, token, 3600)
        return response

    async def login(request: Request) -> Response:
        form = await _form(request, _LoginForm)
        username, password, csrf_token = form.username, form.password, form.csrf_token
        next = form.next
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        target = _safe_next(next)
        if not cookie or not hmac.compare_digest(cookie, csrf_token):
            return render(
                "status_login.html",
                code=403,
                title="Log in",
                login_csrf=cookie,
                next=target,
                error="The form expired: please log in again.",
            )
        client = request.client.host if request.client else "?"
        if auth.throttled(client):
            return render(
                "status_login.html",
                code=429,
                title="Log in",
                login_csrf=cookie,
                next=target,
                error="Too many failed logins: wait a few minutes.",
            )
        user = await asyncio.to_thread(auth.users.authenticate, username.strip(), password)
        if user is None:
            auth.failed(client)
            log.warning("page.login_failed", user=username[:64], client=client)
            return render(
                "status_login.html",
                code=401,
                title="Log in",
                login_csrf=cookie,
                next=target,
                error="Wrong user name or password.",
            )
        auth.close(request.cookies.get(SESSION_COOKIE))
        sid, _ = auth.open(user.name, user.role, user.hash)
        log.info("page.login", user=user.name, role=user.role, client=client)
        response = RedirectResponse(target, 303)
        _set_cookie(response, SESSION_COOKIE, sid, int(SESSION_MAX_S))
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        csrf_token = (await _form(request, _LogoutForm)).csrf_token
        session = _session_of(request)
        if session is None or not hmac.compare_digest(csrf_token, session.csrf):
            return HTMLResponse("missing or wrong CSRF token", 403)
        auth.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    app.router.routes.extend(
        [
            Route("/", page, methods=["GET"]),
            Route("/fragments/{part}", fragment, methods=["GET"]),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
        ]
    )
    return _Guard(app, auth)


def _default_trend(points: list[dict[str, Any]]) -> str | None:
    for p in points:
        if any(p.get(k) is not None for k in ("alarm_h", "alarm_hh", "alarm_l", "alarm_ll")):
            return str(p["point_id"])
    return str(points[0]["point_id"]) if points else None


async def page_data(
    view: PageView,
    control: LocalControl,
    *,
    device: str | None,
    quality: str | None,
    q: str | None,
) -> dict[str, Any]:
    """Everything the page and its fragments render, read from the same views as the API."""
    status = await full_status(view)
    points = []
    words = (q or "").lower().split()
    for p in view.live_points(device or None):
        if quality and not (p["quality"] or "").startswith(quality):
            continue
        meta = view.point_meta(p["point_id"]) or {}
        row = {**meta, **p}
        if words:
            text = " ".join(
                str(row.get(k) or "") for k in ("point_id", "device", "units", "description")
            ).lower()
            if not all(w in text for w in words):
                continue
        points.append(row)
    events: list[dict[str, Any]] = []
    log_ = view.events
    if log_ is not None:
        with contextlib.suppress(Exception):  # a buffer hiccup must not blank the page
            events = list(reversed(await recent_events(log_, since=None, kind=None, limit=30)))
    alarms = [a.to_dict() for a in control.list_alarms()]
    devices = status.get("devices") or {}
    return {
        "status": status,
        "mode": status.get("mode") or {},
        "devices": devices,
        "device_ids": sorted(devices),
        "points": points,
        "alarms": alarms,
        "events": events,
        "buffer": status.get("buffer") or {},
        "uplink": status.get("uplink"),
        "qualities": ["good", "uncertain", "bad", "unknown"],
        "now": time.time(),
    }


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling (the runtime owns SIGTERM/SIGINT/SIGHUP)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def serve_page(app: ASGIApp, bind: str, *, retry_s: float = 30.0) -> None:
    """Serve ``app`` on ``bind`` until cancelled. A port in use is logged once and retried,
    never fatal: the agent's job is polling, not this page."""
    host, _, port = bind.rpartition(":")
    warned = False
    while True:
        try:
            sock = socket.create_server((host.strip("[]"), int(port)), reuse_port=False)
        except OSError as exc:
            if not warned:
                log.warning("page.bind_failed", bind=bind, error=str(exc), retry_s=retry_s)
                warned = True
            await asyncio.sleep(retry_s)
            continue
        break
    server = _QuietServer(
        uvicorn.Config(
            app,
            http="h11",
            ws="none",
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    log.info(
        "page.listening",
        url=f"http://{host}:{sock.getsockname()[1]}/",
        loopback=is_loopback_bind(bind),
    )
    try:
        await server.serve(sockets=[sock])
    except asyncio.CancelledError:
        server.should_exit = True
        raise
    finally:
        sock.close()
