"""`outpost cloud serve|enroll|revoke` as real processes.

One test runs the whole embedded path (no DSN: `serve` starts PostgreSQL in its data dir,
`enroll` joins the running server, SIGTERM stops both, `revoke` works with the receiver down);
the other runs the CLI against a DSN.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import structlog

from outpost.cloud.wire import IngestBatch, columnar_readings, encode_body

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.receiver_fixtures import ReceiverHandle, ReceiverProcess

pytest_plugins = ("tests.receiver_fixtures",)

OUTPOST = [sys.executable, "-m", "outpost.agent"]
REPO = Path(__file__).resolve().parent.parent
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{40,}$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OUTPOST, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def batch(n: int = 10) -> IngestBatch:
    return IngestBatch(
        gateway_id="gw-1",
        first_seq=1,
        last_seq=n,
        readings=columnar_readings(
            ["p.a"] * n,
            [1_763_900_000.0 + i for i in range(n)],
            [float(i) for i in range(n)],
            [0] * n,
        ),
    )


def exchange(url: str, token: str) -> str:
    r = httpx.post(f"{url}/api/v1/enroll", json={"gateway_id": "gw-1", "enrollment_token": token})
    assert r.status_code == 200, r.text
    return r.json()["gateway_token"]


def ingest(url: str, gateway_token: str) -> int:
    body, headers = encode_body(batch())
    headers["Authorization"] = f"Bearer {gateway_token}"
    return httpx.post(f"{url}/api/v1/ingest", content=body, headers=headers).status_code


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"receiver exited during start-up: {err[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("receiver not ready")


def postgres_running(pgdata: Path) -> bool:
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return False
    try:
        os.kill(int(pidfile.read_text().split()[0]), 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_serve_enroll_revoke() -> None:
    # outside pytest's 0700 basetemp: the embedded server runs as an unprivileged user
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="outpost-test-rcv-")) / "receiver"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OUTPOST_RECEIVER_ADMIN_TOKEN", "OUTPOST_RECEIVER_DSN")
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*OUTPOST, "cloud", "serve", "--data-dir", str(data), "--bind", f"127.0.0.1:{port}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_ready(url, proc)
        return proc

    serve = start()
    try:
        admin_file = data / "admin.token"
        assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
        admin = admin_file.read_text().strip()
        enrolled = subprocess.run(
            [*OUTPOST, "cloud", "enroll", "gw-1", "--data-dir", str(data), "--ttl", "1h"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=env,
        )
        assert enrolled.returncode == 0, enrolled.stderr
        token = enrolled.stdout.strip()
        assert enrolled.stdout == token + "\n" and TOKEN_RE.match(token)
        assert "usable once" in enrolled.stderr
        gateway_token = exchange(url, token)
        assert ingest(url, gateway_token) == 200
        r = httpx.get(f"{url}/api/v1/gateways", headers={"Authorization": f"Bearer {admin}"})
        assert [g["gateway_id"] for g in r.json()] == ["gw-1"]
    finally:
        serve.send_signal(signal.SIGTERM)
        rc = serve.wait(60)
    assert rc == 0, serve.stderr.read().decode() if serve.stderr else rc
    assert not postgres_running(data / "pg")

    # the receiver is down: revoke starts the embedded server just for itself
    revoked = subprocess.run(
        [*OUTPOST, "cloud", "revoke", "gw-1", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == "" and "revoked" in revoked.stderr
    assert not postgres_running(data / "pg")

    serve = start()
    try:
        assert ingest(url, gateway_token) == 401
        # the admin token file is reused across restarts
        r = httpx.get(f"{url}/api/v1/gateways/gw-1", headers={"Authorization": f"Bearer {admin}"})
        assert r.json()["status"] == "revoked"
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    assert not postgres_running(data / "pg")
    import shutil

    shutil.rmtree(data.parent, ignore_errors=True)


async def test_cli_against_dsn(receiver: ReceiverHandle) -> None:
    import asyncio

    out = await asyncio.to_thread(
        cli, "cloud", "enroll", "gw-1", "--dsn", receiver.dsn, "--ttl", "15m"
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert TOKEN_RE.match(token) and out.stdout.count("\n") == 1
    rows = await receiver.fetch(
        "SELECT expires_at - created_at AS ttl FROM enrollment_tokens WHERE gateway_id = 'gw-1'"
    )
    assert abs(rows[0]["ttl"].total_seconds() - 900) < 5
    gateway_token = await asyncio.to_thread(exchange, receiver.url, token)
    assert await asyncio.to_thread(ingest, receiver.url, gateway_token) == 200
    bad = await asyncio.to_thread(cli, "cloud", "enroll", "Not Valid", "--dsn", receiver.dsn)
    assert bad.returncode == 2 and bad.stdout == ""
    out = await asyncio.to_thread(cli, "cloud", "revoke", "gw-1", "--dsn", receiver.dsn)
    assert out.returncode == 0, out.stderr
    assert await asyncio.to_thread(ingest, receiver.url, gateway_token) == 401
    out = await asyncio.to_thread(cli, "cloud", "revoke", "nope", "--dsn", receiver.dsn)
    assert out.returncode == 1 and "unknown gateway" in out.stderr
    rows = await receiver.fetch("SELECT action, target, outcome, auth_kind FROM audit ORDER BY id")
    assert [(r["action"], r["target"], r["outcome"], r["auth_kind"]) for r in rows] == [
        ("gateway.enrollment_token", "gw-1", "ok", "cli"),
        ("gateway.revoke", "gw-1", "ok", "cli"),
        ("gateway.revoke", "nope", "not_found", "cli"),
    ]


def test_receiver_sigkill_loses_no_acknowledged_batch(
    receiver_process: Callable[..., ReceiverProcess],
) -> None:
    """SIGKILL the receiver process while a client streams batches: every acknowledged batch
    is in the database after the restart, and resending every batch stores each reading once."""
    import asyncio
    import threading

    import asyncpg

    rp = receiver_process()
    admin = {"Authorization": f"Bearer {rp.admin_token}"}
    et = httpx.post(
        f"{rp.url}/api/v1/gateways/gw-1/enrollment-tokens", headers=admin, json={}
    ).json()["enrollment_token"]
    token = exchange(rp.url, et)
    size, count = 1000, 30
    bodies = []
    for i in range(count):
        t0 = 1_763_900_000.0 + i * 1000
        b = IngestBatch(
            gateway_id="gw-1",
            first_seq=i * size + 1,
            last_seq=(i + 1) * size,
            readings=columnar_readings(
                [f"p.{k % 50}" for k in range(size)],
                [t0 + k // 50 for k in range(size)],
                [float(k) for k in range(size)],
                [0] * size,
            ),
        )
        bodies.append(encode_body(b))
    acked: list[int] = []
    started = threading.Event()

    def send_all() -> None:
        with httpx.Client(
            base_url=rp.url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as c:
            for i, (body, headers) in enumerate(bodies):
                try:
                    r = c.post("/api/v1/ingest", content=body, headers=headers)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(i)
                if len(acked) >= 3:
                    started.set()

    sender = threading.Thread(target=send_all)
    sender.start()
    assert started.wait(60)
    rp.kill()
    sender.join(60)
    assert 3 <= len(acked) < count  # killed mid-stream

    async def per_batch() -> dict[int, int]:
        conn = await asyncpg.connect(rp.dsn)
        try:
            rows = await conn.fetch(
                "SELECT ((extract(epoch FROM time) - 1763900000) / 1000)::int AS i, "
                "count(*) AS n FROM readings GROUP BY 1"
            )
        finally:
            await conn.close()
        return {r["i"]: r["n"] for r in rows}

    stored = asyncio.run(per_batch())
    assert all(stored.get(i) == size for i in acked)
    assert all(n in (0, size) for n in stored.values())  # a batch is all or nothing

    rp.start()
    with httpx.Client(
        base_url=rp.url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as c:
        for body, headers in bodies:
            assert c.post("/api/v1/ingest", content=body, headers=headers).status_code == 200
    stored = asyncio.run(per_batch())
    assert stored == {i: size for i in range(count)}


def user_cli(dsn: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m outpost.cloud.receiver user ...`` (what ``outpost cloud user`` runs)."""
    return subprocess.run(
        [sys.executable, "-m", "outpost.cloud.receiver", "user", *args, "--dsn", dsn],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


async def test_user_cli_add_token_passwd_remove(receiver: ReceiverHandle) -> None:
    import asyncio

    async def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(user_cli, receiver.dsn, *args, stdin=stdin)

    async def login(password: str) -> int:
        async with httpx.AsyncClient(base_url=receiver.url) as c:
            r = await c.post(
                "/login",
                data={"username": "alice", "password": password},
                headers={"Accept": "application/json"},
            )
            return r.status_code

    async def me(token: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=receiver.url) as c:
            return await c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    out = await run(
        "add",
        "alice",
        "--role",
        "operator",
        "--sites",
        "north,south",
        "--password-stdin",
        stdin="first password\n",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and "alice added" in out.stderr
    again = await run("add", "alice", "--role", "viewer", "--password-stdin", stdin="x" * 12)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = await run("add", "bob", "--role", "root", "--password-stdin", stdin="long enough pw")
    assert bad.returncode == 1 and "bad role 'root'" in bad.stderr
    short = await run("add", "bob", "--role", "viewer", "--password-stdin", stdin="short")
    assert short.returncode == 1 and "too short" in short.stderr
    listed = await run("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(u["name"], u["role"], u["sites"]) for u in json.loads(listed.stdout)] == [
        ("alice", "operator", ["north", "south"])
    ]
    assert await login("first password") == 200

    tok = await run("token", "alice", "--label", "grafana")
    assert tok.returncode == 0, tok.stderr
    token = tok.stdout.strip()
    assert tok.stdout.count("\n") == 1 and token.startswith("opu_")
    who = (await me(token)).json()
    assert who["name"] == "alice" and who["sites"] == ["north", "south"]
    # a gateway enrolled with --site is visible to the user scoped to that site
    for gw, site in (("gw-9", "north"), ("gw-8", "west")):
        enroll = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "outpost.cloud.receiver", "enroll", gw, "--site", site,
             "--dsn", receiver.dsn],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip
        assert enroll.returncode == 0, enroll.stderr
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        r = await c.get("/api/v1/gateways", headers={"Authorization": f"Bearer {token}"})
        assert [(g["gateway_id"], g["site"]) for g in r.json()] == [("gw-9", "north")]
    token_id = re.search(r"token (\d+) for alice", tok.stderr)
    assert token_id is not None
    out = await run("revoke-token", "alice", "--id", token_id.group(1))
    assert out.returncode == 0, out.stderr
    assert (await me(token)).status_code == 401
    assert (await run("revoke-token", "alice")).returncode == 1  # neither --id nor --all

    out = await run("passwd", "alice", "--password-stdin", stdin="second password\n")
    assert out.returncode == 0, out.stderr
    assert await login("first password") == 401
    assert await login("second password") == 200
    assert await receiver.count("sessions") == 1  # the session of the old password ended

    out = await run("remove", "alice")
    assert out.returncode == 0, out.stderr
    assert await login("second password") == 401
    assert (await run("remove", "alice")).returncode == 1
    rows = await receiver.fetch(
        "SELECT action, target, auth_kind, address FROM audit WHERE auth_kind = 'cli' ORDER BY id"
    )
    assert [(r["action"], r["target"]) for r in rows] == [
        ("user.add", "alice"),
        ("token.create", "alice"),
        ("gateway.enrollment_token", "gw-9"),
        ("gateway.enrollment_token", "gw-8"),
        ("token.revoke", "alice"),
        ("user.passwd", "alice"),
        ("user.remove", "alice"),
    ]
    assert {r["address"] for r in rows} == {"local"}


async def test_user_cli_prompts_for_the_password(receiver: ReceiverHandle) -> None:
    """The typer sub-app as `outpost cloud user` mounts it, password typed at the prompt."""
    import asyncio

    from typer.testing import CliRunner

    from outpost.cloud.receiver.user_cli import user_app

    runner = CliRunner()
    saved = structlog.get_config()  # the sub-app configures logging for its process

    def invoke(*args: str, stdin: str) -> tuple[int, str]:
        res = runner.invoke(user_app, [*args, "--dsn", receiver.dsn], input=stdin)
        return res.exit_code, res.output

    try:
        code, out = await asyncio.to_thread(
            invoke, "add", "pia", "--role", "viewer", stdin="typed password\ntypo password\n"
        )
        assert code != 0 and await receiver.count("users") == 0  # confirmation did not match
        code, out = await asyncio.to_thread(
            invoke, "add", "pia", "--role", "viewer", stdin="typed password\ntyped password\n"
        )
        assert code == 0, out
        assert "typed password" not in out  # hidden input is not echoed
    finally:
        structlog.configure(**saved)
    async with httpx.AsyncClient(base_url=receiver.url) as c:
        csrf = await receiver.login(c, "pia", "typed password")
        assert csrf
