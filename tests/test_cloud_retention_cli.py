"""`outpost cloud retention`: retention is a property of the database, shown and set by this one
command (or `serve --retention-days`); enroll and revoke leave it alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.receiver_fixtures import ReceiverHandle

pytest_plugins = ("tests.receiver_fixtures",)

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outpost.agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=dict(os.environ),
    )


async def test_retention_shown_set_and_left_alone_by_enroll_and_revoke(
    receiver: ReceiverHandle,
) -> None:
    dsn = receiver.dsn
    r = await asyncio.to_thread(cli, "cloud", "retention", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "retention: never set (readings are kept forever)"

    r = await asyncio.to_thread(cli, "cloud", "retention", "30", "--dsn", dsn)
    assert (r.returncode, r.stdout.strip()) == (0, "retention: 30 days"), r.stderr

    # side doors: enroll and revoke must not touch it
    await receiver.enroll("gw-1")
    r = await asyncio.to_thread(cli, "cloud", "enroll", "gw-2", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(cli, "cloud", "revoke", "gw-1", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(cli, "cloud", "retention", "--dsn", dsn)
    assert r.stdout.strip() == "retention: 30 days"

    r = await asyncio.to_thread(cli, "cloud", "retention", "--off", "--dsn", dsn)
    assert (r.returncode, r.stdout.strip()) == (0, "retention: readings are kept forever")
    r = await asyncio.to_thread(cli, "cloud", "retention", "7", "--off", "--dsn", dsn)
    assert r.returncode == 2 and "not both" in r.stderr
    rows = await receiver.fetch(
        "SELECT action FROM audit WHERE action = 'receiver.retention' ORDER BY id"
    )
    assert [r["action"] for r in rows] == ["receiver.retention", "receiver.retention"]
