"""The daemon's local HTTP API (served on its Unix socket; the CLI is its main client)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Query

if TYPE_CHECKING:
    from outpost.agent.core.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="Outpost agent local API",
        version="1",
        description="Live values, status and local control of one Outpost gateway.",
    )

    @app.get("/status")
    async def status() -> dict[str, Any]:
        import asyncio

        body = runtime.status()
        if runtime.buffer is not None:
            stats = await asyncio.to_thread(runtime.buffer.stats)
            body["buffer"] = stats.as_dict() if hasattr(stats, "as_dict") else _plain(stats)
        return body

    @app.get("/points")
    async def points(device: str | None = Query(None)) -> list[dict[str, Any]]:
        if device is not None and device not in runtime.config.devices:
            raise HTTPException(404, f"unknown device {device!r}")
        return runtime.live_points(device)

    @app.get("/points/{point_id}")
    async def point(point_id: str) -> dict[str, Any]:
        found = runtime.live_point(point_id)
        if found is None:
            raise HTTPException(404, f"unknown point {point_id!r}")
        return found

    @app.post("/reload")
    async def reload() -> dict[str, Any]:
        runtime.request_reload()
        return {"requested": True}

    for router in _extra_routers(runtime):
        app.include_router(router)
    return app


def _extra_routers(runtime: Runtime) -> list[Any]:
    routers = []
    if runtime.alarms is not None:
        from outpost.agent.api.control import control_router

        routers.append(control_router(runtime))
    return routers


def _plain(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return obj
