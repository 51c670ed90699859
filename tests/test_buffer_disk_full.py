"""Disk full under the real agent (issue 13 item 6): the data dir is a small tmpfs, a real
`outpost run` polls a real Modbus server and syncs to a real receiver, then the test fills the
filesystem. The buffer cannot commit: the built-in system alarm ``buffer:commit_failed`` is
raised, the site goes ``degraded``, and ``WATCHDOG=1`` stops (systemd's notify socket is ours).
Space freed: the alarm clears, the mode recovers, the watchdog resumes, and every row held in
memory meanwhile is committed and synced — buffer and receiver end identical, no seq gap."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.inspect import export_readings
from tests.agent_process import start_agent, write_config
from tests.modbus_server import start_server
from tests.receiver_fixtures import ReceiverHandle
from tests.uplink_harness import (
    all_synced,
    assert_identical,
    buffer_event_ids,
    buffer_rows,
    cloud_config,
    make_uplink,
    wait_for,
)

pytest_plugins = ("tests.receiver_fixtures",)

GW = "gw-disk-full"
POINTS = 60
T = TypeVar("T")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/var`` as an 8 MB tmpfs (we run as root in the test environment)."""
    mount = tmp_path / "var"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0750", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class NotifyListener:
    """systemd's side of sd_notify: every datagram, in order, with its arrival index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._on = threading.Event()
        self._on.set()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while self._on.is_set():
            try:
                self.messages.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue

    def count(self, prefix: str, since: int = 0) -> int:
        return sum(1 for m in self.messages[since:] if m.startswith(prefix))

    def close(self) -> None:
        self._on.clear()
        self._thread.join()
        self._sock.close()


async def until(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {within}s (last: {last!r})")


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full (ENOSPC)."""
    filler = directory / "filler.bin"
    chunk = b"\0" * 65536
    with filler.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def test_disk_full_raises_alarm_degrades_stops_watchdog_then_recovers(
    small_tmpfs: Path, tmp_path: Path, receiver: ReceiverHandle
) -> None:
    server = await start_server()
    token = await receiver.enroll(GW)
    (small_tmpfs / "gateway.token").write_text(token)
    rows = [f"plc.r{i:02d},plc,hr:{i},uint16,,,,,,0.01" for i in range(POINTS)]
    cfg = write_config(
        tmp_path,
        {
            "plc": {
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "poll_interval": 0.1,
            }
        },
        "point_id,device,address,data_type,byte_order,scale,units,description,deadband,heartbeat\n"
        + "\n".join(rows)
        + "\n",
        gateway_id=GW,
        extra=(
            "[scheduler]\nwatchdog_stall_s = 3\n"
            f'[cloud]\nurl = "{receiver.url}"\nheartbeat_interval = 1\nflush_interval = 0.2\n'
            "backoff_min = 0.1\nbackoff_max = 1\n"
        ),
    )
    listener = NotifyListener(tmp_path / "notify.sock")
    agent = start_agent(cfg, {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"})
    transport = httpx.AsyncHTTPTransport(uds=str(agent.socket))
    api = httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=10)
    filler: Path | None = None

    async def status() -> dict[str, Any]:
        r = await api.get("/status")
        r.raise_for_status()
        return dict(r.json())

    async def alarm() -> dict[str, Any]:
        r = await api.get("/alarms/buffer:commit_failed")
        r.raise_for_status()
        return dict(r.json())

    try:
        await asyncio.to_thread(agent.wait_ready)

        async def syncing() -> bool:
            s = await status()
            return bool(s["ready"] and s["buffer"]["rows"] > 1000 and s["uplink"]["connected"])

        await until(syncing, 30, "agent polling, buffering and syncing")
        assert (await alarm())["state"] == "normal"
        assert (await status())["mode"]["mode"] == "normal"

        # --- the disk fills up ---------------------------------------------------------------
        filler = await asyncio.to_thread(fill, small_tmpfs)

        async def raised() -> dict[str, Any] | None:
            a = await alarm()
            return a if a["state"] == "unack_active" else None

        a = await until(raised, 60, "buffer:commit_failed raised")
        assert a["priority"] == "high" and "disk full" in a["description"]

        async def degraded() -> dict[str, Any] | None:
            m = (await status())["mode"]
            return m if m["mode"] == "degraded" else None

        mode = await until(degraded, 10, "mode degraded")
        assert "buffer: cannot commit" in str(mode), mode
        s = await status()
        assert s["buffer"]["pending_rows"] > 0
        # the watchdog stops: after the stall, STATUS= keeps coming but WATCHDOG=1 does not
        await until(
            lambda: _async("buffer cannot commit" in agent.log()), 30, "agent.unhealthy logged"
        )
        mark = len(listener.messages)
        await until(lambda: _async(listener.count("STATUS=", mark) >= 3), 15, "three STATUS=")
        assert listener.count("WATCHDOG=1", mark) == 0, listener.messages[mark:]

        # --- space comes back ----------------------------------------------------------------
        filler.unlink()
        filler = None

        async def cleared() -> bool:
            return (await alarm())["state"] in ("rtn_unack", "normal")

        await until(cleared, 30, "buffer:commit_failed cleared")

        async def recovered() -> bool:
            s = await status()
            return s["mode"]["mode"] == "normal" and s["buffer"]["pending_rows"] < 5 * POINTS

        await until(recovered, 30, "mode normal, memory drained")
        mark = len(listener.messages)
        await until(lambda: _async(listener.count("WATCHDOG=1", mark) >= 1), 15, "WATCHDOG=1 again")
        s = await status()
        assert s["buffer"]["dropped_rows"] == 0

        async def synced() -> bool:
            s = await status()
            return s["buffer"]["unsynced_rows"] == 0 and s["buffer"]["unsynced_events"] == 0

        await until(synced, 60, "backlog synced")
        assert await asyncio.to_thread(agent.stop) == 0, agent.log()
    finally:
        await api.aclose()
        agent.stop()
        listener.close()
        await server.stop()
        if filler is not None:
            with contextlib.suppress(OSError):
                filler.unlink()

    path = small_tmpfs / "buffer.db"
    # rows polled between the last sync and the stop: drained with the same buffer class
    buf = ColumnarBuffer(path, commit_interval=0.05, quick_check=False)
    buf.open()
    try:
        uplink = make_uplink(cloud_config(receiver.url), GW, small_tmpfs, buf)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: all_synced(buf), 30, "drained after stop")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        buf.close()
    out = io.StringIO()
    export_readings(path, out, "jsonl", None, None, None)
    seqs = [json.loads(line)["seq"] for line in out.getvalue().splitlines()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a committed seq went missing"
    assert_identical(buffer_rows(path), await receiver.readings(GW))
    assert await receiver.event_ids(GW) == buffer_event_ids(path) != []
    assert "buffer.commit_failing" in agent.log()


async def _async(value: bool) -> bool:
    return value


async def test_engine_and_mode_machine_take_the_buffer_fault() -> None:
    """The seam in isolation: AlarmEngine.buffer_commit raises/clears the built-in alarm,
    ModeMachine.evaluate(system_faults=...) degrades and recovers."""
    from outpost.fsm.alarms import BUFFER_COMMIT_ID, AlarmEngine
    from outpost.fsm.config import AlarmsConfig, ModesConfig
    from outpost.fsm.modes import ModeMachine

    class Clock:
        t = 1_000.0

        def now(self) -> float:
            return self.t

    clock = Clock()
    events: list[tuple[str, str]] = []

    def emit(ts: float, kind: str, source: str, actor: str | None, detail: Any) -> None:
        events.append((kind, source))

    engine = AlarmEngine([], AlarmsConfig(), clock=clock, emit=emit)
    modes = ModeMachine(ModesConfig(), clock=clock, emit=emit, write=_no_write, has_uplink=False)
    assert engine.get(BUFFER_COMMIT_ID).state == "normal"
    engine.buffer_commit(True, clock.now())
    assert engine.get(BUFFER_COMMIT_ID).state == "unack_active"
    assert ("alarm", BUFFER_COMMIT_ID) in events
    fault = ("buffer: cannot commit for 3s, 10 rows only in memory",)
    mode = await modes.evaluate(
        devices_in_comms_loss=set(),
        uplink_ok_age_s=None,
        active_alarms=engine.active_alarms(),
        system_faults=fault,
    )
    assert mode == "degraded"
    clock.t += 5
    engine.buffer_commit(False, clock.now())
    assert engine.get(BUFFER_COMMIT_ID).state == "rtn_unack"
    mode = await modes.evaluate(
        devices_in_comms_loss=set(), uplink_ok_age_s=None, active_alarms=engine.active_alarms()
    )
    assert mode == "normal"


async def _no_write(point_id: str, value: float, actor: str) -> Any:
    raise AssertionError("no failsafe writes expected")
