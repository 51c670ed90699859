"""The receiver's OpenAPI document is accurate (issue 13 item 4): schemathesis 4 (CLI, in a
child process) fuzzes every operation of a real receiver on real PostgreSQL, once with a
gateway token and once with the admin token. The bar: no server error, no response that
contradicts the document (status code, content type, schema), and no invalid input accepted.

Bounded: a few examples per operation, no shrinking, a fixed seed, a time budget per run.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    )
)


async def schemathesis(url: str, token: str, report: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{url}/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "8",
        "--seed",
        "13",
        "--no-shrink",
        "--workers",
        "1",  # hypothesis' lambda descriptions are not thread-safe on Python 3.11
        "--max-time",
        "35",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def _summary(out: str) -> str:
    """The failures part of the report, without the megabyte-long reproduction URLs."""
    start = out.find("=== FAILURES")
    if start < 0:
        start = out.find("=== ERRORS")
    lines = out[max(start, 0) :].splitlines()
    return "\n".join(line[:300] for line in lines)[-8000:]


async def test_schemathesis_gateway_and_admin_token(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    token = await receiver.enroll("gw-fuzz")
    # side by side against one receiver: the two runs share the machine's two cores
    (gw_code, gw_out), (admin_code, admin_out) = await asyncio.gather(
        schemathesis(receiver.url, token, tmp_path / "gw.ndjson"),
        schemathesis(receiver.url, receiver.admin_token, tmp_path / "admin.ndjson"),
    )
    assert gw_code == 0, _summary(gw_out)
    assert admin_code == 0, _summary(admin_out)
    for out in (gw_out, admin_out):
        assert "43 selected" in out or "selected" in out
        assert " passed" in out


async def test_documented_errors_and_iso_times(receiver: ReceiverHandle) -> None:
    """The cases the audit named, asserted directly (they must not depend on the fuzzer's
    luck): epoch numbers are not times, from > to is the documented error shape, and the
    shared layers' answers are in the document."""
    async with httpx.AsyncClient(base_url=receiver.url, headers=receiver.admin_headers) as c:
        for query in ({"to": "0.5"}, {"from": "1700000000"}, {"to": "1e3"}):
            r = await c.get("/api/v1/events", params=query)
            assert r.status_code == 422, (query, r.text)
            assert "ISO 8601" in r.text
        ok = await c.get("/api/v1/events", params={"to": "2025-11-23T12:00:00Z"})
        assert ok.status_code == 200
        r = await c.get(
            "/api/v1/events",
            params={"from": "2025-11-23T12:00:00Z", "to": "2025-11-23T11:00:00Z"},
        )
        assert r.status_code == 422 and isinstance(r.json()["detail"], str)
        doc = (await c.get("/openapi.json")).json()
    paths = doc["paths"]
    for path, method in (
        ("/api/v1/gateways", "get"),
        ("/api/v1/users", "post"),
        ("/api/v1/gateways/{gateway_id}/commands", "post"),
    ):
        assert {"401", "403"} <= set(paths[path][method]["responses"]), path
    for path in ("/api/v1/ingest", "/api/v1/gateways/{gateway_id}/heartbeat"):
        assert {"401", "403", "413", "415"} <= set(paths[path]["post"]["responses"]), path
    assert "401" not in paths["/healthz"]["get"]["responses"]
    assert "404" in paths["/api/v1/gateways/{gateway_id}/latest"]["get"]["responses"]
