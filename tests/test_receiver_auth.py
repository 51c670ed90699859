"""Dashboard users against the real receiver and a real PostgreSQL, over real HTTP: login and
logout, the session cookie, failed-login throttling, roles, CSRF, site scope, personal tokens
and the audit rows each of these leaves."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from tests.receiver_fixtures import ADMIN_TOKEN, PASSWORD

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverFactory, ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

JSON = {"Accept": "application/json"}


def client(rcv: ReceiverHandle, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=rcv.url, timeout=30, **kw)  # type: ignore[arg-type]


async def test_login_session_cookie_and_logout(receiver: ReceiverHandle) -> None:
    await receiver.add_user("olga", "operator")
    async with client(receiver) as c:
        assert (await c.get("/api/v1/me")).status_code == 401
        r = await c.post("/login", data={"username": "olga", "password": PASSWORD}, headers=JSON)
        assert r.status_code == 200
        body = r.json()
        assert (body["name"], body["role"], body["sites"]) == ("olga", "operator", None)
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("outpost_session=")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
        me = (await c.get("/api/v1/me")).json()
        assert me == {
            "name": "olga",
            "role": "operator",
            "sites": None,
            "auth_kind": "session",
            "csrf_token": body["csrf_token"],
        }
        # logout is state-changing: without the CSRF token it is refused and changes nothing
        assert (await c.post("/logout", headers=JSON)).status_code == 403
        assert (await c.get("/api/v1/me")).status_code == 200
        # logging in again replaces the browser's session (the old cookie is dead)
        old_cookie = c.cookies["outpost_session"]
        csrf = await receiver.login(c, "olga")
        assert c.cookies["outpost_session"] != old_cookie and await receiver.count("sessions") == 1
        out = await c.post("/logout", headers={**JSON, "X-CSRF-Token": csrf})
        assert out.status_code == 200
        assert (await c.get("/api/v1/me")).status_code == 401
    # the cookie value is a secret: only its hash is stored
    sid = cookie.split(";")[0].split("=", 1)[1]
    stored = [r["id_hash"] for r in await receiver.fetch("SELECT id_hash FROM sessions")]
    assert sid not in stored
    rows = [(r["actor"], r["action"], r["outcome"]) for r in await receiver.audit_rows()]
    assert rows == [
        ("olga", "login", "ok"),
        ("olga", "csrf_refused", "denied"),
        ("olga", "login", "ok"),
        ("olga", "logout", "ok"),
    ]
    assert all(r["address"] == "127.0.0.1" for r in await receiver.audit_rows())


async def test_browser_form_login_redirects_and_secure_behind_https(
    receiver: ReceiverHandle,
) -> None:
    await receiver.add_user("vic", "viewer")
    async with client(receiver) as c:
        page = await c.get("/login")
        assert page.status_code == 200 and 'name="username"' in page.text
        r = await c.post(
            "/login",
            data={"username": "vic", "password": PASSWORD, "next": "/alarms?site=a"},
            headers={"Accept": "text/html", "X-Forwarded-Proto": "https"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/alarms?site=a"
        assert "Secure" in r.headers["set-cookie"]
        # never an open redirect
        r = await c.post(
            "/login",
            data={"username": "vic", "password": PASSWORD, "next": "//evil.example/x"},
            headers={"Accept": "text/html"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/"
        bad = await c.post("/login", data={"username": "vic", "password": "nope-nope"}, headers={})
        assert bad.status_code == 401 and "wrong user name or password" in bad.text


async def test_wrong_password_refused_then_rate_limited(
    receiver_factory: ReceiverFactory,
) -> None:
    rcv = await receiver_factory(login_max_per_user=3, login_max_per_ip=5)
    await rcv.add_user("ann", "admin")
    await rcv.add_user("bob", "viewer")
    await rcv.add_user("cat", "viewer")
    async with client(rcv) as c:

        async def login(name: str, pw: str) -> int:
            r = await c.post("/login", data={"username": name, "password": pw}, headers=JSON)
            return r.status_code

        assert [await login("ann", "wrong-password") for _ in range(3)] == [401, 401, 401]
        # locked per user: even the right password is refused, without being checked
        assert await login("ann", PASSWORD) == 429
        assert (await c.get("/api/v1/me")).status_code == 401
        # per address: two more failures (another user) reach 5 for 127.0.0.1
        assert await login("bob", PASSWORD) == 200
        assert [await login("bob", "wrong-password") for _ in range(2)] == [401, 401]
        assert await login("cat", PASSWORD) == 429
    outcomes = [(r["actor"], r["outcome"]) for r in await rcv.audit_rows("login")]
    assert outcomes == [
        ("ann", "failed"),
        ("ann", "failed"),
        ("ann", "failed"),
        ("ann", "rate_limited"),
        ("bob", "ok"),
        ("bob", "failed"),
        ("bob", "failed"),
        ("cat", "rate_limited"),
    ]
    # an unknown user name is refused the same way (and counted)
    rows = await rcv.fetch("SELECT key FROM login_failures WHERE key LIKE 'user:%'")
    assert sorted({r["key"] for r in rows}) == ["user:ann", "user:bob"]


async def test_parallel_guesses_cannot_pass_the_limit(receiver_factory: ReceiverFactory) -> None:
    rcv = await receiver_factory(login_max_per_user=3, login_max_per_ip=100)
    await rcv.add_user("ann", "admin")
    async with client(rcv) as c:
        replies = await asyncio.gather(
            *(
                c.post("/login", data={"username": "ann", "password": f"guess-{i}"}, headers=JSON)
                for i in range(10)
            )
        )
    assert sorted(r.status_code for r in replies) == [401] * 3 + [429] * 7
    assert all(r.headers.get("retry-after") == "900" for r in replies if r.status_code == 429)


async def test_roles_enforced_and_csrf_required(receiver: ReceiverHandle) -> None:
    await receiver.add_user("vic", "viewer")
    await receiver.add_user("olga", "operator")
    await receiver.add_user("ann", "admin")
    new_user = {"name": "dan", "role": "viewer", "password": "another password"}
    async with client(receiver) as viewer, client(receiver) as op, client(receiver) as admin:
        v_csrf = await receiver.login(viewer, "vic")
        o_csrf = await receiver.login(op, "olga")
        a_csrf = await receiver.login(admin, "ann")
        # a viewer reads...
        assert (await viewer.get("/api/v1/gateways")).status_code == 200
        # ...but a forged state-changing POST (even with a valid CSRF token) is 403
        r = await viewer.post(
            "/api/v1/gateways/gw-1/enrollment-tokens", json={}, headers={"X-CSRF-Token": v_csrf}
        )
        assert r.status_code == 403 and "role admin required" in r.json()["detail"]
        r = await op.post("/api/v1/users", json=new_user, headers={"X-CSRF-Token": o_csrf})
        assert r.status_code == 403
        assert (await op.get("/api/v1/audit")).status_code == 403
        # an admin session without the CSRF token: refused, nothing created
        r = await admin.post("/api/v1/users", json=new_user)
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = await admin.post("/api/v1/users", json=new_user, headers={"X-CSRF-Token": "x" * 43})
        assert r.status_code == 403
        assert await receiver.count("users") == 3
        r = await admin.post("/api/v1/users", json=new_user, headers={"X-CSRF-Token": a_csrf})
        assert r.status_code == 201 and r.json()["role"] == "viewer"
        # another session's token does not work either
        r = await admin.delete("/api/v1/users/dan", headers={"X-CSRF-Token": o_csrf})
        assert r.status_code == 403
        r = await admin.delete("/api/v1/users/dan", headers={"X-CSRF-Token": a_csrf})
        assert r.status_code == 204
    denied = [(r["actor"], r["target"]) for r in await receiver.audit_rows("denied")]
    assert denied == [
        ("vic", "POST /api/v1/gateways/gw-1/enrollment-tokens"),
        ("olga", "POST /api/v1/users"),
        ("olga", "GET /api/v1/audit"),
    ]
    assert len(await receiver.audit_rows("csrf_refused")) == 3
    changes = [(r["actor"], r["action"], r["target"]) for r in await receiver.audit_rows()]
    assert ("ann", "user.add", "dan") in changes and ("ann", "user.remove", "dan") in changes


async def test_csrf_form_field_and_bearer_exemption(receiver: ReceiverHandle) -> None:
    await receiver.add_user("ann", "admin")
    async with client(receiver) as c:
        csrf = await receiver.login(c, "ann")
        # a form POST carries the token in the csrf_token field
        r = await c.post("/logout", data={"csrf_token": csrf}, headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert (await c.get("/api/v1/me")).status_code == 401
    # bearer requests carry no ambient credential: no CSRF token needed
    async with client(receiver, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        r = await c.post(
            "/api/v1/users", json={"name": "eve", "role": "viewer", "password": "long enough"}
        )
        assert r.status_code == 201
        assert (await c.get("/api/v1/me")).json()["auth_kind"] == "admin_token"
    rows = await receiver.audit_rows("user.add")
    assert [(r["actor"], r["auth_kind"]) for r in rows] == [("admin-token", "admin_token")]


async def test_sessions_shared_by_receivers_on_one_database(
    receiver_factory: ReceiverFactory,
) -> None:
    first = await receiver_factory()
    second = await receiver_factory(dsn=first.dsn)
    await first.add_user("olga", "operator")
    async with client(first) as c:
        csrf = await first.login(c, "olga")
        cookie = c.cookies["outpost_session"]
    async with client(second, cookies={"outpost_session": cookie}) as c:
        assert (await c.get("/api/v1/me")).json()["name"] == "olga"
        out = await c.post("/logout", headers={**JSON, "X-CSRF-Token": csrf})
        assert out.status_code == 200
    async with client(first, cookies={"outpost_session": cookie}) as c:
        assert (await c.get("/api/v1/me")).status_code == 401


async def test_site_scoped_user_sees_only_their_sites(receiver: ReceiverHandle) -> None:
    async with client(receiver, headers=receiver.admin_headers) as admin:
        for gw, site in (("gw-a", "site-a"), ("gw-b", "site-b")):
            r = await admin.post(f"/api/v1/gateways/{gw}/enrollment-tokens", json={"site": site})
            assert r.status_code == 200
        assert (await admin.put("/api/v1/gateways/gw-c/site", json={"site": None})).is_success
    await receiver.add_user("sam", "operator", sites=["site-a"])
    async with client(receiver) as c:
        await receiver.login(c, "sam")
        gws = (await c.get("/api/v1/gateways")).json()
        assert [(g["gateway_id"], g["site"]) for g in gws] == [("gw-a", "site-a")]
        assert (await c.get("/api/v1/gateways/gw-a")).status_code == 200
        for path in (
            "/api/v1/gateways/gw-b",
            "/api/v1/gateways/gw-b/points",
            "/api/v1/gateways/gw-b/latest",
            "/api/v1/gateways/gw-b/points/x.t/readings",
            "/api/v1/gateways/gw-b/readings?points=x.t",
            "/api/v1/gateways/gw-c",  # no site: invisible to a scoped user
        ):
            r = await c.get(path)
            assert r.status_code == 404, path
            assert r.json()["detail"].startswith("unknown gateway")
        assert (await c.get("/api/v1/events?gateway=gw-b")).json()["events"] == []
    sites = [
        (r["target"], r["detail"])
        for r in await receiver.audit_rows()
        if r["action"] in ("gateway.enrollment_token", "gateway.site")
    ]
    assert [t for t, _ in sites] == ["gw-a", "gw-b", "gw-c"]


async def test_personal_tokens_work_and_revoke(receiver: ReceiverHandle) -> None:
    await receiver.add_user("olga", "operator")
    await receiver.add_user("vic", "viewer")
    async with client(receiver) as c:
        csrf = await receiver.login(c, "olga")
        r = await c.post(
            "/api/v1/users/olga/tokens", json={"label": "script"}, headers={"X-CSRF-Token": csrf}
        )
        assert r.status_code == 201
        made = r.json()
        token, token_id = made["token"], made["id"]
        assert token.startswith("opu_") and made["label"] == "script"
        # not someone else's tokens
        r = await c.post("/api/v1/users/vic/tokens", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403
        listed = (await c.get("/api/v1/users/olga/tokens")).json()
        assert [t["id"] for t in listed] == [token_id] and "token" not in listed[0]
    stored = await receiver.fetch("SELECT token_hash FROM user_tokens")
    assert all(token not in r["token_hash"] for r in stored)
    bearer = {"Authorization": f"Bearer {token}"}
    async with client(receiver, headers=bearer) as c:
        me = (await c.get("/api/v1/me")).json()
        assert (me["name"], me["role"], me["auth_kind"]) == ("olga", "operator", "token")
        assert (await c.get("/api/v1/users")).status_code == 403  # operator, not admin
        r = await c.delete(f"/api/v1/users/olga/tokens/{token_id}")
        assert r.status_code == 204
        r = await c.get("/api/v1/me")
        assert r.status_code == 401 and r.json()["detail"] == "unknown or revoked token"
    async with client(receiver, headers={"Authorization": "Bearer opu_made-up"}) as c:
        assert (await c.get("/api/v1/gateways")).status_code == 401
    actions = [(r["action"], r["auth_kind"]) for r in await receiver.audit_rows()]
    assert ("token.create", "session") in actions and ("token.revoke", "token") in actions


async def test_audit_api_pages_with_cursor(receiver: ReceiverHandle) -> None:
    await receiver.add_user("olga", "operator")
    async with client(receiver) as c:
        for _ in range(3):
            await receiver.login(c, "olga")
        await c.post("/login", data={"username": "olga", "password": "bad-password"})
    async with client(receiver, headers=receiver.admin_headers) as c:
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await c.get("/api/v1/audit", params=params)).json()
            assert len(page["items"]) <= 2
            seen += [it["id"] for it in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 2 and len(seen) == 4 and seen == sorted(seen, reverse=True)
        newest = (await c.get("/api/v1/audit", params={"limit": 1})).json()["items"][0]
        assert (newest["actor"], newest["action"], newest["outcome"]) == (
            "olga",
            "login",
            "failed",
        )
        assert newest["ts"].endswith("Z")
        only = (await c.get("/api/v1/audit", params={"action": "login", "limit": 10})).json()
        assert len(only["items"]) == 4
        assert (await c.get("/api/v1/audit", params={"cursor": "garbage"})).status_code == 422


async def test_bad_input_is_422_not_500(receiver: ReceiverHandle) -> None:
    """Cases schemathesis found: each used to be a 500."""
    await receiver.add_user("olga", "operator")
    async with client(receiver, headers=receiver.admin_headers) as c:
        r = await c.patch("/api/v1/users/olga", json={"sites": []})
        assert r.status_code == 422
        r = await c.post(
            "/api/v1/users", json={"name": "x1", "role": "viewer", "password": "long enough"}
        )
        assert r.status_code == 201
        r = await c.post(
            "/api/v1/users", json={"name": "x1", "role": "viewer", "password": "long enough"}
        )
        assert r.status_code == 409
        r = await c.delete(f"/api/v1/users/olga/tokens/{2**70}")
        assert r.status_code == 422
        r = await c.get("/api/v1/audit", params={"actor": "a\x00b"})
        assert r.status_code == 422 and r.json()["detail"].startswith("invalid value")
        r = await c.get("/api/v1/gateways/gw-1/latest", params={"points": "p\x00"})
        assert r.status_code == 404  # the gateway does not exist: no query with the value
        r = await c.get("/api/v1/events", params={"kind": "k\x00"})
        assert r.status_code == 422
    assert await receiver.count("users") == 2
