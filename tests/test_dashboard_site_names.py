"""A site is the free text of `[agent] site` — the demo's is "Demo data hall": its floor view
opens, links to it are URL-encoded, and a user can be scoped to it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

from outpost.cloud.wire import Heartbeat, encode_body

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

SITE = "Demo data hall"


async def test_floor_view_and_scoping_for_a_site_name_with_spaces(
    receiver: ReceiverHandle,
) -> None:
    token = await receiver.enroll("gw-1")
    hb = Heartbeat(
        gateway_id="gw-1",
        ts=int(time.time() * 1000),
        site=SITE,
        mode="normal",
        agent_version="0.1.0",
    )
    body, headers = encode_body(hb)
    async with httpx.AsyncClient(base_url=receiver.url, timeout=30) as c:
        r = await c.post(
            "/api/v1/gateways/gw-1/heartbeat",
            content=body,
            headers=headers | {"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        admin = receiver.admin_headers
        r = await c.get(f"/sites/{quote(SITE)}/floor", headers=admin)
        assert r.status_code == 200, r.text[:300]
        assert SITE in r.text
        r = await c.get(f"/api/v1/dashboard/sites/{quote(SITE)}/floor", headers=admin)
        assert r.status_code == 200, r.text[:300]
        r = await c.get("/gateways/gw-1", headers=admin)
        assert r.status_code == 200
        assert f'href="/sites/{quote(SITE)}/floor"' in r.text
        # a user scoped to that site sees its gateway
        r = await c.post(
            "/api/v1/users",
            headers=admin,
            json={"name": "sam", "role": "viewer", "password": "correct horse", "sites": [SITE]},
        )
        assert r.status_code in (200, 201), r.text
        r = await c.post("/api/v1/users/sam/tokens", headers=admin, json={"label": "test"})
        assert r.status_code in (200, 201), r.text
        sam = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await c.get("/api/v1/gateways", headers=sam)
        assert [g["gateway_id"] for g in r.json()] == ["gw-1"]
        # a slash or a control character is not a site
        r = await c.get("/sites/a%2Fb/floor", headers=admin)
        assert r.status_code in (404, 422)
