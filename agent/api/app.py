"""The daemon's local HTTP API (served on its Unix socket; the CLI is its main client).

Built from an ``AgentView`` (read-only views of the running agent), the ``LocalControl`` whose
methods the control routes call, and the one daemon action, ``request_reload``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query

from outpost.agent.api.control import add_error_handlers, control_router
from outpost.agent.api.server import peer_user
from outpost.agent.api.view import AgentView
from outpost.agent.control.local import LocalControl


def create_app(
    view: AgentView, control: LocalControl, *, request_reload: Callable[[str], None]
) -> FastAPI:
    """``request_reload(actor)``: re-read the schedule files, as SIGHUP does."""
    app = FastAPI(
        title="Outpost agent local API",
        version="1",
        description="Live values, status and local control of one Outpost gateway.",
    )

    @app.get("/status")
    async def status() -> dict[str, Any]:
        body = view.status()
        stats = await view.buffer_stats()
        if stats is not None:
            body["buffer"] = stats
        return body

    @app.get("/points")
    async def points(device: str | None = Query(None)) -> list[dict[str, Any]]:
        if device is not None and not view.knows_device(device):
            raise HTTPException(404, f"unknown device {device!r}")
        return view.live_points(device)

    @app.get("/points/{point_id}")
    async def point(point_id: str) -> dict[str, Any]:
        found = view.live_point(point_id)
        if found is None:
            raise HTTPException(404, f"unknown point {point_id!r}")
        return found

    @app.post("/reload")
    async def reload(actor: Annotated[str, Depends(peer_user)]) -> dict[str, Any]:
        request_reload(actor)
        return {"requested": True}

    app.include_router(control_router(control, lambda: view.events))
    add_error_handlers(app)
    return app
