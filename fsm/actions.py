"""What a write returns, shared by the agent's write service and the mode machine's failsafe
writes. It lives in ``fsm`` because the mode machine (which may not import ``agent``) consumes
it; ``outpost.agent.control.writes`` produces it and re-exports both names."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from outpost.fsm.clock import iso

WriteResult = Literal["ok", "mismatch", "failed", "unverified", "sent"]


class WriteRefused(Exception):
    """The write was refused before anything was sent; the message says why."""


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """``ok``: written and read back equal; ``mismatch``: read back differs (``read_back``);
    ``failed``: the device refused or did not answer, or the read-back failed; ``sent``:
    written without verification (``verify=False``); ``unverified``: written, but the driver
    cannot read back."""

    point_id: str
    value: float
    result: WriteResult
    actor: str
    ts: float
    read_back: float | None = None
    message: str = ""
    priority: int | None = None
    device: str | None = None
    units: str = ""

    @property
    def ok(self) -> bool:
        return self.result in ("ok", "sent", "unverified")

    def to_dict(self) -> dict[str, Any]:
        read_back = (
            self.read_back if self.read_back is None or math.isfinite(self.read_back) else None
        )
        return {
            "point_id": self.point_id,
            "device": self.device,
            "value": self.value if math.isfinite(self.value) else None,
            "units": self.units,
            "result": self.result,
            "ok": self.ok,
            "read_back": read_back,
            "message": self.message,
            "priority": self.priority,
            "actor": self.actor,
            "ts": iso(self.ts),
        }
