"""Enrollment: turn the one-time enrollment token into the gateway's own token, once.

The gateway token is stored (0600, atomically) in ``token_file``; while it exists the uplink
never enrolls again. A refused enrollment token is retried only at the slowest backoff: it
will not get better by hammering, an operator must act.
"""

from __future__ import annotations

import asyncio

import httpx
import structlog

from outpost.cloud.uplink.session import Session, UplinkAuthError, describe, detail
from outpost.cloud.uplink.support import read_token, retry_backoff, write_token
from outpost.cloud.wire import EnrollRequest, EnrollResponse

log = structlog.get_logger(__name__)


async def ensure_token(session: Session, client: httpx.AsyncClient) -> str:
    """The gateway token: from ``token_file``, or by enrolling (retried until it works)."""
    cfg = session.config
    path = session.token_path
    backoff = retry_backoff(cfg.backoff_min, cfg.backoff_max)
    warned = False
    while True:
        token = await asyncio.to_thread(read_token, path)
        if token is not None:
            return token
        enrollment = cfg.resolve_enrollment_token()
        if enrollment is None:
            if not warned:
                log.error(
                    "uplink.no_credentials",
                    token_file=str(path),
                    hint="set [cloud] enrollment_token (or _env/_file) from "
                    "`outpost cloud enroll GATEWAY_ID`, or place the gateway token "
                    "in token_file",
                )
                warned = True
            session.error("no gateway token and no enrollment token configured")
            await asyncio.sleep(cfg.backoff_max)
            continue
        try:
            token = await enroll(session, client, enrollment)
        except (httpx.HTTPError, UplinkAuthError, ValueError) as exc:
            session.error(f"enrollment failed: {describe(exc)}")
            delay = backoff.next_delay()
            if isinstance(exc, UplinkAuthError):
                delay = max(delay, cfg.backoff_max)
            log.error("uplink.enroll_failed", error=describe(exc), retry_in_s=round(delay, 1))
            await session.sleep_retry(delay)
            continue
        await asyncio.to_thread(write_token, path, token)
        log.info("uplink.enrolled", gateway=session.gateway_id, token_file=str(path))
        return token


async def enroll(session: Session, client: httpx.AsyncClient, enrollment_token: str) -> str:
    req = EnrollRequest(gateway_id=session.gateway_id, enrollment_token=enrollment_token)
    resp = await client.post(
        "/api/v1/enroll",
        content=req.model_dump_json(),
        headers={"Content-Type": "application/json"},
    )
    if resp.status_code in (400, 401, 403, 404, 409, 410, 422):
        raise UplinkAuthError(f"HTTP {resp.status_code}: {detail(resp)}")
    if resp.status_code >= 300:
        raise ValueError(f"HTTP {resp.status_code}: {detail(resp)}")
    answer = EnrollResponse.model_validate_json(resp.content)
    if answer.gateway_id != session.gateway_id:
        raise ValueError(f"receiver enrolled {answer.gateway_id!r}, not {session.gateway_id!r}")
    return answer.gateway_token
