"""Local-control API and CLI end to end over a real Unix socket: uvicorn serves the control
router over a real ``LocalControl`` (alarm engine, mode machine, write service through a real
ModbusDriver → real pymodbus server) recording into a real SQLite buffer; the typer commands
talk to it through ``AgentClient`` exactly as `outpost …` does.

The one stand-in: ``GET /points/{id}`` (the live value shown before a write is confirmed)
belongs to the lead's runtime API; a two-line route of our own plays it here.
"""

from __future__ import annotations

import asyncio
import getpass
import grp
import json
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from structlog.testing import capture_logs
from typer.testing import CliRunner

from outpost.agent.api.client import AgentClient, ApiError
from outpost.agent.api.control import add_error_handlers, control_routes
from outpost.agent.api.server import LocalApiServer
from outpost.agent.cli.control import register
from outpost.agent.control.events import parse_since
from outpost.agent.control.local import LocalControl
from outpost.agent.core.coordinator import DeviceHealth
from outpost.buffer.store import Buffer
from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
from outpost.fsm.alarms import AlarmEngine
from outpost.fsm.clock import ManualClock
from outpost.fsm.config import AlarmsConfig, ModesConfig
from outpost.fsm.modes import ModeMachine
from outpost.point_schedules.model import DataType, Schedule
from outpost.point_schedules.quality import Quality
from tests.modbus_server import ModbusTestServer, start_server
from tests.modbus_server import point as mkpoint

ROOT = Path(__file__).resolve().parents[1]
TEMP = "cdu-01.supply_temp"
USER = getpass.getuser()


@dataclass
class Site:
    clock: ManualClock
    alarms: AlarmEngine
    modes: ModeMachine
    server: ModbusTestServer
    buffer: Buffer
    config_path: Path
    socket: Path
    api: LocalApiServer
    task: asyncio.Task[None]
    app: typer.Typer

    async def cli(self, *args: str, input: str | None = None) -> Any:
        runner = CliRunner()
        # the CLI is synchronous (httpx over the socket): run it off the loop serving the API
        return await asyncio.to_thread(
            runner.invoke, self.app, [*args, "-c", str(self.config_path)], input=input
        )

    async def evaluate(self) -> None:
        await self.modes.evaluate(
            devices_in_comms_loss=set(),
            uplink_ok_age_s=None,
            active_alarms=self.alarms.active_alarms(),
        )

    async def stop_api(self) -> None:
        self.api.stop()
        await self.task


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    sock_dir = Path(tempfile.mkdtemp(prefix="op-", dir="/tmp"))  # AF_UNIX paths are short
    socket = sock_dir / "o.sock"
    data = tmp_path / "var"
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'[agent]\nid = "site-01-gw-1"\ndata_dir = "{data}"\n'
        f'[api]\nsocket = "{socket}"\n[buffer]\npath = "buffer.db"\n'
    )
    server = await start_server()
    driver = ModbusDriver(
        "cdu-01", ModbusDeviceConfig(protocol="modbus", host="127.0.0.1", port=server.port)
    )
    points = [
        mkpoint(
            TEMP,
            "hr:0",
            DataType.INT16,
            device="cdu-01",
            scale=0.1,
            units="degC",
            alarm_h=30.0,
            alarm_deadband=1.0,
        ),
        mkpoint(
            "cdu-01.setpoint",
            "hr:10",
            DataType.INT16,
            device="cdu-01",
            scale=0.1,
            units="degC",
            writable=True,
            min=15.0,
            max=30.0,
        ),
    ]
    buffer = Buffer(data / "buffer.db")
    buffer.open()
    clock = ManualClock()
    control = LocalControl(
        Schedule(points=tuple(points), version="test"),
        alarms_config=AlarmsConfig(stale_alarms=False),
        modes_config=ModesConfig(),
        devices={"cdu-01": driver.config},
        drivers={"cdu-01": driver},
        emit=buffer.append_event,
        device_health=lambda: {"cdu-01": DeviceHealth(connected=True)},
        uplink_last_success=None,
        live_values=dict,
        state_dir=data,
        clock=clock,
    )

    async def live(request: Request) -> JSONResponse:
        point_id = request.path_params["point_id"]
        return JSONResponse({"point_id": point_id, "value": 20.0, "units": "degC"})

    api = Starlette(
        routes=[
            *control_routes(control, lambda: buffer),
            Route("/points/{point_id}", live, methods=["GET"]),
        ]
    )
    add_error_handlers(api)

    server_api = LocalApiServer(api, socket)
    task = asyncio.create_task(server_api.serve())
    while not server_api.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """outpost (test root)"""

    register(app)
    s = Site(
        clock,
        control.alarms,
        control.modes,
        server,
        buffer,
        config_path,
        socket,
        server_api,
        task,
        app,
    )
    await s.evaluate()
    # the daemon side logs to stdout in this same process: keep it out of the CLI's output
    with capture_logs():
        yield s
    if not task.done():
        await s.stop_api()
    await driver.close()
    await server.stop()
    await asyncio.to_thread(buffer.close)
    shutil.rmtree(sock_dir, ignore_errors=True)


async def test_alarm_story_through_the_cli(site: Site) -> None:
    r = await site.cli("alarms")
    assert (r.exit_code, r.output.strip()) == (0, "no active or unacknowledged alarms")
    site.alarms.update(TEMP, site.clock.now(), 35.0, Quality.GOOD)

    r = await site.cli("alarms", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(a["id"], a["state"], a["value"], a["limit"]) for a in rows] == [
        (f"{TEMP}:hi", "unack_active", 35.0, 30.0)
    ]
    r = await site.cli("alarms")
    assert f"{TEMP}:hi" in r.output and "unack_active" in r.output

    r = await site.cli("ack", f"{TEMP}:hi", "--note", "fan checked")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"acknowledged {TEMP}:hi: ack_active"
    assert site.alarms.get(f"{TEMP}:hi").acked_by == USER

    r = await site.cli("ack", f"{TEMP}:hi")
    assert r.exit_code == 1
    assert "nothing to acknowledge" in r.output and "Traceback" not in r.output
    r = await site.cli("ack", "nope:hi")
    assert r.exit_code == 1 and "unknown alarm 'nope:hi'" in r.output

    r = await site.cli("shelve", f"{TEMP}:hi", "--for", "30m", "--note", "sensor swap")
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"shelved {TEMP}:hi for 30m")
    assert site.alarms.get(f"{TEMP}:hi").shelved_until == site.clock.now() + 1800
    r = await site.cli("shelve", f"{TEMP}:hi", "--for", "9h", "--reason", "sensor swap")
    assert r.exit_code == 1 and "exceeds the maximum" in r.output
    r = await site.cli("shelve", f"{TEMP}:hi", "--for", "30m")
    assert r.exit_code == 2 and "needs a reason" in r.output
    r = await site.cli("shelve", f"{TEMP}:hi", "--for", "soon")
    assert r.exit_code == 2 and "invalid duration 'soon'" in r.output
    r = await site.cli("shelve", f"{TEMP}:hi")
    assert r.exit_code == 2 and "--for DURATION" in r.output
    r = await site.cli("unshelve", f"{TEMP}:hi")
    assert (r.exit_code, r.output.strip()) == (0, f"unshelved {TEMP}:hi: ack_active")
    r = await site.cli("shelve", f"{TEMP}:hi", "--one-shot", "-r", "sensor swap")
    assert r.exit_code == 0 and "one-shot" in r.output

    site.alarms.update(TEMP, site.clock.now(), 25.0, Quality.GOOD)
    r = await site.cli("alarms", "--json")
    assert json.loads(r.output) == []  # returned → normal, one-shot shelve over
    r = await site.cli("alarms", "--all", "--json")
    assert {a["id"] for a in json.loads(r.output)} >= {f"{TEMP}:hi", "cdu-01:comms_loss"}

    r = await site.cli("events", "--json", "--kind", "operator")
    assert r.exit_code == 0, r.output
    ops = json.loads(r.output)
    assert [(e["kind"], e["actor"]) for e in ops] == [
        ("operator.ack", USER),
        ("operator.shelve", USER),
        ("operator.unshelve", USER),
        ("operator.shelve", USER),
    ]
    assert ops[0]["detail"]["note"] == "fan checked"
    r = await site.cli("events")
    assert r.exit_code == 0 and "operator.ack" in r.output and "unack_active" in r.output


async def test_mode_commands(site: Site) -> None:
    r = await site.cli("mode")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("mode normal since")
    site.alarms.update(TEMP, site.clock.now(), 35.0, Quality.GOOD)
    r = await site.cli("mode", "set", "maintenance", "--for", "2h", "--reason", "CDU filter change")
    assert r.exit_code == 0, r.output
    assert "mode maintenance" in r.output and "reason: CDU filter change" in r.output
    assert site.alarms.get(f"{TEMP}:hi").state == "suppressed"
    r = await site.cli("mode", "--json")
    state = json.loads(r.output)
    assert (state["mode"], state["actor"], state["scope"]) == ("maintenance", USER, "all")
    r = await site.cli("mode", "set", "emergency", "--for", "1h", "--reason", "x")
    assert r.exit_code == 2 and "only maintenance" in r.output
    r = await site.cli("mode", "graph", "--format", "mermaid")
    assert r.exit_code == 0 and r.output.startswith("stateDiagram-v2")
    r = await site.cli("mode", "graph")
    assert "--end_maintenance--> normal" in r.output
    r = await site.cli("mode", "clear", "--reason", "done")
    assert r.exit_code == 0 and r.output.startswith("mode normal")
    assert site.alarms.get(f"{TEMP}:hi").state == "unack_active"
    r = await site.cli("mode", "clear")
    assert r.exit_code == 1 and "nothing to clear: the mode is normal" in r.output
    r = await site.cli("events", "--json", "--kind", "operator.mode")
    assert [e["detail"]["to"] for e in json.loads(r.output)] == ["maintenance", "normal"]


async def test_write_commands(site: Site) -> None:
    r = await site.cli("write", "cdu-01.setpoint", "21.5", "--yes")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "cdu-01.setpoint = 21.5 degC (read back 21.5)"
    assert await site.server.get("hr", 10, 1) == [215]
    r = await site.cli("write", "cdu-01.setpoint", "22", input="n\n")
    assert r.exit_code == 1 and "write 22 degC to cdu-01.setpoint (now 20 degC)?" in r.output
    assert await site.server.get("hr", 10, 1) == [215]  # declined: nothing written
    r = await site.cli("write", "cdu-01.setpoint", "22", input="y\n")
    assert r.exit_code == 0 and await site.server.get("hr", 10, 1) == [220]
    r = await site.cli("write", "cdu-01.setpoint", "99", "--yes")
    assert r.exit_code == 1 and "above the point's max 30 degC" in r.output
    r = await site.cli("write", "cdu-01.setpoint", "-5", "--yes")  # a value, not an option
    assert r.exit_code == 1 and "-5 degC is below the point's min 15 degC" in r.output
    r = await site.cli("write", "cdu-01.supply_temp", "1", "--yes")
    assert r.exit_code == 1 and "not writable" in r.output
    r = await site.cli("write", "cdu-01.setpoint", "23", "--yes", "--json")
    assert json.loads(r.output)["result"] == "ok"
    r = await site.cli("events", "--json", "--kind", "operator.write")
    results = [(e["actor"], e["detail"]["result"]) for e in json.loads(r.output)]
    assert results == [
        (USER, "ok"),
        (USER, "ok"),
        (USER, "refused"),
        (USER, "refused"),
        (USER, "refused"),
        (USER, "ok"),
    ]


async def test_http_status_codes(site: Site) -> None:
    client = AgentClient(site.socket)

    async def call(method: str, path: str, body: Any = None) -> int:
        try:
            await asyncio.to_thread(client.request, method, path, body)
        except ApiError as exc:
            return exc.status
        return 200

    assert await call("POST", "/alarms/nope:hi/ack", {}) == 404
    assert await call("POST", f"/alarms/{TEMP}:hi/ack", {}) == 409
    # who acts is the user connected to the socket, never a name in the body
    assert await call("POST", f"/alarms/{TEMP}:hi/ack", {"actor": "a"}) == 422
    assert await call("POST", "/points/nope/write", {"value": 1}) == 404
    assert await call("POST", f"/points/{TEMP}/write", {"value": 1}) == 409
    body = {"mode": "maintenance", "duration_s": 60, "reason": ""}
    assert await call("POST", "/mode", body) == 422
    assert await call("POST", "/mode/clear", {}) == 409
    assert await call("GET", "/mode/graph?format=dot") == 422
    assert await call("GET", "/events?since=yesterday-ish") == 422
    body = {"on": True, "note": "sensor removed"}
    assert await call("POST", f"/alarms/{TEMP}:hi/out_of_service", body) == 200
    assert site.alarms.get(f"{TEMP}:hi").state == "out_of_service"


async def test_text_and_numbers_the_agent_cannot_store_are_422(site: Site) -> None:
    """Bodies as a hostile client sends them (raw JSON: NaN, lone surrogates, NUL)."""
    transport = httpx.AsyncHTTPTransport(uds=str(site.socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://outpost") as client:

        async def post(path: str, raw: str) -> httpx.Response:
            return await client.post(
                path, content=raw, headers={"content-type": "application/json"}
            )

        for value in ("NaN", "Infinity", "-Infinity", "1e309"):
            r = await post("/points/cdu-01.setpoint/write", f'{{"value": {value}}}')
            assert r.status_code == 422, (value, r.text)
        for reason in ("\\ud800", "filter\\u0000change"):
            raw = f'{{"mode": "maintenance", "duration_s": 60, "reason": "{reason}"}}'
            r = await post("/mode", raw)
            assert r.status_code == 422, (reason, r.text)
            assert "reason" in r.text
        r = await post(f"/alarms/{TEMP}:hi/ack", '{"note": "a\\u0000b"}')
        assert r.status_code == 422 and "note" in r.text
    assert await site.server.get("hr", 10, 1) == [0]  # nothing was written
    r = await site.cli("write", "cdu-01.setpoint", "nan", "--yes")
    assert r.exit_code == 2 and "expected a finite number, got 'nan'" in r.output
    r = await site.cli("write", "cdu-01.setpoint", "1e309", "--yes")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert site.modes.mode == "normal"


def _as_user(uid: int, gid: int, *cmd: str, env: dict[str, str] | None = None) -> Any:
    """Run ``cmd`` as another user (real uid/gid, no supplementary groups)."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})},
    )


def _let_others_traverse(*paths: Path) -> list[tuple[Path, int]]:
    """Give other users search (x) permission on each ancestor of ``paths`` lacking it (a
    checkout under ``mktemp -d`` is 0700), returning what to restore afterwards."""
    changed: list[tuple[Path, int]] = []
    for path in paths:
        for directory in (path, *path.parents):
            mode = stat.S_IMODE(directory.stat().st_mode)
            if not mode & stat.S_IXOTH and all(d != directory for d, _ in changed):
                directory.chmod(mode | stat.S_IXOTH)
                changed.append((directory, mode))
    return changed


def _cli_as(uid: int, gid: int, config: Path, *args: str) -> Any:
    """`outpost ARGS` as another user: the system's python of our version, reading the
    package through a link tree and the venv's site-packages (the venv's own interpreter
    lives under /root, which other users cannot enter)."""
    tree = Path(tempfile.mkdtemp(prefix="op-tree-", dir="/tmp"))
    opened = _let_others_traverse(ROOT, Path(sys.prefix))
    try:
        tree.chmod(0o755)
        (tree / "outpost").mkdir(mode=0o755)
        for top in ("agent", "drivers", "fsm", "buffer", "cloud", "point_schedules"):
            (tree / "outpost" / top).symlink_to(ROOT / top, target_is_directory=True)
        cfg = tree / "agent.toml"
        cfg.write_text(config.read_text())
        cfg.chmod(0o644)
        site_packages = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        return _as_user(
            uid,
            gid,
            python,
            "-m",
            "outpost.agent",
            *args,
            "-c",
            str(cfg),
            env={"PYTHONPATH": f"{tree}:{site_packages}"},
        )
    finally:
        for path, mode in opened:
            path.chmod(mode)
        shutil.rmtree(tree, ignore_errors=True)


async def test_only_the_agents_group_may_use_the_socket_and_the_actor_is_the_peer(
    site: Site,
) -> None:
    """As the real user ``nobody``: without the socket's group nothing gets through (CLI says
    why); with it, an acknowledgement is recorded as ``nobody`` whatever the body claims."""
    nobody = pwd.getpwnam("nobody")
    st = site.socket.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660
    group = st.st_gid
    site.socket.parent.chmod(0o750)  # as the agent's data dir is
    site.alarms.update(TEMP, site.clock.now(), 35.0, Quality.GOOD)
    curl = ["curl", "-s", "-o", "/dev/stderr", "-w", "%{http_code}", "--unix-socket"]
    ack = [str(site.socket), "-X", "POST", "-H", "content-type: application/json"]
    url = f"http://outpost/alarms/{TEMP}:hi/ack"

    # not in the group: cannot even reach the socket, by curl or by the CLI
    r = await asyncio.to_thread(
        _as_user, nobody.pw_uid, nobody.pw_gid, *curl, *ack, "-d", "{}", url
    )
    assert r.returncode != 0 and r.stdout == "000", r
    r = await asyncio.to_thread(
        _cli_as, nobody.pw_uid, nobody.pw_gid, site.config_path, "ack", f"{TEMP}:hi"
    )
    assert r.returncode == 1, r
    assert r.stderr.startswith("outpost: permission denied:") and "Traceback" not in r.stderr
    assert f"group {grp.getgrgid(group).gr_name!r}" in r.stderr
    assert site.alarms.get(f"{TEMP}:hi").acked_by is None

    # in the group: allowed, and recorded as who they are
    r = await asyncio.to_thread(
        _as_user, nobody.pw_uid, group, *curl, *ack, "-d", '{"actor": "root"}', url
    )
    assert r.stdout == "422", r  # a body cannot name the actor
    r = await asyncio.to_thread(
        _as_user, nobody.pw_uid, group, *curl, *ack, "-d", '{"note": "seen"}', url
    )
    assert r.stdout == "200", r
    assert site.alarms.get(f"{TEMP}:hi").acked_by == "nobody"
    r = await site.cli("events", "--json", "--kind", "operator")
    assert [(e["kind"], e["actor"]) for e in json.loads(r.output)] == [("operator.ack", "nobody")]


_NASTY = [float("nan"), float("inf"), -1e309, 2**64, "\ud800", "a\x00b", "", " ", -1, 0]
_json = st.recursive(
    st.sampled_from(_NASTY)
    | st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_KEYS = ["note", "duration_s", "reason", "value", "priority", "verify", "scope", "mode", "on"]
_bodies = _json | st.dictionaries(st.sampled_from(_KEYS), _json, max_size=4)
_ids = st.sampled_from([f"{TEMP}:hi", "cdu-01.setpoint", "cdu-01:comms_loss"]) | st.text(
    min_size=1, max_size=12
)
_ACTIONS = [
    "/alarms/{}/ack",
    "/alarms/{}/shelve",
    "/alarms/{}/unshelve",
    "/alarms/{}/out_of_service",
    "/points/{}/write",
    "/points/{}/relinquish",
    "/mode",
    "/mode/clear",
]


async def test_fuzzed_requests_are_answered_never_a_server_error(site: Site) -> None:
    transport = httpx.HTTPTransport(uds=str(site.socket))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(action=st.sampled_from(_ACTIONS), target=_ids, body=_bodies)
    def post(action: str, target: str, body: object) -> None:
        path = action.format(urllib.parse.quote(target, safe=""))
        r = client.post(
            path, content=json.dumps(body), headers={"content-type": "application/json"}
        )
        assert r.status_code < 500, (path, body, r.status_code, r.text)
        r.json()

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        path=st.sampled_from(["/events", "/alarms", "/mode/graph", "/alarms/x"]),
        params=st.dictionaries(
            st.sampled_from(["since", "kind", "limit", "all", "format"]), st.text(max_size=12)
        ),
    )
    def get(path: str, params: dict[str, str]) -> None:
        r = client.get(path, params=params)
        assert r.status_code < 500, (path, params, r.status_code, r.text)
        r.json()

    with httpx.Client(transport=transport, base_url="http://outpost") as client:
        await asyncio.to_thread(post)
        await asyncio.to_thread(get)


async def test_without_a_running_agent(site: Site) -> None:
    site.alarms.update(TEMP, site.clock.now(), 35.0, Quality.GOOD)
    await site.buffer.flush()
    await site.stop_api()
    r = await site.cli("alarms")
    assert r.exit_code == 1 and r.output.startswith("outpost: no agent running")
    # the event history is still there: read from the buffer file
    r = await site.cli("events", "--json", "--kind", "alarm")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output.split("\n", 1)[1] if r.output.startswith("(") else r.output)
    assert [(e["source"], e["detail"]["to"]) for e in rows] == [(f"{TEMP}:hi", "unack_active")]


def test_parse_since() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_since("2026-11-24T10:00:00Z") == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert parse_since("2026-11-24") == datetime(2026, 11, 24, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("last tuesday")


async def test_ack_all_acknowledges_a_flood_filtered(site: Site) -> None:
    """Issue 12: `outpost ack --all [--device D] [--priority P]`; each alarm is its own
    recorded operator.ack, and the ones that do not apply are reported, not fatal."""
    now = site.clock.now()
    site.alarms.update(TEMP, now, 35.0, Quality.GOOD)
    site.alarms.device_comms("cdu-01", False, now)
    site.clock.advance(120)
    site.alarms.device_comms("cdu-01", False, site.clock.now())
    site.alarms.tick()
    waiting = {a["id"] for a in json.loads((await site.cli("alarms", "--json")).output)}
    assert {f"{TEMP}:hi", "cdu-01:comms_loss"} <= waiting

    r = await site.cli("ack", f"{TEMP}:hi", "--all")
    assert r.exit_code == 2 and "either an ALARM id or --all" in r.output
    r = await site.cli("ack", "--device", "cdu-01")
    assert r.exit_code == 2
    r = await site.cli("ack", "--all", "--priority", "urgent")
    assert r.exit_code != 0 and "Traceback" not in r.output

    # --priority narrows: comms_loss is high, the temperature alarm medium
    r = await site.cli("ack", "--all", "--priority", "high", "--note", "power cut")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "acknowledged cdu-01:comms_loss: ack_active"
    assert site.alarms.get(f"{TEMP}:hi").state == "unack_active"
    r = await site.cli("ack", "--all", "--device", "other-device")
    assert (r.exit_code, r.output.strip()) == (0, "nothing to acknowledge")
    assert site.alarms.get(f"{TEMP}:hi").state == "unack_active"
    r = await site.cli("ack", "--all", "--device", "cdu-01", "--json")
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)
    assert [a["id"] for a in body["acked"]] == [f"{TEMP}:hi"] and body["skipped"] == []
    assert site.alarms.get(f"{TEMP}:hi").acked_by == USER

    # the page's multi-select: listed ids; an unknown one is skipped with its reason
    site.alarms.update(TEMP, site.clock.now(), 20.0, Quality.GOOD)
    site.alarms.update(TEMP, site.clock.now(), 36.0, Quality.GOOD)
    client = AgentClient(site.socket)
    many = await asyncio.to_thread(
        client.request, "POST", "/alarms/ack", json={"ids": [f"{TEMP}:hi", "nope:hi"]}
    )
    assert [a["id"] for a in many["acked"]] == [f"{TEMP}:hi"]
    assert many["skipped"] == [{"id": "nope:hi", "reason": "unknown alarm 'nope:hi'"}]

    r = await site.cli("events", "--json", "--kind", "ack")
    acks = [(e["source"], e["actor"]) for e in json.loads(r.output)]
    assert acks == [("cdu-01:comms_loss", USER), (f"{TEMP}:hi", USER), (f"{TEMP}:hi", USER)]


async def test_events_kind_selects_a_subject_whoever_acted(site: Site) -> None:
    """Issue 12: one naming scheme, [operator.]<subject>: `--kind write` lists the operator's
    writes as well as automatic ones; `--kind operator` every act of a person."""
    r = await site.cli("write", "cdu-01.setpoint", "21.5", "--yes")
    assert r.exit_code == 0, r.output
    site.buffer.append_event(site.clock.now(), "write", "cdu-01.setpoint", "mode:emergency", {})
    r = await site.cli("events", "--json", "--kind", "write")
    assert r.exit_code == 0, r.output
    kinds = [(e["kind"], e["actor"]) for e in json.loads(r.output)]
    assert kinds == [("operator.write", USER), ("write", "mode:emergency")]
    r = await site.cli("events", "--json", "--kind", "operator")
    assert [e["kind"] for e in json.loads(r.output)] == ["operator.write"]
    r = await site.cli("events", "--json", "--kind", "wri")
    assert json.loads(r.output) == []  # a subject, not a text prefix


def test_kind_matches_the_documented_scheme() -> None:
    from outpost.agent.control.events import kind_matches

    cases = {
        ("operator.write", "write"): True,
        ("write", "write"): True,
        ("operator.mode", "mode"): True,
        ("operator.ack", "operator"): True,
        ("schedule.load", "schedule"): True,
        ("operator.ack", "alarm"): False,
        ("alarm", "operator"): False,
        ("writes", "write"): False,
    }
    assert {case: kind_matches(*case) for case in cases} == cases
