"""The fleet dashboard: server-rendered pages (Jinja2 + the shared UI kit), their JSON twins,
the SSE stream of live updates, the login page and self-hosted API docs.

``install_dashboard(app, settings)`` is the one call ``create_app`` makes. Pages:

- ``/`` fleet, ``/gateways/{id}`` gateway, ``/gateways/{id}/points/{point_id}`` trend,
  ``/alarms`` console, ``/sites/{site}/floor`` floor, ``/admin`` users/gateways/audit,
  ``/login`` (the form; ``POST /login`` is auth's)
- ``/live`` SSE (``reading``, ``hb``, ``alarm``, ``command`` events; see live.py), filtered by
  the caller's site scope
- JSON twins under ``/api/v1/dashboard/...`` (documented in /docs, tag "dashboard")
- ``/docs`` and ``/redoc`` with vendored Swagger UI / ReDoc (no CDN)

Roles are the auth module's dependencies: every page needs a viewer; the alarm console's ack
and shelve go to the command endpoint (operator, CSRF) and are only offered to operators;
admin pages need an admin. A site-scoped user sees only their sites' gateways everywhere.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, FastAPI, Form, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from outpost.cloud.ui import STATIC_PREFIX as UI_STATIC
from outpost.cloud.ui import NavItem, make_env, mount_static
from outpost.cloud.wire import ID_PATTERN, quality_label

from . import audit, dashboard_data, users
from .api_auth import safe_next as _safe_next
from .auth import Admin, Principal, Viewer, client_address, optional_principal
from .live import LiveHub
from .settings import ReceiverSettings
from .storage import BUCKETS, Storage, auto_resolution

log = structlog.get_logger(__name__)

TEMPLATES = FsPath(__file__).resolve().parent / "templates"
RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
ALARM_STATES = (
    "unack_active",
    "ack_active",
    "rtn_unack",
    "shelved",
    "suppressed",
    "out_of_service",
)
#: the console lists the worst alarms first; more rows than this are for filters, not for eyes
CONSOLE_ROWS = 200
GwPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
PointPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=256)]
# A site is the free text of `[agent] site` (e.g. "Demo data hall"): anything but a slash or a
# control character; links carry it URL-encoded.
SitePath = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^/\x00-\x1f\x7f]+$")]
OptStr = Annotated[str | None, Query(max_length=128)]
# module level: with postponed annotations FastAPI resolves these names in the module globals
RangeQ = Annotated[Literal["1h", "24h", "7d", "30d", "custom"], Query(alias="range")]
FromQ = Annotated[datetime | None, Query(alias="from")]


def install_dashboard(app: FastAPI, settings: ReceiverSettings) -> None:
    """Pages, SSE, static files, self-hosted /docs and /redoc, the login page. Replaces
    FastAPI's CDN-backed /docs and /redoc and any plain ``GET /login`` registered before."""
    replaced = {"/docs", "/redoc", "/docs/oauth2-redirect", "/login"}
    app.router.routes[:] = [
        r
        for r in app.router.routes
        if not (isinstance(r, Route) and r.path in replaced and "GET" in (r.methods or ()))
    ]
    mount_static(app)
    env = make_env(TEMPLATES)

    def render_login(request: Request, error: str, status: int) -> Response:
        nxt = str(request.query_params.get("next") or "/")
        html = env.get_template("login.html").render(
            title="Log in", error=error, next=nxt, brand="Outpost"
        )
        return HTMLResponse(html, status_code=status)

    app.state.render_login = render_login
    app.include_router(dashboard_router(settings, env))


def dashboard_router(settings: ReceiverSettings, env: Any = None) -> APIRouter:
    env = env or make_env(TEMPLATES)
    hub = LiveHub(settings.dsn)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.live_hub = hub
        try:
            yield
        finally:
            await hub.close()

    router = APIRouter(lifespan=lifespan)

    def pool_of(request: Request) -> Any:
        storage: Storage = request.app.state.storage
        return storage.pool

    def scope(p: Principal) -> list[str] | None:
        return p.site_list

    def nav(path: str, p: Principal) -> list[NavItem]:
        items = [("/", "Fleet"), ("/alarms", "Alarms")]
        if p.has("admin"):
            items.append(("/admin", "Admin"))
        items.append(("/docs", "API"))
        return [
            NavItem(href, label, path == href or (href != "/" and path.startswith(href)))
            for href, label in items
        ]

    def render(
        request: Request, p: Principal, name: str, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        ctx.setdefault("live_url", "/live")
        html = env.get_template(name).render(
            principal=p,
            csrf_token=p.csrf_token,
            logout_url="/logout" if p.kind == "session" else None,
            nav=nav(request.url.path, p),
            brand="Outpost fleet",
            now=datetime.now(UTC),
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    async def visible_gateway(request: Request, p: Principal, gw: str) -> str:
        site = await dashboard_data.site_of(pool_of(request), gw)
        if site is None or not p.sees(site or None):
            # a scoped user learns nothing of other sites' gateways: same answer as unknown
            raise HTTPException(404, f"unknown gateway {gw}")
        return site

    # --- login ------------------------------------------------------------------------------

    @router.get("/login", include_in_schema=False)
    async def login_page(
        request: Request, next: Annotated[str, Query(max_length=2048)] = "/"
    ) -> Response:
        who = await optional_principal(request)
        if who is not None and who.kind == "session":
            return RedirectResponse(_safe_next(next), status_code=303)
        html = env.get_template("login.html").render(
            title="Log in", error=None, next=_safe_next(next), brand="Outpost"
        )
        return HTMLResponse(html)

    # --- live -------------------------------------------------------------------------------

    @router.get(
        "/live",
        tags=["dashboard"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def live(request: Request, p: Viewer) -> StreamingResponse:
        """Server-Sent Events: `reading`, `hb`, `alarm`, `command` (JSON data, see live.py),
        only for gateways of the caller's sites."""
        if p.sites is None:
            sub = await hub.subscribe(lambda _gw: True)
        else:
            sites_of = await dashboard_data.site_map(pool_of(request))
            allowed = p.sites
            sub = await hub.subscribe(lambda gw: sites_of.get(gw) in allowed)
        return StreamingResponse(
            hub.stream(sub),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # --- fleet ------------------------------------------------------------------------------

    async def fleet_ctx(request: Request, p: Principal, site: str | None) -> dict[str, Any]:
        pool = pool_of(request)
        rows, site_list = await asyncio.gather(
            dashboard_data.fleet(pool, settings, scope(p), site=site or None),
            dashboard_data.sites(pool, scope(p)),
        )
        return {
            "gateways": rows,
            "site": site or "",
            "sites": site_list,
            "counts": {
                s: sum(1 for g in rows if g.status == s) for s in ("online", "stale", "offline")
            },
        }

    @router.get("/", include_in_schema=False)
    async def fleet_page(request: Request, p: Viewer, site: OptStr = None) -> HTMLResponse:
        ctx = await fleet_ctx(request, p, site)
        return render(request, p, "fleet.html", title="Fleet", **ctx)

    @router.get("/fragments/fleet", include_in_schema=False)
    async def fleet_fragment(request: Request, p: Viewer, site: OptStr = None) -> HTMLResponse:
        ctx = await fleet_ctx(request, p, site)
        return render(request, p, "fleet_table.html", **ctx)

    @router.get("/api/v1/dashboard/fleet", tags=["dashboard"])
    async def fleet_json(request: Request, p: Viewer, site: OptStr = None) -> JSONResponse:
        """The fleet page's rows: status, site, mode (since), alarms by priority, devices,
        backlog, schedule version, last seen."""
        ctx = await fleet_ctx(request, p, site)
        rows = [_without(asdict(g), "heartbeat") for g in ctx["gateways"]]
        return JSONResponse(jsonable_encoder({"gateways": rows, "counts": ctx["counts"]}))

    # --- gateway ----------------------------------------------------------------------------

    async def gateway_ctx(request: Request, p: Principal, gw: str) -> dict[str, Any]:
        await visible_gateway(request, p, gw)
        pool = pool_of(request)
        rows, points, alarms, modes = await asyncio.gather(
            dashboard_data.fleet(pool, settings, None, gateway_id=gw),
            dashboard_data.latest(pool, gw),
            dashboard_data.active_alarms(pool, None, gateway_id=gw),
            dashboard_data.mode_history(pool, gw),
        )
        if not rows:
            raise HTTPException(404, f"unknown gateway {gw}")
        devices: dict[str, dict[str, Any]] = {}
        for name, health in (rows[0].heartbeat.get("devices") or {}).items():
            devices[name] = {"name": name, "points": 0, **health}
        for pt in points:
            devices.setdefault(pt.device, {"name": pt.device, "points": 0})["points"] += 1
        return {
            "gw": rows[0],
            "points": points,
            "kpis": dashboard_data.kpis(points),
            "devices": sorted(devices.values(), key=lambda d: d["name"]),
            "alarms": alarms.rows,
            "modes": modes,
        }

    @router.get("/gateways/{gateway_id}", include_in_schema=False)
    async def gateway_page(request: Request, gateway_id: GwPath, p: Viewer) -> HTMLResponse:
        ctx = await gateway_ctx(request, p, gateway_id)
        return render(request, p, "gateway.html", title=gateway_id, **ctx)

    @router.get("/fragments/gateways/{gateway_id}/summary", include_in_schema=False)
    async def gateway_fragment(request: Request, gateway_id: GwPath, p: Viewer) -> HTMLResponse:
        ctx = await gateway_ctx(request, p, gateway_id)
        return render(request, p, "gateway_summary.html", **ctx)

    @router.get("/api/v1/dashboard/gateways/{gateway_id}", tags=["dashboard"])
    async def gateway_json(request: Request, gateway_id: GwPath, p: Viewer) -> JSONResponse:
        """The gateway page: status, KPIs (from point tags), devices, points with their newest
        value, active alarms, mode history."""
        ctx = await gateway_ctx(request, p, gateway_id)
        ctx["gw"] = _without(asdict(ctx["gw"]), "heartbeat")
        return JSONResponse(jsonable_encoder(ctx))

    # --- point ------------------------------------------------------------------------------

    async def trend(
        request: Request,
        p: Principal,
        gw: str,
        pid: str,
        range_: str,
        from_: datetime | None,
        to: datetime | None,
    ) -> dict[str, Any]:
        await visible_gateway(request, p, gw)
        storage: Storage = request.app.state.storage
        pt = await dashboard_data.point(storage.pool, gw, pid)
        key = await storage.point_key(gw, pid)
        if pt is None or key is None:
            raise HTTPException(404, f"unknown point {pid} on gateway {gw}")
        end = _utc(to) if to is not None else datetime.now(UTC)
        if range_ == "custom" and from_ is not None:
            start = _utc(from_)
        else:
            start = end - RANGES.get(range_, RANGES["24h"])
        if start >= end:
            raise HTTPException(422, "'from' must be before 'to'")
        res = auto_resolution(end - start)
        limit = settings.max_rows
        out: dict[str, Any] = {
            "gateway_id": gw,
            "point_id": pid,
            "label": pid,
            "units": pt.units,
            "resolution": res,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "limits": {
                k: v for k, v in pt.limits.items() if k.startswith("alarm_") and v is not None
            },
        }
        if res == "raw":
            rows = await storage.raw_readings(key, start, end, limit + 1)
            out["t"] = [r["time"].timestamp() for r in rows[:limit]]
            out["value"] = [r["value"] for r in rows[:limit]]
            out["quality"] = [quality_label(r["quality"]) for r in rows[:limit]]
        else:
            assert res in BUCKETS
            rows = await storage.aggregated_readings(key, start, end, res, limit + 1)
            out["t"] = [r["time"].timestamp() for r in rows[:limit]]
            out["value"] = [r["avg"] for r in rows[:limit]]
            out["min"] = [r["min"] for r in rows[:limit]]
            out["max"] = [r["max"] for r in rows[:limit]]
            out["count"] = [r["count"] for r in rows[:limit]]
        out["truncated"] = len(rows) > limit
        out["marks"] = await dashboard_data.alarm_marks(storage.pool, gw, pid, start, end)
        return out

    @router.get("/gateways/{gateway_id}/points/{point_id}", include_in_schema=False)
    async def point_page(
        request: Request,
        gateway_id: GwPath,
        point_id: PointPath,
        p: Viewer,
        range_: RangeQ = "24h",
        from_: FromQ = None,
        to: datetime | None = None,
    ) -> HTMLResponse:
        await visible_gateway(request, p, gateway_id)
        pt = await dashboard_data.point(pool_of(request), gateway_id, point_id)
        if pt is None:
            raise HTTPException(404, f"unknown point {point_id} on gateway {gateway_id}")
        q: dict[str, str] = {"range": range_}
        if range_ == "custom":
            if from_ is not None:
                q["from"] = _utc(from_).isoformat()
            if to is not None:
                q["to"] = _utc(to).isoformat()
        base = f"/api/v1/dashboard/gateways/{gateway_id}/points/{point_id}/trend"
        return render(
            request,
            p,
            "point.html",
            title=point_id,
            gateway_id=gateway_id,
            point=pt,
            range=range_,
            ranges=[*RANGES, "custom"],
            from_=q.get("from", ""),
            to=q.get("to", ""),
            data_url=f"{base}?{urlencode(q)}",
            csv_url=f"{base}.csv?{urlencode(q)}",
        )

    @router.get(
        "/api/v1/dashboard/gateways/{gateway_id}/points/{point_id}/trend", tags=["dashboard"]
    )
    async def trend_json(
        request: Request,
        gateway_id: GwPath,
        point_id: PointPath,
        p: Viewer,
        range_: RangeQ = "24h",
        from_: FromQ = None,
        to: datetime | None = None,
    ) -> JSONResponse:
        """The point page's chart: columns `t` (epoch s), `value` (raw value or bucket
        average), `min`/`max` (aggregated tiers), alarm `limits`, alarm transition `marks`;
        the resolution follows the read API's tiers."""
        data = await trend(request, p, gateway_id, point_id, range_, from_, to)
        return JSONResponse(data)

    @router.get(
        "/api/v1/dashboard/gateways/{gateway_id}/points/{point_id}/trend.csv",
        tags=["dashboard"],
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def trend_csv(
        request: Request,
        gateway_id: GwPath,
        point_id: PointPath,
        p: Viewer,
        range_: RangeQ = "24h",
        from_: FromQ = None,
        to: datetime | None = None,
    ) -> Response:
        """What the chart shows, as CSV (ISO 8601 UTC times)."""
        data = await trend(request, p, gateway_id, point_id, range_, from_, to)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        agg = "min" in data
        w.writerow(["ts", "avg", "min", "max", "count"] if agg else ["ts", "value", "quality"])
        for i, t in enumerate(data["t"]):
            ts = datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
            if agg:
                w.writerow([ts, data["value"][i], data["min"][i], data["max"][i], data["count"][i]])
            else:
                w.writerow([ts, data["value"][i], data["quality"][i]])
        name = f"{gateway_id}_{point_id}_{data['resolution']}.csv"
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # --- alarms -----------------------------------------------------------------------------

    async def alarms_ctx(
        request: Request,
        p: Principal,
        site: str | None,
        gateway: str | None,
        priority: str | None,
        state: str | None,
        limit: int | None = CONSOLE_ROWS,
    ) -> dict[str, Any]:
        pool = pool_of(request)
        window = timedelta(hours=24)
        now = datetime.now(UTC)
        # independent reads on separate pool connections: the page waits for the slowest
        active, summary, episodes, health, site_list = await asyncio.gather(
            dashboard_data.active_alarms(
                pool,
                scope(p),
                gateway_id=gateway or None,
                site=site or None,
                priority=priority or None,
                state=state or None,
                limit=limit,
            ),
            dashboard_data.alarm_summary(pool, scope(p)),
            dashboard_data.alarm_history(
                pool, scope(p), since=now - window, gateway_id=gateway or None
            ),
            dashboard_data.alarm_health_db(pool, scope(p), 0, window, now),
            dashboard_data.sites(pool, scope(p)),
        )
        health.standing = summary.standing
        return {
            "alarms": active.rows,
            "matching": active.matching,
            "summary": summary,
            "history": episodes[:200],
            "health": health,
            "filters": {
                "site": site or "",
                "gateway": gateway or "",
                "priority": priority or "",
                "state": state or "",
            },
            "sites": site_list,
            "gateways": summary.gateways,
            "states": ALARM_STATES,
            "can_act": p.has("operator"),
        }

    @router.get("/alarms", include_in_schema=False)
    async def alarms_page(
        request: Request,
        p: Viewer,
        site: OptStr = None,
        gateway: OptStr = None,
        priority: OptStr = None,
        state: OptStr = None,
    ) -> HTMLResponse:
        ctx = await alarms_ctx(request, p, site, gateway, priority, state)
        return render(request, p, "alarms.html", title="Alarms", **ctx)

    @router.get("/fragments/alarms", include_in_schema=False)
    async def alarms_fragment(
        request: Request,
        p: Viewer,
        site: OptStr = None,
        gateway: OptStr = None,
        priority: OptStr = None,
        state: OptStr = None,
    ) -> HTMLResponse:
        ctx = await alarms_ctx(request, p, site, gateway, priority, state)
        return render(request, p, "alarms_table.html", **ctx)

    @router.get("/api/v1/dashboard/alarms", tags=["dashboard"])
    async def alarms_json(
        request: Request,
        p: Viewer,
        site: OptStr = None,
        gateway: OptStr = None,
        priority: OptStr = None,
        state: OptStr = None,
    ) -> JSONResponse:
        """The alarm console: active alarms (filtered), the last 24 h of episodes (who acked,
        time to ack, time to clear) and ISA-18.2 health figures."""
        ctx = await alarms_ctx(request, p, site, gateway, priority, state, limit=None)
        h = ctx["health"]
        return JSONResponse(
            jsonable_encoder(
                {
                    "active": [asdict(a) for a in ctx["alarms"]],
                    "summary": asdict(ctx["summary"]),
                    "history": [
                        asdict(e)
                        | {"time_to_ack_s": e.time_to_ack_s, "time_to_clear_s": e.time_to_clear_s}
                        for e in ctx["history"]
                    ],
                    "health": asdict(h) | {"window_s": h.window.total_seconds()},
                }
            )
        )

    # --- floor ------------------------------------------------------------------------------

    @router.get("/sites/{site}/floor", include_in_schema=False)
    async def floor_page(request: Request, site: SitePath, p: Viewer) -> HTMLResponse:
        if not p.sees(site):
            raise HTTPException(404, f"unknown site {site}")
        rooms = await dashboard_data.floor(pool_of(request), scope(p), site)
        return render(request, p, "floor.html", title=f"{site} floor", site=site, rooms=rooms)

    @router.get("/fragments/sites/{site}/floor", include_in_schema=False)
    async def floor_fragment(request: Request, site: SitePath, p: Viewer) -> HTMLResponse:
        if not p.sees(site):
            raise HTTPException(404, f"unknown site {site}")
        rooms = await dashboard_data.floor(pool_of(request), scope(p), site)
        return render(request, p, "floor_rooms.html", site=site, rooms=rooms)

    @router.get("/api/v1/dashboard/sites/{site}/floor", tags=["dashboard"])
    async def floor_json(request: Request, site: SitePath, p: Viewer) -> JSONResponse:
        """Racks by room and row (position tags), with temperature and worst alarm."""
        if not p.sees(site):
            raise HTTPException(404, f"unknown site {site}")
        rooms = await dashboard_data.floor(pool_of(request), scope(p), site)
        return JSONResponse(jsonable_encoder({"site": site, "rooms": [asdict(r) for r in rooms]}))

    # --- admin ------------------------------------------------------------------------------

    async def admin_page(
        request: Request, p: Principal, status: int = 200, **extra: Any
    ) -> HTMLResponse:
        pool = pool_of(request)
        return render(
            request,
            p,
            "admin.html",
            status=status,
            title="Admin",
            users=await users.list_users(pool),
            gateways=await dashboard_data.fleet(pool, settings, None),
            audit=await audit.page(pool, limit=100),
            **extra,
        )

    @router.get("/admin", include_in_schema=False)
    async def admin(request: Request, p: Admin) -> HTMLResponse:
        return await admin_page(request, p)

    @router.post("/admin/gateways/enroll", include_in_schema=False)
    async def admin_enroll(
        request: Request,
        p: Admin,
        gateway_id: Annotated[str, Form(max_length=128)],
        ttl_h: Annotated[float, Form(gt=0, le=720)] = 24.0,
    ) -> HTMLResponse:
        pool = pool_of(request)
        if not re.fullmatch(ID_PATTERN.strip("^$"), gateway_id):
            return await admin_page(
                request, p, 422, flash=f"invalid gateway id {gateway_id!r}", flash_kind="error"
            )
        storage: Storage = request.app.state.storage
        tok = await storage.create_enrollment_token(gateway_id, timedelta(hours=ttl_h))
        await audit.record(
            pool,
            p,
            "gateway.enrollment_token",
            gateway_id,
            "ok",
            client_address(request),
            {"ttl_h": ttl_h},
        )
        return await admin_page(request, p, enrolled=tok)

    @router.post("/admin/gateways/{gateway_id}/revoke", include_in_schema=False)
    async def admin_revoke(request: Request, gateway_id: GwPath, p: Admin) -> HTMLResponse:
        storage: Storage = request.app.state.storage
        ok = await storage.revoke(gateway_id)
        await audit.record(
            storage.pool,
            p,
            "gateway.revoke",
            gateway_id,
            "ok" if ok else "unknown",
            client_address(request),
        )
        return await admin_page(
            request,
            p,
            200 if ok else 404,
            flash=f"gateway {gateway_id} revoked" if ok else f"unknown gateway {gateway_id}",
            flash_kind="ok" if ok else "error",
        )

    @router.post("/admin/users", include_in_schema=False)
    async def admin_add_user(
        request: Request,
        p: Admin,
        name: Annotated[str, Form(max_length=64)],
        role: Annotated[str, Form(max_length=16)],
        password: Annotated[str, Form(max_length=1024)],
        sites: Annotated[str, Form(max_length=2048)] = "",
    ) -> HTMLResponse:
        pool = pool_of(request)
        site_list = [s.strip() for s in sites.split(",") if s.strip()] or None
        try:
            await users.add_user(pool, name, role, password, site_list)
        except users.UserError as exc:
            await audit.record(
                pool, p, "user.add", name, "refused", client_address(request), {"error": str(exc)}
            )
            return await admin_page(request, p, 422, flash=str(exc), flash_kind="error")
        await audit.record(
            pool,
            p,
            "user.add",
            name,
            "ok",
            client_address(request),
            {"role": role, "sites": site_list},
        )
        return await admin_page(request, p, flash=f"user {name} added", flash_kind="ok")

    # --- docs without a CDN -----------------------------------------------------------------

    @router.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=request.app.openapi_url or "/openapi.json",
            title="Outpost receiver — API",
            swagger_js_url=f"{UI_STATIC}/vendor/swagger-ui-bundle.js",
            swagger_css_url=f"{UI_STATIC}/vendor/swagger-ui.css",
            swagger_favicon_url=f"{UI_STATIC}/favicon.svg",
        )

    @router.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=request.app.openapi_url or "/openapi.json",
            title="Outpost receiver — API",
            redoc_js_url=f"{UI_STATIC}/vendor/redoc.standalone.js",
            redoc_favicon_url=f"{UI_STATIC}/favicon.svg",
            with_google_fonts=False,
        )

    return router


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
