"""The recorded events (alarm transitions, mode changes, operator actions, writes): reading
them back, for the local API and for the CLI when no agent is running."""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from outpost.fsm.clock import parse_duration


class EventLog(Protocol):
    """Where events are recorded (``buffer.store.Buffer`` is one): a file, and a way to make
    what was just appended visible to readers of that file."""

    @property
    def path(self) -> Path: ...

    async def flush(self) -> None: ...


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


OPERATOR_PREFIX = "operator."


def kind_matches(kind: str, wanted: str) -> bool:
    """The one naming scheme of event kinds (fsm/README.md, "Event kinds"): a kind is
    ``[operator.]<subject>[.<detail>]``, ``operator.`` exactly when a person acted. ``wanted``
    selects a subject and its details whoever acted (``write`` → ``write`` and
    ``operator.write``; ``schedule`` → ``schedule.load`` …), or every person's act
    (``operator``)."""
    bare = kind.removeprefix(OPERATOR_PREFIX)
    return any(k == wanted or k.startswith(wanted + ".") for k in (kind, bare))


def read_events(
    path: Path,
    *,
    since: datetime | None = None,
    kind: str | None = None,
    limit: int | None = 200,
) -> list[dict[str, Any]]:
    """Events from a buffer file, oldest first: the last ``limit`` (None/0 = all) with
    ``ts >= since`` whose kind ``kind_matches`` ``kind``. Each: ``id, ts, kind, source, actor,
    detail``."""
    from outpost.buffer.inspect import export_events

    out = io.StringIO()
    export_events(path, out, "jsonl", since, None)
    rows = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    if kind:
        rows = [r for r in rows if kind_matches(r["kind"], kind)]
    if limit:
        rows = rows[-limit:]
    return rows


async def recent_events(
    log: EventLog, *, since: datetime | None, kind: str | None, limit: int | None
) -> list[dict[str, Any]]:
    """``read_events`` of a live log, including what was emitted a moment ago."""
    await log.flush()
    return await asyncio.to_thread(read_events, log.path, since=since, kind=kind, limit=limit)
