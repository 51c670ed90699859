"""The agent as a daemon, end to end: a real `outpost run` process polling a real pymodbus
server, inspected through the real CLI over the Unix socket; SIGHUP reload, SIGTERM stop,
systemd notify messages on a real datagram socket."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from outpost.agent.core.config import load_config
from outpost.agent.core.runtime import Runtime
from outpost.cloud.wire import PointMeta
from outpost.point_schedules.loader import load_schedule
from outpost.point_schedules.model import METADATA_FIELDS, ByteOrder, DataType
from tests.agent_process import cli, start_agent, write_config
from tests.modbus_server import registers_for, start_server

SCHEDULE = """point_id,device,address,data_type,byte_order,scale,units,description,deadband,heartbeat
plc.temp,plc,hr:0,int16,,0.1,degC,Supply temperature,,
plc.flow,plc,hr:10,float32,CDAB,,l/min,Flow,0.5,
plc.run,plc,coil:3,bool,,,,Pump running,,
plc.ghost,plc,hr:500,uint16,,,,Address the device does not serve,,
"""


async def _until(predicate, within: float = 15.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


async def test_agent_polls_serves_cli_reloads_and_stops_cleanly(tmp_path: Path) -> None:
    server = await start_server()
    await server.set("hr", 0, [235])  # 23.5 degC
    await server.set("hr", 10, registers_for(DataType.FLOAT32, ByteOrder.CDAB, 12.5))
    await server.set("coil", 3, [True])
    cfg = write_config(
        tmp_path,
        {
            "plc": {
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "poll_interval": 0.5,
            }
        },
        SCHEDULE,
    )

    # systemd's notify socket, for real
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    messages: list[str] = []
    listening = threading.Event()
    listening.set()

    def listen() -> None:  # like systemd: read every datagram as it comes
        while listening.is_set():
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}

    agent = start_agent(cfg, env)
    try:
        await asyncio.to_thread(agent.wait_ready)

        async def temp_is_live():  # type: ignore[no-untyped-def]
            r = await asyncio.to_thread(cli, cfg, "read", "plc.temp", "--json")
            if r.returncode != 0:
                return None
            row = json.loads(r.stdout)
            return row if row["quality"] == "good" else None

        row = await _until(temp_is_live)
        assert row["value"] == 23.5 and row["units"] == "degC" and row["ts"].endswith("Z")
        # the contract's fields, plus last_change (when the value last moved; ISO 8601 UTC)
        assert set(row) == {"point_id", "device", "value", "quality", "ts", "units", "last_change"}
        assert row["last_change"].endswith("Z") and row["last_change"] <= row["ts"]

        r = await asyncio.to_thread(cli, cfg, "points", "--json")
        assert r.returncode == 0, r.stderr
        pts = {p["point_id"]: p for p in json.loads(r.stdout)}
        assert pts["plc.flow"]["value"] == 12.5
        assert pts["plc.run"]["value"] == 1.0
        assert pts["plc.ghost"]["quality"].startswith("bad")  # only its own point spoiled

        r = await asyncio.to_thread(cli, cfg, "points", "--device", "plc")
        assert r.returncode == 0 and "plc.temp" in r.stdout and "23.5" in r.stdout

        r = await asyncio.to_thread(cli, cfg, "status", "--json")
        status = json.loads(r.stdout)
        assert status["gateway_id"] == "gw-test"
        assert status["devices"]["plc"]["connected"] is True
        assert status["schedule"]["points"] == 4
        first_version = status["schedule"]["version"]
        r = await asyncio.to_thread(cli, cfg, "status")
        assert r.returncode == 0 and "plc" in r.stdout and "up" in r.stdout

        r = await asyncio.to_thread(cli, cfg, "read", "nope.point")
        assert r.returncode == 1 and "unknown point" in r.stderr and "Traceback" not in r.stderr

        # value changes flow through
        await server.set("hr", 0, [301])

        async def temp_changed():  # type: ignore[no-untyped-def]
            r = await asyncio.to_thread(cli, cfg, "read", "plc.temp", "--json")
            return json.loads(r.stdout)["value"] == 30.1

        await _until(temp_changed)

        # SIGHUP with a broken schedule: rejected, old schedule keeps running
        (tmp_path / "site.csv").write_text(SCHEDULE + "plc.bad,plc,hr:x,int16,,,,,,\n")
        agent.signal(signal.SIGHUP)

        async def reload_rejected():  # type: ignore[no-untyped-def]
            r = await asyncio.to_thread(cli, cfg, "status", "--json")
            assert r.returncode == 0, (r.stderr, agent.log())
            s = json.loads(r.stdout)["schedule"]
            return s if s["reload_errors"] >= 1 else None

        s = await _until(reload_rejected)
        assert s["version"] == first_version and s["points"] == 4
        assert any('column "address"' in line for line in s["last_reload_error"])
        r = await asyncio.to_thread(cli, cfg, "read", "plc.temp", "--json")
        assert json.loads(r.stdout)["quality"] == "good"

        # SIGHUP with a good schedule: applied without restart
        (tmp_path / "site.csv").write_text(SCHEDULE + "plc.extra,plc,hr:20,uint16,,,,,,\n")
        await server.set("hr", 20, [777])
        agent.signal(signal.SIGHUP)

        async def extra_live():  # type: ignore[no-untyped-def]
            r = await asyncio.to_thread(cli, cfg, "read", "plc.extra", "--json")
            return r.returncode == 0 and json.loads(r.stdout)["value"] == 777.0

        await _until(extra_live)
        r = await asyncio.to_thread(cli, cfg, "status", "--json")
        assert json.loads(r.stdout)["schedule"]["version"] != first_version

        # `outpost reload` does the same, and the event names who asked
        (tmp_path / "site.csv").write_text(SCHEDULE + "plc.more,plc,hr:21,uint16,,,,,,\n")
        await server.set("hr", 21, [778])
        r = await asyncio.to_thread(cli, cfg, "reload")
        assert r.returncode == 0, r.stderr

        async def more_live():  # type: ignore[no-untyped-def]
            r = await asyncio.to_thread(cli, cfg, "read", "plc.more", "--json")
            return r.returncode == 0 and json.loads(r.stdout)["value"] == 778.0

        await _until(more_live)
        r = await asyncio.to_thread(cli, cfg, "events", "--kind", "schedule.load", "--json")
        loads = [(e["actor"], e["detail"]["reason"]) for e in json.loads(r.stdout)]
        assert loads == [
            ("system", "start"),
            ("system", "reload"),
            (getpass.getuser(), "reload"),
        ], loads

        # SIGTERM: stops within 5 s, flushes the buffer, removes its socket
        t0 = time.monotonic()
        agent.signal(signal.SIGTERM)
        code = await asyncio.to_thread(agent.proc.wait, 10)
        assert time.monotonic() - t0 < 5.0
        assert code == 0, agent.log()
        assert not agent.socket.exists()
    finally:
        agent.stop()
        await server.stop()

    async def stopping_seen() -> bool:  # the listener has read what the agent sent last
        return "STOPPING=1" in messages

    await _until(stopping_seen, within=5.0, interval=0.05)
    listening.clear()
    listener.join()
    notify.close()
    joined = "\n".join(messages)
    assert messages[0].startswith("READY=1")
    assert "WATCHDOG=1" in joined
    assert "RELOADING=1" in joined
    assert any(m.startswith("STATUS=") for m in messages)
    assert messages[-1] == "STOPPING=1" or "STOPPING=1" in messages[-3:]

    # everything stored before the stop is in the buffer file (read directly, agent gone)
    r = await asyncio.to_thread(
        cli, cfg, "buffer", "export", "--format", "jsonl", "--point", "plc.temp"
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    values = [row["value"] for row in rows]
    assert 23.5 in values and 30.1 in values
    seqs = [row["seq"] for row in rows]
    assert seqs == sorted(seqs)
    # the log is structured JSON, one event per line
    log_lines = [json.loads(x) for x in agent.log().splitlines() if x.startswith("{")]
    assert any(e.get("event") == "agent.ready" for e in log_lines)
    assert any(e.get("event") == "agent.stopped" for e in log_lines)


def test_cli_says_no_agent_running_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": 1}},
        "point_id,device,address,data_type\nplc.t,plc,hr:0,int16\n",
    )
    for args in (("status",), ("points",), ("read", "plc.t")):
        r = cli(cfg, *args)
        assert r.returncode == 1
        assert r.stderr.strip().count("\n") == 0, r.stderr
        assert "no agent running" in r.stderr


def test_config_check_reports_all_problems(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": "x", "bogus": 1}},
        "point_id,device,address,data_type\nplc.t,plc,hr:0,int16\n",
    )
    r = cli(cfg, "config", "check")
    assert r.returncode == 2
    assert 'key "devices.plc.port"' in r.stderr
    assert 'key "devices.plc.bogus": unknown key' in r.stderr
    assert "Traceback" not in r.stderr

    good = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": 1502}},
        "point_id,device,address,data_type\nplc.t,plc,hr:0,int16\nplc.u,plc,hr:1,int16\n",
    )
    r = cli(good, "config", "check")
    assert r.returncode == 0, r.stderr
    assert "2 point(s)" in r.stdout

    # a schedule error is reported through config check as well, with file:line: column
    (tmp_path / "site.csv").write_text(
        "point_id,device,address,data_type\nplc.t,nodev,hr:0,int16\n"
    )
    r = cli(good, "config", "check")
    assert r.returncode == 2
    assert 'site.csv:2: column "device"' in r.stderr


def test_agent_refuses_to_start_on_invalid_schedule_with_exit_78(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": 1502}},
        "point_id,device,address,data_type\nplc.t,plc,hr:99999,int16\n",
    )
    agent = start_agent(cfg)
    code = agent.proc.wait(timeout=30)
    assert code == 78
    issues = [json.loads(x)["issue"] for x in agent.log().splitlines() if '"schedule.invalid"' in x]
    assert len(issues) == 1 and 'site.csv:2: column "address"' in issues[0]
    assert os.path.exists(cfg) and "Traceback" not in agent.log()


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for n, line in enumerate(lines, 1):
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {n} of the agent's output is not JSON: {line!r}") from None
    return parsed


async def test_json_mode_every_line_is_json_library_records_included(tmp_path: Path) -> None:
    """At level debug pymodbus, uvicorn and asyncio speak too: their records go through the
    same formatter as our events, so every line the agent prints parses as JSON."""
    server = await start_server()
    await server.set("hr", 0, [235])
    cfg = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": server.port}},
        "point_id,device,address,data_type\nplc.temp,plc,hr:0,int16\n",
        log_level="debug",
    )
    agent = start_agent(cfg)
    try:
        await asyncio.to_thread(agent.wait_ready)

        async def pymodbus_spoke() -> bool:
            return '"logger": "pymodbus' in agent.log()

        await _until(pymodbus_spoke)
        r = await asyncio.to_thread(cli, cfg, "status", "--json")
        assert r.returncode == 0, r.stderr
    finally:
        assert agent.stop() == 0
        await server.stop()
    events = _json_lines(agent.log())
    loggers = {str(e.get("logger")) for e in events if "logger" in e}
    assert any(name.startswith("pymodbus") for name in loggers), loggers
    names = [e["event"] for e in events]
    assert "agent.ready" in names and "agent.stopped" in names
    assert all({"event", "level", "timestamp"} <= e.keys() for e in events)


def test_startup_failure_is_a_json_line_too(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": 1502}},
        "point_id,device,address,data_type\nplc.t,plc,hr:99999,int16\n",
    )
    agent = start_agent(cfg)
    assert agent.proc.wait(timeout=30) == 78
    failed = [e for e in _json_lines(agent.log()) if e["event"] == "agent.start_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "schedule invalid: 1 problem(s)"


def test_point_metadata_for_the_uplink_carries_every_field(tmp_path: Path) -> None:
    """What the uplink sends as point metadata is PointMeta.from_point of each point: alarm
    priority, state limit, deadband and delays included (they once were dropped here)."""
    cfg_path = write_config(
        tmp_path,
        {"plc": {"protocol": "modbus", "host": "127.0.0.1", "port": 1502}},
        "point_id,device,address,data_type,units,alarm_state,alarm_priority,alarm_deadband,"
        "alarm_delay,tags\n"
        "plc.leak,plc,coil:1,bool,,1,critical,0.5,10,zone=a\n",
    )
    runtime = Runtime(load_config(cfg_path), install_signal_handlers=False)
    assert runtime.point_metadata() == []  # nothing loaded yet
    runtime.schedule = load_schedule(runtime.config.schedules.files, {"plc": "modbus"})
    (meta,) = runtime.point_metadata()
    assert set(METADATA_FIELDS) <= meta.keys()
    assert meta == PointMeta.from_point(
        runtime.schedule.points[0], runtime.schedule.version
    ).model_dump(mode="json")
    assert (meta["alarm_state"], meta["alarm_priority"], meta["alarm_delay"]) == (
        1.0,
        "critical",
        10.0,
    )
    assert meta["tags"] == {"zone": "a"} and meta["schedule_version"] == runtime.schedule.version
