"""The daemon's local HTTP API (served on its Unix socket; the CLI is its main client).

Built from an ``AgentView`` (read-only views of the running agent), the ``LocalControl`` whose
methods the control routes call, and the one daemon action, ``request_reload``.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from outpost.agent.api.control import add_error_handlers, control_routes
from outpost.agent.api.http import json_response
from outpost.agent.api.read import read_routes
from outpost.agent.api.schedule import ScheduleRejected, ScheduleService, schedule_routes
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
) -> Starlette:
    """``request_reload(actor)``: re-read the schedule files, as SIGHUP does. ``schedules``:
    the schedule routes (``api.schedule``); with it ``/reload`` waits for the outcome.
    ``gateway``: the agent's id, named in the ``/live`` stream's messages."""

    async def reload(request: Request) -> Response:
        actor = peer_user(request)
        if schedules is None:
            request_reload(actor)
            return json_response({"requested": True})
        try:
            return json_response(await schedules.reload_schedule(actor))
        except ScheduleRejected as exc:
            # one line per loader error, so the CLI prints them as they are
            lines = [
                f"schedule rejected, the running schedule stays ({len(exc.errors)} problem(s)):"
            ]
            raise HTTPException(409, "\n".join(lines + exc.errors)) from None

    routes = [
        # status, points, a point's history, /live: the same routes the status page reads
        *read_routes(view, control, gateway=gateway),
        Route("/reload", reload, methods=["POST"]),
        # the status page mounts this same app under /api: actions name its user there
        *control_routes(control, lambda: view.events, actor_of=peer_or_page_user),
        *(schedule_routes(schedules) if schedules is not None else []),
    ]
    app = Starlette(routes=routes)
    add_error_handlers(app)
    return app
