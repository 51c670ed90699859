"""Schedule routes of the daemon's API: the running schedule, probe, load, reload.

- ``GET /schedule``: version and the text of the files in force (``outpost schedule load``
  diffs against it).
- ``POST /schedule/probe``: read every point of the given files once through the agent's own
  drivers (its connections); the answer is NDJSON, ``{"done": n, "total": N}`` lines while it
  runs, then ``{"report": {...}}`` (``drivers.probe.ProbeReport``).
- ``POST /schedule/load``: validate, install and verify the given files (the command
  channel's ``schedule_apply`` path); the answer is the outcome, refused or not.
- ``POST /reload`` (in ``app``) awaits the reload through ``reload_schedule`` and answers 409
  with the loader's errors when the files are rejected.

Who acts is the socket's peer user (``server.peer_user``), never the body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import PurePosixPath
from typing import Any, Protocol

from pydantic import Field, field_validator
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from outpost.agent.api.control import _Body
from outpost.agent.api.http import Body, json_response
from outpost.agent.api.server import peer_user

MAX_FILES = 64


class ScheduleRejected(Exception):
    """The files do not load; ``errors`` are the loader's messages."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors[0] if errors else "schedule rejected")
        self.errors = errors


class ScheduleService(Protocol):
    """What the routes need of the running agent (``agent.core.runtime.Runtime``)."""

    def running_schedule(self) -> dict[str, Any]: ...

    async def reload_schedule(self, actor: str) -> dict[str, Any]:
        """Re-read the files in force; raises ``ScheduleRejected``."""
        ...

    async def load_schedule(
        self, files: dict[str, str], *, actor: str, within_s: float
    ) -> dict[str, Any]: ...

    async def probe_schedule(
        self, files: dict[str, str], *, device: str | None, progress: Callable[[int], None]
    ) -> dict[str, Any]:
        """Raises ``ScheduleRejected`` when the files do not load."""
        ...


class ProbeBody(_Body):
    files: dict[str, str] = Field(min_length=1, max_length=MAX_FILES)
    device: str | None = None


class LoadBody(_Body):
    files: dict[str, str] = Field(min_length=1, max_length=MAX_FILES)
    within_s: float = Field(60.0, gt=0, le=600, description="the verification's time limit")

    @field_validator("files")
    @classmethod
    def _storable_names(cls, files: dict[str, str]) -> dict[str, str]:
        # the agent stores each file under its base name: it must be one, and only once
        seen: set[str] = set()
        for name in files:
            base = PurePosixPath(name).name
            if base in ("", ".", ".."):
                raise ValueError(f"{name!r} does not end in a file name")
            if base in seen:
                raise ValueError(f"two files are named {base!r}; file names must differ")
            seen.add(base)
        return files


def schedule_routes(
    service: ScheduleService, *, actor_of: Callable[[Request], str] = peer_user
) -> list[Route]:
    async def running(request: Request) -> Response:
        return json_response(service.running_schedule())

    async def load(request: Request) -> Response:
        raw = await Body.read(request)
        actor = actor_of(request)
        body = raw.validate(LoadBody)
        return json_response(
            await service.load_schedule(body.files, actor=actor, within_s=body.within_s)
        )

    async def probe(request: Request) -> Response:
        body = (await Body.read(request)).validate(ProbeBody)
        return StreamingResponse(_probe_stream(service, body), media_type="application/x-ndjson")

    return [
        Route("/schedule", running, methods=["GET"]),
        Route("/schedule/load", load, methods=["POST"]),
        Route("/schedule/probe", probe, methods=["POST"]),
    ]


async def _probe_stream(service: ScheduleService, body: ProbeBody) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.create_task(
        service.probe_schedule(body.files, device=body.device, progress=queue.put_nowait)
    )
    done = 0
    try:
        while not task.done():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                done += getter.result()
                yield (json.dumps({"done": done}) + "\n").encode()
            else:
                getter.cancel()
        try:
            report = task.result()
        except ScheduleRejected as exc:
            yield (json.dumps({"rejected": exc.errors}) + "\n").encode()
            return
        yield (json.dumps({"report": report}) + "\n").encode()
    finally:
        if not task.done():
            task.cancel()
