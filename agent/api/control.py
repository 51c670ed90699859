"""Local-control routes of the daemon's API: alarms, modes, guarded writes, events.

Each route validates its body and calls the ``LocalControl`` method of the same name, the
one the command channel calls too. Errors are one clear sentence in ``detail``: 404 for an
unknown alarm or point, 409 when the action does not apply now (nothing to acknowledge,
write refused, emergency still active), 422 for a malformed body. A write that was sent but
failed or read back differently is not an HTTP error: the answer is the outcome (``result`` =
``failed`` / ``mismatch``), because the action did happen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from outpost.agent.api.http import Body, RequestInvalid, http_error, json_response, query
from outpost.agent.api.server import peer_user
from outpost.agent.control.events import EventLog, parse_since, recent_events
from outpost.agent.control.local import ControlRefused, LocalControl

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class _Body(BaseModel):
    """Every action body: unknown keys are refused, and so is ``actor`` (who acts is the user
    at the other end of the socket, see ``api.server``); text must be storable (no NUL, no
    lone surrogates)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_actor(cls, data: Any) -> Any:
        if isinstance(data, dict) and "actor" in data:
            raise ValueError(
                "actor is not accepted in the request: the action is recorded as the user "
                "connected to the socket"
            )
        return data

    @model_validator(mode="after")
    def _storable_text(self) -> Self:
        for name in type(self).model_fields:
            check_text(name, getattr(self, name))
        return self


class AckBody(_Body):
    note: str | None = None


class AckManyBody(_Body):
    """Acknowledge several alarms at once: the listed ``ids``, or with ``all`` every alarm
    waiting for acknowledgement (narrowed by ``device`` and ``priority``)."""

    ids: list[str] | None = Field(None, max_length=10_000)
    all: bool = False
    device: str | None = None
    priority: Literal["critical", "high", "medium", "low"] | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if self.all == (self.ids is not None):
            raise ValueError("give either ids (a list of alarm ids) or all=true")
        return self


class ShelveBody(_Body):
    duration_s: float | None = Field(None, description="None = one-shot (until next return)")
    reason: str | None = Field(None, description="required (ISA-18.2); ``note`` is the same")
    note: str | None = None


class UnshelveBody(_Body):
    note: str | None = None


class OutOfServiceBody(_Body):
    on: bool = True
    note: str | None = None


class ModeBody(_Body):
    mode: Literal["maintenance"]
    duration_s: float = Field(gt=0)
    reason: str = Field(min_length=1)
    scope: str | list[str] | dict[str, list[str]] | None = None


class ClearBody(_Body):
    reason: str | None = None


class WriteBody(_Body):
    value: float
    priority: int | None = None
    verify: bool = True


class RelinquishBody(_Body):
    priority: int | None = None


def check_text(name: str, value: object) -> None:
    """Strings (also inside lists and dicts) with NUL or a lone surrogate cannot be stored
    (SQLite, PostgreSQL, UTF-8 JSON): refuse them here, with the field's name."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError(f"{name}: text must not contain NUL characters")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{name}: text is not valid Unicode (lone surrogate)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _safe(text: object) -> str | int:
    if isinstance(text, int):
        return text
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each field and what was expected, without echoing the input back: the
    input may be what cannot be encoded (NaN, a lone surrogate)."""
    errors = exc.errors() if isinstance(exc, RequestInvalid) else []
    detail = [
        {"loc": [_safe(part) for part in e["loc"]], "msg": _safe(e["msg"]), "type": e["type"]}
        for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def add_error_handlers(app: Starlette) -> None:
    app.add_exception_handler(RequestInvalid, _validation_error)
    app.add_exception_handler(HTTPException, http_error)


def _http(exc: ControlRefused) -> HTTPException:
    return HTTPException(404 if exc.reason == "unknown" else 409, str(exc))


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ControlRefused as exc:
        raise _http(exc) from None


async def _acall(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except ControlRefused as exc:
        raise _http(exc) from None


class _AlarmsQuery(BaseModel):
    all: bool = False


class _GraphQuery(BaseModel):
    format: Literal["text", "mermaid"] = "text"


class _EventsQuery(BaseModel):
    since: str | None = Field(None, description="ISO 8601 or a duration back (2h)")
    kind: str | None = Field(None, description="kind or kind prefix, e.g. operator")
    limit: int = Field(200, ge=0, description="the most recent N; 0 = all")


def control_routes(
    control: LocalControl,
    events: Callable[[], EventLog | None],
    *,
    actor_of: Callable[[Request], str] = peer_user,
) -> list[Route]:
    """``events()``: where the agent records its events (None while the buffer is closed).
    ``actor_of``: who acts; on the Unix socket the peer's user (``server.peer_user``),
    elsewhere whatever authenticated the request, never the body."""

    async def acting(request: Request, model: type[M]) -> tuple[M, str]:
        # FastAPI's order, kept: undecodable JSON first, then who asks, then the body's fields
        body = await Body.read(request)
        actor = actor_of(request)
        return body.validate(model), actor

    async def list_alarms(request: Request) -> Response:
        """Alarms: active/unacked/shelved, or all with ?all=true."""
        q = query(request, _AlarmsQuery)
        return json_response([v.to_dict() for v in control.list_alarms(include_inactive=q.all)])

    async def get_alarm(request: Request) -> Response:
        alarm_id = request.path_params["alarm_id"]
        return json_response(_call(lambda: control.get_alarm(alarm_id)).to_dict())

    async def ack_many(request: Request) -> Response:
        """Acknowledge listed alarms, or all waiting (filtered)."""
        body, actor = await acting(request, AckManyBody)
        acked, skipped = control.ack_many(
            body.ids,
            actor=actor,
            device=body.device,
            priority=body.priority,
            note=body.note,
        )
        return json_response({"acked": [v.to_dict() for v in acked], "skipped": skipped})

    async def ack(request: Request) -> Response:
        alarm_id = request.path_params["alarm_id"]
        body, actor = await acting(request, AckBody)
        return json_response(
            _call(lambda: control.ack(alarm_id, actor=actor, note=body.note)).to_dict()
        )

    async def shelve(request: Request) -> Response:
        alarm_id = request.path_params["alarm_id"]
        body, actor = await acting(request, ShelveBody)
        view = _call(
            lambda: control.shelve(
                alarm_id, actor=actor, duration_s=body.duration_s, note=body.reason or body.note
            )
        )
        return json_response(view.to_dict())

    async def unshelve(request: Request) -> Response:
        alarm_id = request.path_params["alarm_id"]
        body, actor = await acting(request, UnshelveBody)
        return json_response(
            _call(lambda: control.unshelve(alarm_id, actor=actor, note=body.note)).to_dict()
        )

    async def out_of_service(request: Request) -> Response:
        alarm_id = request.path_params["alarm_id"]
        body, actor = await acting(request, OutOfServiceBody)
        view = _call(
            lambda: control.set_out_of_service(alarm_id, body.on, actor=actor, note=body.note)
        )
        return json_response(view.to_dict())

    async def get_mode(request: Request) -> Response:
        return json_response(control.mode_state())

    async def set_mode(request: Request) -> Response:
        body, actor = await acting(request, ModeBody)
        return json_response(
            await _acall(
                lambda: control.set_maintenance(
                    body.duration_s, body.reason, actor=actor, scope=body.scope
                )
            )
        )

    async def clear_mode(request: Request) -> Response:
        body, actor = await acting(request, ClearBody)
        return json_response(
            await _acall(lambda: control.clear_mode(actor=actor, reason=body.reason))
        )

    async def mode_graph(request: Request) -> Response:
        fmt = query(request, _GraphQuery).format
        return json_response({"format": fmt, "graph": control.mode_graph(fmt)})

    async def write_point(request: Request) -> Response:
        point_id = request.path_params["point_id"]
        body, actor = await acting(request, WriteBody)
        outcome = await _acall(
            lambda: control.write(
                point_id, body.value, actor=actor, priority=body.priority, verify=body.verify
            )
        )
        return json_response(outcome.to_dict())

    async def relinquish_point(request: Request) -> Response:
        point_id = request.path_params["point_id"]
        body, actor = await acting(request, RelinquishBody)
        outcome = await _acall(
            lambda: control.relinquish(point_id, actor=actor, priority=body.priority)
        )
        return json_response(outcome.to_dict())

    async def list_events(request: Request) -> Response:
        """Recorded events (alarm, mode, operator, write, system)."""
        q = query(request, _EventsQuery)
        log = events()
        if log is None:
            raise HTTPException(503, "the buffer is not open; no events to read")
        try:
            lower = parse_since(q.since)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return json_response(await recent_events(log, since=lower, kind=q.kind, limit=q.limit))

    return [
        Route("/alarms", list_alarms, methods=["GET"]),
        Route("/alarms/ack", ack_many, methods=["POST"]),
        Route("/alarms/{alarm_id}", get_alarm, methods=["GET"]),
        Route("/alarms/{alarm_id}/ack", ack, methods=["POST"]),
        Route("/alarms/{alarm_id}/shelve", shelve, methods=["POST"]),
        Route("/alarms/{alarm_id}/unshelve", unshelve, methods=["POST"]),
        Route("/alarms/{alarm_id}/out_of_service", out_of_service, methods=["POST"]),
        Route("/mode", get_mode, methods=["GET"]),
        Route("/mode", set_mode, methods=["POST"]),
        Route("/mode/clear", clear_mode, methods=["POST"]),
        Route("/mode/graph", mode_graph, methods=["GET"]),
        Route("/points/{point_id}/write", write_point, methods=["POST"]),
        Route("/points/{point_id}/relinquish", relinquish_point, methods=["POST"]),
        Route("/events", list_events, methods=["GET"]),
    ]
