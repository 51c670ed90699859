"""Package layering: no import cycles anywhere (imports inside functions and under
TYPE_CHECKING count), the contracts in pyproject.toml, and the agent's own layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("agent", "drivers", "fsm", "buffer", "cloud", "point_schedules")

# Runs in a child process: grimp imports nothing of ours, but finding the package adds the
# link tree to sys.path and caches modules, which other tests must not inherit.
_GRAPH_SCRIPT = r"""
import json, sys
import grimp

sys.path.insert(0, sys.argv[1])
g = grimp.build_graph("outpost", cache_dir=None)
cycles = set()
for importer in sorted(g.modules):
    for imported in sorted(g.find_modules_directly_imported_by(importer)):
        if g.chain_exists(importer=imported, imported=importer):
            back = g.find_shortest_chain(importer=imported, imported=importer) or ()
            cycles.add(" -> ".join((importer, *back)))
layers = g.find_illegal_dependencies_for_layers(
    layers=("cli", "core", "api", "control"), containers={"outpost.agent"}
)
illegal = sorted(
    f"{d.importer} -> {d.imported}: "
    + "; ".join(
        " -> ".join(["|".join(sorted(r.heads)), *r.middle, "|".join(sorted(r.tails))])
        for r in sorted(d.routes)
    )
    for d in layers
)
json.dump(
    {"modules": sorted(g.modules), "cycles": sorted(cycles), "agent_layers": illegal}, sys.stdout
)
"""


@pytest.fixture(scope="module")
def link_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree named as installed (``outpost/<top>`` → the repository's folders): grimp and
    import-linter read files, and the editable install's import hook is invisible to them."""
    root = tmp_path_factory.mktemp("import-root")
    (root / "outpost").mkdir()
    for top in TOP:
        (root / "outpost" / top).symlink_to(ROOT / top, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def graph_report(link_root: Path) -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", _GRAPH_SCRIPT, str(link_root)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=link_root,
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, list[str]] = json.loads(out.stdout)
    return report


def test_no_import_cycles(graph_report: dict[str, list[str]]) -> None:
    # the graph is the whole package, not an empty one that trivially has no cycles
    assert {"outpost.agent.core.runtime", "outpost.fsm.modes", "outpost.cloud.wire"} <= set(
        graph_report["modules"]
    )
    cycles = graph_report["cycles"]
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(cycles)


def test_agent_layers(graph_report: dict[str, list[str]]) -> None:
    """Inside the agent: cli → core (the runtime composes) → api → control, never upwards."""
    illegal = graph_report["agent_layers"]
    assert not illegal, "imports against the agent's layers:\n" + "\n".join(illegal)


def test_layering_contracts(link_root: Path) -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint_imports), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(link_root)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
