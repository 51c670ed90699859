"""Where the agent's memory goes: the real runtime in this process under tracemalloc.

Serves ``--devices`` × ``--points`` uint16 registers from ``bench/modbus_responder.py`` in a
separate process, runs ``Runtime`` here with tracemalloc on, and after ``--warmup`` seconds of
polling prints the RSS, what tracemalloc sees (Python allocations, by file and by line) and
the modules imported. RSS minus the traced total is interpreter, shared libraries and C
allocations (SQLite's cache, OpenSSL, extension modules).

It also walks the objects reachable from the loaded schedule and from the point table
(``sys.getsizeof`` of each object once, shared objects counted once, classes, modules and
enum members not counted) and prints their bytes per point.

    .venv/bin/python bench/agent_memory.py --devices 50            # 10,000 points
    .venv/bin/python bench/agent_memory.py --devices 500 --top 40  # 100,000 points

tracemalloc makes the agent several times slower; figures here are memory, never CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import tempfile
import tracemalloc
from enum import Enum
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _walk_size(roots: list[Any], seen: set[int]) -> tuple[int, int]:
    """(bytes, objects) reachable from ``roots`` not in ``seen`` (which it extends)."""
    total = count = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | ModuleType | FunctionType | Enum):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        count += 1
        stack.extend(gc.get_referents(obj))
    return total, count


def _object_sizes(runtime: Any) -> None:
    if runtime.schedule is None or runtime.table is None:
        return
    n = len(runtime.schedule.points) or 1
    seen: set[int] = set()
    groups = [g for c in runtime.coordinators.values() for g in c.groups]
    print("\n-- objects reachable (sys.getsizeof walk, each object once, in this order)")
    for label, roots in (
        ("schedule (points and what they hold)", [runtime.schedule]),
        ("point table (ids, index, arrays)", [runtime.table]),
        ("point groups (index lists, driver plans)", groups),
    ):
        size, count = _walk_size(roots, seen)
        print(f"{size / 2**20:8.2f} MB {count:9d}  {size / n:7.1f} B/point  {label}")


async def _measure(cfg_path: Path, warmup: float, top: int) -> None:
    from outpost.agent.core.config import load_config
    from outpost.agent.core.logs import configure_logging
    from outpost.agent.core.runtime import Runtime

    cfg = load_config(cfg_path)
    configure_logging("warning", "json")
    runtime = Runtime(cfg, install_signal_handlers=False)
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(warmup)
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    rss = _rss_mb()
    traced = sum(s.size for s in snap.statistics("filename"))
    readings = runtime.pipeline.stats.readings if runtime.pipeline else 0
    points = len(runtime.table) if runtime.table else 0
    print(f"points {points}  readings so far {readings}")
    print(f"RSS {rss:.1f} MB   traced Python allocations {traced / 2**20:.1f} MB")
    print(f"traced bytes per point: {traced / max(points, 1):.0f} (imports included)")
    print(f"modules imported: {len(sys.modules)}")
    _object_sizes(runtime)
    print("\n-- by file")
    for stat in snap.statistics("filename")[:top]:
        frame = stat.traceback[0]
        print(f"{stat.size / 2**20:8.2f} MB {stat.count:9d}  {_short(frame.filename)}")
    print("\n-- by line")
    for stat in snap.statistics("lineno")[:top]:
        frame = stat.traceback[0]
        print(
            f"{stat.size / 2**20:8.2f} MB {stat.count:9d}  {_short(frame.filename)}:{frame.lineno}"
        )
    runtime.request_stop()
    await task


def main() -> None:
    from poll_modbus import _write_site

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--base-port", type=int, default=21000)
    args = ap.parse_args()
    sim = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "modbus_responder.py"),
            "--devices",
            str(args.devices),
            "--registers",
            str(args.points + 1),
            "--base-port",
            str(args.base_port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        if sim.stdout.readline().strip() != "ready":
            raise SystemExit("responder failed to start")
        with tempfile.TemporaryDirectory(prefix="outpost-mem-") as d:
            cfg = _write_site(Path(d), args.devices, args.points, args.base_port, 1.0, "uint16")
            tracemalloc.start(1)
            asyncio.run(_measure(cfg, args.warmup, args.top))
    finally:
        sim.kill()
        sim.wait()


if __name__ == "__main__":
    main()
