"""What the daemon imports is part of every agent's base memory (bench/agent_imports.py
measures it): an agent without [cloud] that nobody scrapes loads neither FastAPI nor
pydantic-settings, httpx or prometheus_client; the uplink's and the metrics' modules come in
when they are used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_AT_START = ("fastapi", "pydantic_settings", "httpx", "prometheus_client")

_PROBE = """
import json, sys
import outpost.agent.cli
import outpost.agent.core.logs
import outpost.agent.core.runtime
import outpost.agent.api.page  # the status page ([api] bind)
loaded = [m for m in json.loads(sys.argv[1]) if m in sys.modules]
import outpost.agent.core.metrics_export  # the first scrape
import outpost.cloud.uplink  # [cloud]
after = [m for m in json.loads(sys.argv[1]) if m in sys.modules]
print(json.dumps({"at_start": loaded, "when_used": after}))
"""


def test_edge_only_agent_does_not_import_what_it_does_not_use() -> None:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(NOT_AT_START)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert found["at_start"] == []
    # the probe itself can see them: the lazy imports are the only thing keeping them out
    assert found["when_used"] == ["httpx", "prometheus_client"]
