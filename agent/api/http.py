"""The local API's web layer: Starlette routes, pydantic at the boundary, FastAPI's wire shape.

The daemon serves its API on a Unix socket all the time, so what the API imports is part of
every agent's base memory: plain Starlette with the request models validated here costs
≈ 7 MB less than FastAPI (its import, and the models it builds per route). The answers keep
the shape the CLI, the status page and the tests read:

- JSON bodies are serialised the way pydantic serialises ``Any`` (what FastAPI does for a
  ``dict[str, Any]`` return annotation: datetimes as ISO 8601, NaN as null …);
- an ``HTTPException`` answers ``{"detail": "..."}`` with its status;
- a body or query string that does not validate answers 422 ``{"detail": [{"loc": ["body",
  "field"], "msg": ..., "type": ...}]}`` (``loc`` starts with ``body`` or ``query``), without
  echoing the input (``control._validation_error``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

M = TypeVar("M", bound=BaseModel)

_ANY: TypeAdapter[Any] = TypeAdapter(Any)
_NO_BODY_STATUS = frozenset({204, 304})


class RequestInvalid(Exception):
    """A body or query string that did not validate; ``errors`` in pydantic's shape, each
    ``loc`` starting with where the value came from."""

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self._errors = list(errors)

    def errors(self) -> list[dict[str, Any]]:
        return self._errors


def json_response(value: Any, status_code: int = 200) -> Response:
    return Response(_ANY.dump_json(value), status_code, media_type="application/json")


def _prefixed(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    return [
        {"type": e["type"], "loc": (where, *e["loc"]), "msg": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


class Body:
    """A request's body as FastAPI reads one body parameter: JSON when the content type is
    JSON or absent; empty = missing; undecodable JSON = 422 at once (before the caller is
    identified); the model's errors only when ``validate`` runs."""

    def __init__(self, data: Any, present: bool) -> None:
        self._data = data
        self._present = present

    @classmethod
    async def read(cls, request: Request) -> Body:
        raw = await request.body()
        if not raw:
            return cls(None, False)
        content_type = request.headers.get("content-type")
        if content_type:
            kind = content_type.partition(";")[0].strip().lower()
            main, _, sub = kind.partition("/")
            if main != "application" or not (sub == "json" or sub.endswith("+json")):
                return cls(raw, True)  # not JSON: the model refuses it below
        try:
            return cls(json.loads(raw), True)
        except json.JSONDecodeError as exc:
            raise RequestInvalid(
                [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}]
            ) from None
        except ValueError:  # not UTF-8
            raise HTTPException(400, "There was an error parsing the body") from None

    def validate(self, model: type[M]) -> M:
        if not self._present:
            raise RequestInvalid([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
        try:
            # from_attributes: what FastAPI passes, so a non-object body gets its error type
            return model.model_validate(self._data, from_attributes=True)
        except ValidationError as exc:
            raise RequestInvalid(_prefixed(exc, "body")) from None


def query(request: Request, model: type[M]) -> M:
    """The query string validated by ``model`` (unknown parameters are ignored, as before)."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestInvalid(_prefixed(exc, "query")) from None


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in _NO_BODY_STATUS:
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


Endpoint = Callable[[Request], Awaitable[Response]]
