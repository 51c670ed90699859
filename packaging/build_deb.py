#!/usr/bin/python3
"""Build ``outpost_<version>_<arch>.deb`` from the checkout with dpkg-deb.

Run with Debian's own interpreter (``/usr/bin/python3``, as ``make deb`` does): the package's
virtual environment under /opt/outpost is created from it, so the installed venv points at
``/usr/bin/python3.11`` of the target box, never at a developer's pyenv or /root.

The venv is built in a staging tree and relocated: scripts' shebangs and pyvenv.cfg are
rewritten to /opt/outpost, bytecode is compiled with the final paths, and the build fails if
any file still names the staging directory. Network: PyPI (dependencies, through pip's cache)
only.

Usage: packaging/build_deb.py [--out DIR] [--source worktree|head] [--compression xz|zstd|gzip]
                              [--work DIR] [--keep-work]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = "/opt/outpost"
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
MAINTAINER = "Outpost developers <outpost@localhost>"

# Packages pip itself needs, not the application: dropped from the shipped venv.
BUILD_ONLY = ("pip", "setuptools", "wheel")


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()


def export_source(dest: Path, source: str) -> str:
    """Copy the checkout into dest; return a description of what was copied.

    ``worktree`` (default) takes tracked and untracked, non-ignored files as they are on disk,
    like the rest of the test suite; ``head`` takes the committed tree only (release builds:
    nothing half-edited reaches the package). Without git, the directory is copied as it is.
    """
    dest.mkdir(parents=True)
    if not (REPO / ".git").exists():
        ignore = shutil.ignore_patterns(
            ".venv", "build", "dist", "var", "*.egg-info", "__pycache__"
        )
        shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=ignore)
        return "the source directory (no git)"
    if source == "head":
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return f"commit {commit} (uncommitted changes are not included)"
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = Path(os.fsdecode(raw))
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return "the working tree"


def build_venv(stage: Path, src: Path) -> Path:
    venv = stage / PREFIX.lstrip("/")
    run(["/usr/bin/python3", "-m", "venv", str(venv)])
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-compile", str(src)],
        env=env,
    )
    run([str(venv / "bin/python"), "-m", "pip", "uninstall", "-q", "-y", *BUILD_ONLY], env=env)
    for name in ("pip", "pip3", f"pip{sys.version_info.major}.{sys.version_info.minor}"):
        (venv / "bin" / name).unlink(missing_ok=True)
    # Point the interpreter at the versioned binary: the package depends on python3.11, and a
    # later default python3 on the box must not change the interpreter under the venv.
    for name in ("python", "python3", PY):
        link = venv / "bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to(f"/usr/bin/{PY}")
    return venv


def relocate(stage: Path, venv: Path) -> None:
    """Rewrite every mention of the staging venv to its installed path."""
    old = str(venv).encode()
    for path in venv.rglob("*"):
        if path.is_symlink() or not path.is_file() or path.suffix == ".pyc":
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, PREFIX.encode()))
    cfg = venv / "pyvenv.cfg"
    lines = [
        line
        for line in cfg.read_text().splitlines()
        if not line.startswith("command")  # the build command line names the staging dir
    ]
    cfg.write_text("\n".join(lines) + "\n")
    for url in venv.rglob("direct_url.json"):
        url.unlink()  # names the temporary source directory; pip treats it as optional
        record = url.parent / "RECORD"
        record.write_text(
            "".join(
                line + "\n"
                for line in record.read_text().splitlines()
                if not line.startswith(f"{url.parent.name}/direct_url.json")
            )
        )


def compile_bytecode(stage: Path, venv: Path) -> None:
    # Compiled here with the installed paths: /opt is read-only to the services, so nothing
    # would ever be compiled on the box (every start would parse every module again).
    run(
        [
            "/usr/bin/python3",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "-s",
            str(stage),
            "-p",
            "/",
            str(venv / "lib"),
        ]
    )


def assert_relocated(stage: Path, venv: Path) -> None:
    needle = str(stage).encode()
    leftovers = [p for p in venv.rglob("*") if p.is_file() and needle in p.read_bytes()]
    if leftovers:
        raise SystemExit(f"staging path left in {len(leftovers)} files, e.g. {leftovers[:5]}")


def install(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def agent_conffile(example: Path) -> str:
    """The shipped /etc/outpost/agent.toml: the example with the installed paths."""
    text = example.read_text()
    replacements = {
        'data_dir = "./var"': 'data_dir = "/var/lib/outpost"',
        'files = ["point_schedules/examples/demo-site.csv"]': 'files = ["schedules/demo-site.csv"]',
    }
    for old, new in replacements.items():
        if old not in text:
            raise SystemExit(f"{example}: expected line not found: {old}")
        text = text.replace(old, new, 1)
    header = (
        "# Installed by the outpost Debian package (a conffile: your edits survive upgrades).\n"
        "# Secrets go to /etc/outpost/outpost.env (0600), read by the service as environment.\n"
        "# Check after editing: outpost config check -c /etc/outpost/agent.toml\n"
    )
    return header + text


def lay_out(stage: Path, src: Path, docs: Path) -> list[str]:
    """Place every file of the package; return the conffiles."""
    (stage / "usr/bin").mkdir(parents=True)
    (stage / "usr/bin/outpost").symlink_to(f"{PREFIX}/bin/outpost")
    for unit in ("outpost.service", "outpost-receiver.service"):
        install(HERE / "systemd" / unit, stage / "lib/systemd/system" / unit, 0o644)
    etc = stage / "etc/outpost"
    etc.mkdir(parents=True)
    (etc / "agent.toml").write_text(agent_conffile(src / "agent.example.toml"))
    (etc / "agent.toml").chmod(0o640)
    install(src / "point_schedules/examples/demo-site.csv", etc / "schedules/demo-site.csv", 0o640)
    install(HERE / "etc/outpost.env", etc / "outpost.env", 0o600)
    install(HERE / "etc/receiver.env", etc / "receiver.env", 0o600)
    install(docs / "outpost.1", stage / "usr/share/man/man1/outpost.1", 0o644)
    man = stage / "usr/share/man/man1/outpost.1"
    with man.open("rb") as f_in, gzip.GzipFile(str(man) + ".gz", "wb", 9, mtime=0) as f_out:
        shutil.copyfileobj(f_in, f_out)
    man.unlink()
    install(docs / "outpost.bash", stage / "usr/share/bash-completion/completions/outpost", 0o644)
    doc = stage / "usr/share/doc/outpost"
    install(HERE / "README.md", doc / "README.md", 0o644)
    install(HERE / "copyright", doc / "copyright", 0o644)
    install(src / "agent.example.toml", doc / "examples/agent.example.toml", 0o644)
    install(HERE / "systemd/serial/serial.conf", doc / "examples/serial.conf", 0o644)
    install(HERE / "prometheus/alerts.yml", doc / "examples/prometheus-alerts.yml", 0o644)
    return [
        "/etc/outpost/agent.toml",
        "/etc/outpost/schedules/demo-site.csv",
        "/etc/outpost/outpost.env",
        "/etc/outpost/receiver.env",
    ]


def control_files(stage: Path, ver: str, arch_: str, conffiles: list[str]) -> None:
    debian = stage / "DEBIAN"
    debian.mkdir()
    size_kib = sum(p.lstat().st_size for p in stage.rglob("*") if not p.is_dir()) // 1024
    control = (
        (HERE / "debian/control.in")
        .read_text()
        .format(
            version=ver,
            arch=arch_,
            installed_size=size_kib,
            maintainer=MAINTAINER,
            python=PY,
        )
    )
    (debian / "control").write_text(control)
    (debian / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
    for script in ("postinst", "prerm", "postrm"):
        install(HERE / "debian" / script, debian / script, 0o755)
    md5 = []
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file():
            continue
        md5.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")
    (debian / "md5sums").write_text("".join(md5))


def generate_docs(venv: Path, out: Path) -> None:
    out.mkdir()
    run(
        [str(venv / "bin/python"), str(HERE / "gen_cli_docs.py"), "--out", str(out)],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--source", choices=("worktree", "head"), default="worktree")
    parser.add_argument(
        "--compression",
        choices=("xz", "zstd", "gzip"),
        default="xz",
        help="xz: smallest (for metered links), zstd: ~30x faster to build (tests)",
    )
    parser.add_argument("--work", type=Path, default=REPO / "build" / "deb")
    parser.add_argument("--keep-work", action="store_true", help="keep the staging tree")
    args = parser.parse_args()
    if Path(sys.executable).resolve().parent != Path("/usr/bin"):
        print(
            f"run me with /usr/bin/python3 (not {sys.executable}): the venv must point at the "
            "system interpreter the package depends on",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    ver, arch_ = version(), arch()
    os.umask(0o022)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    src = work / "src"
    print(f"building outpost {ver} ({arch_}) from {export_source(src, args.source)}")
    stage = work / f"outpost_{ver}_{arch_}"
    venv = build_venv(stage, src)
    generate_docs(venv, work / "docs")
    relocate(stage, venv)
    compile_bytecode(stage, venv)
    assert_relocated(stage, venv)
    conffiles = lay_out(stage, src, work / "docs")
    control_files(stage, ver, arch_, conffiles)
    args.out.mkdir(parents=True, exist_ok=True)
    deb = args.out / f"outpost_{ver}_{arch_}.deb"
    run(
        ["dpkg-deb", "--root-owner-group", f"-Z{args.compression}", "--build", str(stage), str(deb)]
    )
    if not args.keep_work:
        shutil.rmtree(work)  # ~200 MB of staging; --keep-work leaves it for inspection
    print(f"{deb}: {deb.stat().st_size / 1e6:.1f} MB in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
