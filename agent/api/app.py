"""The daemon's local HTTP API (served on its Unix socket; the CLI is its main client).

Built from an ``AgentView`` (read-only views of the running agent), the ``LocalControl`` whose
methods the control routes call, and the one daemon action, ``request_reload``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException

from outpost.agent.api.control import add_error_handlers, control_router
from outpost.agent.api.read import read_router
from outpost.agent.api.schedule import ScheduleRejected, ScheduleService, schedule_router
from outpost.agent.api.server import peer_or_page_user, peer_user
from outpost.agent.api.view import AgentView
from outpost.agent.control.local import LocalControl


def create_app(
    view: AgentView,
    control: LocalControl,
    *,
    request_reload: Callable[[str], None],
    schedules: ScheduleService | None = None,
    gateway: str = "",
) -> FastAPI:
    """``request_reload(actor)``: re-read the schedule files, as SIGHUP does. ``schedules``:
    the schedule routes (``api.schedule``); with it ``/reload`` waits for the outcome.
    ``gateway``: the agent's id, named in the ``/live`` stream's messages."""
    app = FastAPI(
        title="Outpost agent local API",
        version="1",
        description="Live values, status and local control of one Outpost gateway.",
    )

    # status, points, a point's history, /live: the same routes the status page reads
    app.include_router(read_router(view, control, gateway=gateway))

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

    # the status page mounts this same app under /api: actions name its user there
    app.include_router(control_router(control, lambda: view.events, actor_of=peer_or_page_user))
    if schedules is not None:
        app.include_router(schedule_router(schedules))
    add_error_handlers(app)
    return app
