"""Local-control routes of the daemon's API: alarms, modes, guarded writes, events.

Mounted by ``outpost.agent.api.create_app`` with ``control_router(runtime)``. Errors are one clear
sentence in ``detail``: 404 for an unknown alarm or point, 409 when the action does not apply
now (nothing to acknowledge, write refused, emergency still active), 422 for a malformed body.
A write that was sent but failed or read back differently is not an HTTP error: the answer is
the outcome (``result`` = ``failed`` / ``mismatch``), because the action did happen.

FastAPI is imported inside ``control_router`` so the CLI can use the helpers here (event
reading, time parsing) without paying for it.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from outpost.fsm.clock import parse_duration

if TYPE_CHECKING:
    from fastapi import APIRouter

    from outpost.agent.control.writes import WriteService
    from outpost.fsm.alarms import AlarmEngine
    from outpost.fsm.modes import ModeMachine


class EventBuffer(Protocol):
    path: Path

    def append_event(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Any
    ) -> None: ...

    async def flush(self) -> None: ...


class ControlHost(Protocol):
    """What the router needs of the runtime (``agent.runtime.Runtime`` has these)."""

    alarms: AlarmEngine
    modes: ModeMachine
    writes: WriteService
    buffer: EventBuffer | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AckBody(_Body):
    actor: str = Field(min_length=1)
    note: str | None = None


class ShelveBody(_Body):
    actor: str = Field(min_length=1)
    duration_s: float | None = Field(None, description="None = one-shot (until next return)")
    note: str | None = None


class UnshelveBody(_Body):
    actor: str = Field(min_length=1)
    note: str | None = None


class OutOfServiceBody(_Body):
    actor: str = Field(min_length=1)
    on: bool = True
    note: str | None = None


class ModeBody(_Body):
    mode: Literal["maintenance"]
    duration_s: float = Field(gt=0)
    reason: str = Field(min_length=1)
    actor: str = Field(min_length=1)
    scope: str | list[str] | dict[str, list[str]] | None = None


class ClearBody(_Body):
    actor: str = Field(min_length=1)
    reason: str | None = None


class WriteBody(_Body):
    value: float
    actor: str = Field(min_length=1)
    priority: int | None = None
    verify: bool = True


class RelinquishBody(_Body):
    actor: str = Field(min_length=1)
    priority: int | None = None


# ------------------------------------------------------------------------------ events


_ISO_Z = re.compile(r"Z$")


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``2026-11-24T14:00:00Z`` / ``2026-11-24`` (ISO 8601, UTC if no zone) or a duration back
    from now (``30m``, ``2h``, ``1d``). Raises ValueError naming the accepted forms."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(_ISO_Z.sub("+00:00", text))
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}; expected ISO 8601 (2026-11-24T14:00:00Z) or a duration "
            "back from now (30m, 2h, 1d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_events(
    path: Path,
    *,
    since: datetime | None = None,
    kind: str | None = None,
    limit: int | None = 200,
) -> list[dict[str, Any]]:
    """Events from a buffer file, oldest first: the last ``limit`` (None/0 = all) with
    ``ts >= since`` whose kind equals ``kind`` or starts with ``kind.`` (``operator`` matches
    ``operator.ack``). Each: ``id, ts, kind, source, actor, detail``."""
    from outpost.buffer.inspect import export_events

    out = io.StringIO()
    export_events(path, out, "jsonl", since, None)
    rows = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    if kind:
        rows = [r for r in rows if r["kind"] == kind or r["kind"].startswith(kind + ".")]
    if limit:
        rows = rows[-limit:]
    return rows


# ------------------------------------------------------------------------------ router


def control_router(host: ControlHost) -> APIRouter:
    from fastapi import APIRouter, HTTPException, Query

    from outpost.agent.control.writes import UnknownPoint, WriteRefused
    from outpost.fsm.alarms import AlarmActionRefused, UnknownAlarm
    from outpost.fsm.modes import ModeRefused

    router = APIRouter(tags=["local control"])

    def alarm_call(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            view = fn(*args, **kwargs)
        except UnknownAlarm as exc:
            raise HTTPException(404, str(exc)) from None
        except AlarmActionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        result: dict[str, Any] = view.to_dict()
        return result

    @router.get("/alarms", summary="Alarms: active/unacked/shelved, or all with ?all=true")
    async def list_alarms(all: bool = Query(False)) -> list[dict[str, Any]]:
        return [v.to_dict() for v in host.alarms.list(include_inactive=all)]

    @router.get("/alarms/{alarm_id}")
    async def get_alarm(alarm_id: str) -> dict[str, Any]:
        return alarm_call(host.alarms.get, alarm_id)

    @router.post("/alarms/{alarm_id}/ack")
    async def ack(alarm_id: str, body: AckBody) -> dict[str, Any]:
        return alarm_call(host.alarms.ack, alarm_id, body.actor, body.note)

    @router.post("/alarms/{alarm_id}/shelve")
    async def shelve(alarm_id: str, body: ShelveBody) -> dict[str, Any]:
        return alarm_call(host.alarms.shelve, alarm_id, body.actor, body.duration_s, body.note)

    @router.post("/alarms/{alarm_id}/unshelve")
    async def unshelve(alarm_id: str, body: UnshelveBody) -> dict[str, Any]:
        return alarm_call(host.alarms.unshelve, alarm_id, body.actor, body.note)

    @router.post("/alarms/{alarm_id}/out_of_service")
    async def out_of_service(alarm_id: str, body: OutOfServiceBody) -> dict[str, Any]:
        return alarm_call(host.alarms.set_out_of_service, alarm_id, body.on, body.actor, body.note)

    @router.get("/mode")
    async def get_mode() -> dict[str, Any]:
        return host.modes.state()

    @router.post("/mode")
    async def set_mode(body: ModeBody) -> dict[str, Any]:
        try:
            return await host.modes.set_maintenance(
                body.duration_s, body.reason, body.actor, body.scope
            )
        except ModeRefused as exc:
            raise HTTPException(409, str(exc)) from None

    @router.post("/mode/clear")
    async def clear_mode(body: ClearBody) -> dict[str, Any]:
        try:
            return await host.modes.clear(body.actor, body.reason)
        except ModeRefused as exc:
            raise HTTPException(409, str(exc)) from None

    @router.get("/mode/graph")
    async def mode_graph(
        format: Literal["text", "mermaid"] = Query("text"),
    ) -> dict[str, Any]:
        return {"format": format, "graph": host.modes.graph(format)}

    @router.post("/points/{point_id}/write")
    async def write_point(point_id: str, body: WriteBody) -> dict[str, Any]:
        try:
            outcome = await host.writes.write(
                point_id, body.value, actor=body.actor, priority=body.priority, verify=body.verify
            )
        except UnknownPoint as exc:
            raise HTTPException(404, str(exc)) from None
        except WriteRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return outcome.to_dict()

    @router.post("/points/{point_id}/relinquish")
    async def relinquish_point(point_id: str, body: RelinquishBody) -> dict[str, Any]:
        try:
            outcome = await host.writes.relinquish(
                point_id, actor=body.actor, priority=body.priority
            )
        except UnknownPoint as exc:
            raise HTTPException(404, str(exc)) from None
        except WriteRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return outcome.to_dict()

    @router.get("/events", summary="Recorded events (alarm, mode, operator, write, system)")
    async def events(
        since: str | None = Query(None, description="ISO 8601 or a duration back (2h)"),
        kind: str | None = Query(None, description="kind or kind prefix, e.g. operator"),
        limit: int = Query(200, ge=0, description="the most recent N; 0 = all"),
    ) -> list[dict[str, Any]]:
        buffer = host.buffer
        if buffer is None:
            raise HTTPException(503, "the buffer is not open; no events to read")
        try:
            lower = parse_since(since)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        await buffer.flush()  # what was just emitted is visible
        return await asyncio.to_thread(
            read_events, buffer.path, since=lower, kind=kind, limit=limit
        )

    return router
