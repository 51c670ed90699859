"""Wires the alarm engine, the mode machine and guarded writes into the runtime.

Kept apart from runtime.py so the runtime reads as plumbing and this file as the local-control
policy: what is evaluated per poll, what per tick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from point_schedules.model import Schedule

if TYPE_CHECKING:
    from agent.runtime import Runtime


def setup(runtime: Runtime, schedule: Schedule) -> None:
    """Create alarm engine / modes / writes for the runtime (filled in at fsm integration)."""
    return None


async def run(runtime: Runtime) -> None:
    return None
