"""The status page's local users (issue 12): `outpost user add|list|remove|passwd` on the real
file (argon2id, mode 0600), the LAN rule, and what a change of the file does to open
sessions (the page's PageAuth reads the same file)."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from outpost.agent.api.page import SESSION_IDLE_S, PageAuth
from outpost.agent.api.users import UserStore, is_loopback_bind, lan_bind_problem, users_path
from tests.agent_process import OUTPOST


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "gw"\ndata_dir = "{tmp_path / "var"}"\n')
    return cfg


def _user(cfg: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OUTPOST, "user", *args, "-c", str(cfg)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_user_commands_and_the_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    path = users_path(tmp_path / "var")
    r = _user(cfg, "add", "Bad Name", "--role", "viewer", "--password-stdin", stdin="longenough\n")
    assert r.returncode == 2 and "user name" in r.stderr
    r = _user(cfg, "add", "ann", "--role", "admin", "--password-stdin", stdin="longenough\n")
    assert r.returncode == 2 and "--role" in r.stderr
    r = _user(cfg, "add", "ann", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert r.returncode == 2 and "at least 8" in r.stderr
    assert not path.exists()

    r = _user(cfg, "add", "ann", "--role", "operator", "--password-stdin", stdin="ann-pass-1\n")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert data["users"]["ann"]["role"] == "operator"
    assert data["users"]["ann"]["hash"].startswith("$argon2id$")
    assert "ann-pass-1" not in path.read_text()
    r = _user(cfg, "add", "ann", "--role", "viewer", "--password-stdin", stdin="ann-pass-2\n")
    assert r.returncode == 2 and "exists" in r.stderr

    store = UserStore(path)
    assert store.authenticate("ann", "ann-pass-1") is not None
    assert store.authenticate("ann", "wrong-pass") is None
    assert store.authenticate("nobody", "ann-pass-1") is None

    r = _user(cfg, "passwd", "ann", "--password-stdin", stdin="ann-pass-2\n")
    assert r.returncode == 0, r.stderr
    assert store.authenticate("ann", "ann-pass-1") is None  # re-read: the file changed
    assert store.authenticate("ann", "ann-pass-2") is not None
    r = _user(cfg, "list", "--json")
    assert [(u["name"], u["role"]) for u in json.loads(r.stdout)] == [("ann", "operator")]
    assert "hash" not in r.stdout
    r = _user(cfg, "remove", "ann")
    assert r.returncode == 0, r.stderr
    r = _user(cfg, "remove", "ann")
    assert r.returncode == 2 and "no user" in r.stderr


def test_lan_rule(tmp_path: Path) -> None:
    path = users_path(tmp_path)
    assert is_loopback_bind("127.0.0.1:8710") and is_loopback_bind("[::1]:8710")
    assert is_loopback_bind("localhost:8710")
    assert not is_loopback_bind("127.0.0.2:8710") and not is_loopback_bind("0.0.0.0:8710")
    assert lan_bind_problem("127.0.0.1:8710", path) is None
    assert lan_bind_problem(None, path) is None
    problem = lan_bind_problem("0.0.0.0:8710", path)
    assert problem is not None and "outpost user add" in problem
    path.write_text("{not json")
    problem = lan_bind_problem("0.0.0.0:8710", path)
    assert problem is not None and "not a users file" in problem


def test_sessions_end_when_the_user_changes_or_idles(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    path = users_path(tmp_path / "var")
    for name, role in (("ann", "operator"), ("bob", "viewer")):
        r = _user(cfg, "add", name, "--role", role, "--password-stdin", stdin=f"{name}-pass-1\n")
        assert r.returncode == 0, r.stderr
    now = [1000.0]
    auth = PageAuth(UserStore(path), force_login=False, clock=lambda: now[0])
    assert auth.login_required  # users exist
    ann = auth.users.authenticate("ann", "ann-pass-1")
    bob = auth.users.authenticate("bob", "bob-pass-1")
    assert ann is not None and bob is not None
    ann_sid, ann_session = auth.open(ann.name, ann.role, ann.hash)
    bob_sid, _ = auth.open(bob.name, bob.role, bob.hash)
    assert auth.session(ann_sid) is ann_session and ann_session.actor == "ann@page"

    # a new password ends that user's sessions, not the others'
    r = _user(cfg, "passwd", "ann", "--password-stdin", stdin="ann-pass-2\n")
    assert r.returncode == 0, r.stderr
    assert auth.session(ann_sid) is None
    assert auth.session(bob_sid) is not None

    # idle for longer than the limit: gone
    now[0] += SESSION_IDLE_S + 1
    assert auth.session(bob_sid) is None

    # five failed logins from one address pause that address only
    for _ in range(5):
        auth.failed("10.0.0.9")
    assert auth.throttled("10.0.0.9") and not auth.throttled("10.0.0.10")
