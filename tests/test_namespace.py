"""The installed layout: one top-level package, ``outpost``, and no code importing the
repository's folders by their bare names (which would work from a checkout and break when
installed, or clash with any other ``buffer``/``agent`` module in site-packages)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("agent", "drivers", "fsm", "buffer", "cloud", "point_schedules")


def _python_files() -> list[Path]:
    skip = {".venv", "build", ".git", "dist"}
    return [p for p in ROOT.rglob("*.py") if not skip.intersection(p.relative_to(ROOT).parts)]


def test_no_bare_imports_of_the_root_folders() -> None:
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in TOP_LEVEL:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert not offenders, "import these as outpost.<folder>:\n" + "\n".join(offenders)


def test_wheel_has_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("outpost-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"outpost"}
    for folder in TOP_LEVEL:
        assert f"outpost/{folder}/__init__.py" in names
    # data files travel with their packages
    assert "outpost/cloud/receiver/migrations/0001_initial.sql" in names
    assert "outpost/point_schedules/examples/demo-site.csv" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "outpost = outpost.agent.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
