"""The daemon's local HTTP API (served on its Unix socket; the CLI is its main client).

Built from an ``AgentView`` (read-only views of the running agent), the ``LocalControl`` whose
methods the control routes call, and the one daemon action, ``request_reload``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query

from outpost.agent.api.control import add_error_handlers, control_router
from outpost.agent.api.schedule import ScheduleRejected, ScheduleService, schedule_router
from outpost.agent.api.server import peer_user
from outpost.agent.api.view import AgentView
from outpost.agent.control.local import LocalControl


def create_app(
    view: AgentView,
    control: LocalControl,
    *,
    request_reload: Callable[[str], None],
    schedules: ScheduleService | None = None,
) -> FastAPI:
    """``request_reload(actor)``: re-read the schedule files, as SIGHUP does. ``schedules``:
    the schedule routes (``api.schedule``); with it ``/reload`` waits for the outcome."""
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
            uplink = body.get("uplink")
            if isinstance(uplink, dict):
                # The uplink refreshes its copy of the backlog every few seconds; the figures
                # just read win, so the uplink line and the buffer line always agree.
                uplink["backlog_rows"] = stats.get("unsynced_rows")
                uplink["oldest_unsynced_age_s"] = stats.get("oldest_unsynced_age_s")
                uplink["unsynced_events"] = stats.get("unsynced_events")
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
        if schedules is None:
            request_reload(actor)
            return {"requested": True}
        try:
            return await schedules.reload_schedule(actor)
        except ScheduleRejected as exc:
            # one line per loader error, so the CLI prints them as they are
            lines = [
                f"schedule rejected, the running schedule stays ({len(exc.errors)} problem(s)):"
            ]
            raise HTTPException(409, "\n".join(lines + exc.errors)) from None

    app.include_router(control_router(control, lambda: view.events))
    if schedules is not None:
        app.include_router(schedule_router(schedules))
    add_error_handlers(app)
    return app
