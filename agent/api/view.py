"""What the local API reads of the running agent: a small read-only view, so the API (and the
status page built on it) never import the runtime. ``core.runtime.Runtime`` provides it."""

from __future__ import annotations

from typing import Any, Protocol

from outpost.agent.control.events import EventLog


class AgentView(Protocol):
    def status(self) -> dict[str, Any]:
        """Gateway, mode, schedule, devices, scheduler, pipeline, alarms and uplink."""
        ...

    async def buffer_stats(self) -> dict[str, Any] | None:
        """Depth and health of the buffer (None while it is not open)."""
        ...

    def knows_device(self, device_id: str) -> bool: ...

    def live_points(self, device: str | None = None) -> list[dict[str, Any]]:
        """Newest value of every point (or one device's): point_id, device, value, quality,
        ts (ISO 8601 UTC), units."""
        ...

    def live_point(self, point_id: str) -> dict[str, Any] | None: ...

    def point_meta(self, point_id: str) -> dict[str, Any] | None:
        """A point's schedule facts the page shows: device, units, description, writable,
        min/max and alarm limits (None: no such point)."""
        ...

    async def point_history(self, point_id: str, since_ts: float, limit: int) -> dict[str, Any]:
        """What the buffer still holds of one point since ``since_ts`` (the newest ``limit``):
        ``{"t": [epoch s], "value": [...], "quality": [codes]}``."""
        ...

    def heartbeat(self) -> dict[str, Any]:
        """The summary the uplink sends: mode, versions, active alarm counts, device health."""
        ...

    @property
    def events(self) -> EventLog | None:
        """The recorded events (None while the buffer is not open)."""
        ...
