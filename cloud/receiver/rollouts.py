"""Schedule rollouts: canary first, verified, then the rest in waves; halt at the first failure.

A rollout is rows, not a task: starting one queues ``schedule_apply`` commands for the
canaries; every later step happens inside the transaction that finalises a command
(``CommandStore.on_final`` -> :meth:`RolloutEngine.on_final`). So a receiver restart between
two steps loses nothing, and any receiver behind a load balancer may take the next step.

Each step is a ``rollout_steps`` row (who started it, each gateway's old and new schedule
version, every outcome, the halt or abort and why).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from outpost.cloud.wire_commands import (
    ID_PATTERN,
    ScheduleApplyArgs,
    ScheduleApplyCommand,
    Verification,
)
from outpost.point_schedules.loader import schedule_version

if TYPE_CHECKING:
    from .command_store import CommandStore, Finalized

log = structlog.get_logger(__name__)

_FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.csv$"


class RolloutError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(
        min_length=1, max_length=64, description="schedule file name (x.csv) -> CSV text"
    )
    gateways: list[str] | Literal["all"] = Field(
        description='target gateway ids, or "all" enrolled and not revoked gateways'
    )
    canary: list[str] = Field(min_length=1, description="applied and verified first")
    verification: Verification = Field(default_factory=Verification)
    wave_size: int = Field(default=10, ge=1, le=1000, description="gateways at a time after")
    expires_in_s: float = Field(
        default=900.0, gt=0, le=7 * 86_400, description="each gateway's command lifetime"
    )

    @field_validator("files")
    @classmethod
    def _names(cls, files: dict[str, str]) -> dict[str, str]:
        import re

        for name in files:
            if not re.match(_FILE_NAME, name):
                raise ValueError(f"file name {name!r}: expected a plain name ending in .csv")
        return files

    @field_validator("canary")
    @classmethod
    def _ids(cls, ids: list[str]) -> list[str]:
        import re

        for gw in ids:
            if not re.match(ID_PATTERN, gw):
                raise ValueError(f"invalid gateway id {gw!r}")
        return ids


class TargetView(BaseModel):
    gateway_id: str
    position: int
    canary: bool
    state: str
    command_id: int | None
    old_version: str | None
    new_version: str | None
    outcome: dict[str, Any] | None


class StepView(BaseModel):
    ts: datetime
    gateway_id: str | None
    step: str
    actor: str
    detail: dict[str, Any]


class RolloutView(BaseModel):
    id: int
    created_at: datetime
    created_by: str
    state: Literal["running", "succeeded", "failed", "aborted"]
    version: str
    files: list[str]
    verification: Verification
    wave_size: int
    finished_at: datetime | None
    reason: str
    targets: list[TargetView]
    steps: list[StepView]


class RolloutEngine:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.commands: CommandStore | None = None  # set by the router (they refer to each other)

    # --- start / abort ----------------------------------------------------------------------

    async def start(
        self, req: RolloutRequest, actor: str, *, sites: Sequence[str] | None = None
    ) -> RolloutView:
        """Queue the canaries' commands. ``sites``: the caller's scope (None = all)."""
        assert self.commands is not None
        version = schedule_version([text.encode("utf-8") for text in req.files.values()])
        async with self.pool.acquire() as conn, conn.transaction():
            known = {
                r["id"]: r
                for r in await conn.fetch(
                    """SELECT id, enrolled_at, revoked_at,
                              last_heartbeat->>'schedule_version' AS version
                       FROM gateways
                       WHERE $1::text[] IS NULL OR site = ANY($1::text[])""",
                    None if sites is None else list(sites),
                )
            }
            usable = sorted(
                gw for gw, r in known.items() if r["enrolled_at"] and not r["revoked_at"]
            )
            targets = usable if req.gateways == "all" else list(dict.fromkeys(req.gateways))
            order = list(dict.fromkeys([*req.canary, *targets]))
            missing = [gw for gw in order if gw not in usable]
            if missing:
                raise RolloutError(
                    404, f"not enrolled, revoked or unknown gateway(s): {', '.join(missing)}"
                )
            rid = await conn.fetchval(
                """INSERT INTO rollouts (created_by, version, files, verification, wave_size,
                                         command_lifetime_s)
                   VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6) RETURNING id""",
                actor,
                version,
                json.dumps(req.files),
                req.verification.model_dump_json(),
                req.wave_size,
                req.expires_in_s,
            )
            canaries = set(req.canary)
            await conn.executemany(
                """INSERT INTO rollout_targets (rollout_id, gateway_id, position, canary,
                                                old_version)
                   VALUES ($1, $2, $3, $4, $5)""",
                [(rid, gw, i, gw in canaries, known[gw]["version"]) for i, gw in enumerate(order)],
            )
            await _step(
                conn,
                rid,
                None,
                "started",
                actor,
                {
                    "version": version,
                    "files": sorted(req.files),
                    "canary": req.canary,
                    "gateways": order,
                    "verification": req.verification.model_dump(),
                },
            )
            await self._queue(conn, rid, [gw for gw in order if gw in canaries], actor, req)
        log.info("rollout.started", id=rid, version=version, gateways=len(order), actor=actor)
        found = await self.get(rid)
        assert found is not None
        return found

    async def _queue(
        self,
        conn: asyncpg.Connection,
        rid: int,
        gateways: Sequence[str],
        actor: str,
        req: RolloutRequest | None = None,
    ) -> None:
        assert self.commands is not None
        if req is None:
            row = await conn.fetchrow(
                "SELECT files, verification, command_lifetime_s FROM rollouts WHERE id = $1", rid
            )
            assert row is not None
            files = json.loads(row["files"])
            verification = Verification.model_validate_json(row["verification"])
            lifetime = row["command_lifetime_s"]
        else:
            files, verification, lifetime = req.files, req.verification, req.expires_in_s
        spec = ScheduleApplyCommand(
            kind="schedule_apply",
            args=ScheduleApplyArgs(files=files, verification=verification, rollout_id=rid),
        )
        for gw in gateways:
            cmd = await self.commands.create(
                gw, spec, actor, expires_in_s=lifetime, rollout_id=rid, conn=conn
            )
            await conn.execute(
                """UPDATE rollout_targets SET state = 'applying', command_id = $3,
                          updated_at = now()
                   WHERE rollout_id = $1 AND gateway_id = $2""",
                rid,
                gw,
                cmd.id,
            )
            await _step(conn, rid, gw, "queued", actor, {"command_id": cmd.id})

    async def abort(self, rid: int, actor: str) -> RolloutView:
        async with self.pool.acquire() as conn, conn.transaction():
            state = await conn.fetchval("SELECT state FROM rollouts WHERE id = $1 FOR UPDATE", rid)
            if state is None:
                raise RolloutError(404, f"no rollout {rid}")
            if state != "running":
                raise RolloutError(409, f"rollout {rid} is {state}; only a running one aborts")
            withdrawn = await conn.fetch(
                """UPDATE commands SET state = 'expired', finished_at = now(),
                          result = jsonb_build_object('status', 'expired',
                                                      'message', 'withdrawn: rollout aborted')
                   WHERE rollout_id = $1 AND state = 'queued' RETURNING id, gateway_id""",
                rid,
            )
            gone = [r["gateway_id"] for r in withdrawn]
            await conn.execute(
                """UPDATE rollout_targets SET state = 'skipped', updated_at = now()
                   WHERE rollout_id = $1
                     AND (state = 'pending' OR (state = 'applying' AND gateway_id = ANY($2)))""",
                rid,
                gone,
            )
            await self._finish(conn, rid, "aborted", f"aborted by {actor}")
            await _step(conn, rid, None, "aborted", actor, {"withdrawn": gone})
        log.info("rollout.aborted", id=rid, actor=actor)
        found = await self.get(rid)
        assert found is not None
        return found

    # --- progress (inside the transaction that finalised a command) -------------------------

    async def on_final(self, conn: asyncpg.Connection, done: Sequence[Finalized]) -> None:
        for cmd in done:
            if cmd.rollout_id is None or cmd.kind != "schedule_apply":
                continue
            await self._advance(conn, cmd)

    async def _advance(self, conn: asyncpg.Connection, cmd: Finalized) -> None:
        rid = cmd.rollout_id
        assert rid is not None
        row = await conn.fetchrow(
            "SELECT state, created_by FROM rollouts WHERE id = $1 FOR UPDATE", rid
        )
        if row is None:
            return
        result = cmd.result or {}
        detail = result.get("detail") or {}
        ok = cmd.state == "succeeded"
        await conn.execute(
            """UPDATE rollout_targets SET state = $3, outcome = $4::jsonb, new_version = $5,
                      updated_at = now()
               WHERE rollout_id = $1 AND command_id = $2""",
            rid,
            cmd.id,
            "succeeded" if ok else "failed",
            json.dumps(result),
            detail.get("version"),
        )
        await _step(
            conn,
            rid,
            cmd.gateway_id,
            "succeeded" if ok else "failed",
            "agent",
            {
                "command_id": cmd.id,
                "state": cmd.state,
                "outcome": detail.get("outcome"),
                "message": result.get("message", ""),
                "previous_version": detail.get("previous_version"),
                "version": detail.get("version"),
            },
        )
        if row["state"] != "running":
            return  # aborted meanwhile: record the outcome, queue nothing
        if not ok:
            await conn.execute(
                """UPDATE rollout_targets SET state = 'skipped', updated_at = now()
                   WHERE rollout_id = $1 AND state = 'pending'""",
                rid,
            )
            reason = f"{cmd.gateway_id}: {cmd.state}: {result.get('message', '')}".strip()
            await self._finish(conn, rid, "failed", reason)
            await _step(conn, rid, cmd.gateway_id, "halted", "receiver", {"reason": reason})
            log.warning("rollout.halted", id=rid, gateway=cmd.gateway_id, reason=reason)
            return
        applying = await conn.fetchval(
            "SELECT count(*) FROM rollout_targets WHERE rollout_id = $1 AND state = 'applying'",
            rid,
        )
        if applying:
            return  # the wave is not complete yet
        wave_size = await conn.fetchval("SELECT wave_size FROM rollouts WHERE id = $1", rid)
        nxt = await conn.fetch(
            """SELECT gateway_id FROM rollout_targets WHERE rollout_id = $1 AND state = 'pending'
               ORDER BY position LIMIT $2""",
            rid,
            wave_size,
        )
        if not nxt:
            await self._finish(conn, rid, "succeeded", "")
            await _step(conn, rid, None, "completed", "receiver", {})
            log.info("rollout.completed", id=rid)
            return
        await self._queue(conn, rid, [r["gateway_id"] for r in nxt], row["created_by"])

    async def _finish(self, conn: asyncpg.Connection, rid: int, state: str, reason: str) -> None:
        await conn.execute(
            "UPDATE rollouts SET state = $2, reason = $3, finished_at = now() WHERE id = $1",
            rid,
            state,
            reason,
        )

    # --- reads ------------------------------------------------------------------------------

    async def get(self, rid: int) -> RolloutView | None:
        if self.commands is not None:  # a canary that never came for its command
            await self.commands.expire_due(None)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM rollouts WHERE id = $1", rid)
            if row is None:
                return None
            targets = await conn.fetch(
                "SELECT * FROM rollout_targets WHERE rollout_id = $1 ORDER BY position", rid
            )
            steps = await conn.fetch(
                "SELECT * FROM rollout_steps WHERE rollout_id = $1 ORDER BY id", rid
            )
        return _view(row, targets, steps)

    async def list(self, limit: int) -> list[RolloutView]:
        ids = await self.pool.fetch("SELECT id FROM rollouts ORDER BY id DESC LIMIT $1", limit)
        out = []
        for r in ids:
            found = await self.get(r["id"])
            if found is not None:
                out.append(found)
        return out


async def _step(
    conn: asyncpg.Connection,
    rid: int | None,
    gateway_id: str | None,
    step: str,
    actor: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        """INSERT INTO rollout_steps (rollout_id, gateway_id, step, actor, detail)
           VALUES ($1, $2, $3, $4, $5::jsonb)""",
        rid,
        gateway_id,
        step,
        actor,
        json.dumps(detail),
    )


def _view(
    row: asyncpg.Record, targets: Sequence[asyncpg.Record], steps: Sequence[asyncpg.Record]
) -> RolloutView:
    return RolloutView(
        id=row["id"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        state=row["state"],
        version=row["version"],
        files=sorted(json.loads(row["files"])),
        verification=Verification.model_validate_json(row["verification"]),
        wave_size=row["wave_size"],
        finished_at=row["finished_at"],
        reason=row["reason"],
        targets=[
            TargetView(
                gateway_id=t["gateway_id"],
                position=t["position"],
                canary=t["canary"],
                state=t["state"],
                command_id=t["command_id"],
                old_version=t["old_version"],
                new_version=t["new_version"],
                outcome=None if t["outcome"] is None else json.loads(t["outcome"]),
            )
            for t in targets
        ],
        steps=[
            StepView(
                ts=s["ts"],
                gateway_id=s["gateway_id"],
                step=s["step"],
                actor=s["actor"],
                detail=json.loads(s["detail"]),
            )
            for s in steps
        ],
    )
