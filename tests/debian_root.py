"""A clean Debian bookworm root (debootstrap, minbase) to install the package into.

The pristine root is cached as a tarball under /var/cache/outpost-test-root, keyed by the
date and the package list, so reruns on the same day take a second; each test extracts its
own copy. Commands run in the root through ``chroot`` inside a private mount namespace
(``unshare -m``) with /proc and /dev mounted, so nothing leaks onto the host if a test dies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("OUTPOST_TEST_ROOT_CACHE", "/var/cache/outpost-test-root"))
SUITE = "bookworm"
# What a Debian gateway has besides minbase: python3 (the package's interpreter), adduser
# (its postinst), procps (/bin/kill for ExecReload), systemd (systemd-analyze verify,
# security) and man-db (`man outpost`, Documentation=man:outpost(1)).
INCLUDE = ("python3", "adduser", "procps", "systemd", "man-db")
# Bump when pristine_tarball() changes what it does to the root: older caches are rebuilt.
RECIPE = 2
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses for bookworm (deb822 or one-line format)."""
    sources = [Path("/etc/apt/sources.list")]
    sources += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    sources += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, v in (
                        line.split(":", 1)
                        for line in block.splitlines()
                        if ":" in line and not line.lstrip().startswith("#")
                    )
                )
                suites = fields.get("suites", "").split()
                for uri in fields.get("uris", "").split():
                    if SUITE in suites and "security" not in uri:
                        return uri
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == SUITE and "security" not in m.group(1):
                    return m.group(1)
    raise RuntimeError(f"no Debian {SUITE} mirror in /etc/apt/sources.list(.d)")


def pristine_tarball() -> Path:
    """The cached tarball of a fresh root, made with debootstrap when missing (locked)."""
    key = hashlib.sha256(f"{RECIPE} {' '.join(INCLUDE)}".encode()).hexdigest()[:8]
    name = f"{SUITE}-minbase-{dt.date.today():%Y%m%d}-{key}.tar"
    (CACHE / "debs").mkdir(parents=True, exist_ok=True)
    target = CACHE / name
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same root
        if target.exists():
            return target
        work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
        try:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    # Keeps the downloaded .debs: tomorrow's root needs no download.
                    f"--cache-dir={CACHE / 'debs'}",
                    f"--include={','.join(INCLUDE)}",
                    SUITE,
                    str(work / "root"),
                    debian_mirror(),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            # man-db's trigger re-indexes every manual page on each dpkg run (seconds);
            # `man outpost` finds the page without the index.
            (work / "root/var/lib/man-db/auto-update").unlink(missing_ok=True)
            subprocess.run(
                ["tar", "-C", str(work / "root"), "-cf", str(work / "root.tar"), "."], check=True
            )
            os.replace(work / "root.tar", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in CACHE.glob(f"{SUITE}-minbase-*.tar"):
            if old != target:
                old.unlink(missing_ok=True)
        return target


@dataclass
class DebianRoot:
    path: Path

    @classmethod
    def fresh(cls, dest: Path, tarball: Path) -> DebianRoot:
        """A copy of the pristine root (tarball from pristine_tarball()) at dest."""
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(dest), "-xf", str(tarball)], check=True)
        return cls(dest)

    def argv(
        self, cmd: Sequence[str], user: str | None = None, env: Mapping[str, str] | None = None
    ) -> list[str]:
        """argv that runs cmd in the root (as user, with only PATH, LANG and env set)."""
        inner = list(cmd)
        if user is not None:
            inner = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *inner]
        environment = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
        inner = ["env", "-i", *(f"{k}={v}" for k, v in environment.items()), *inner]
        mounts = (
            'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"'
        )
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            mounts,
            str(self.path),
            *inner,
        ]

    def run(
        self,
        cmd: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(cmd, user, env), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} (in {self.path}) exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    @contextlib.contextmanager
    def background(
        self,
        cmd: Sequence[str],
        log: Path,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[subprocess.Popen[bytes]]:
        """A long-running command in the root, stopped with SIGTERM (then SIGKILL) on exit.

        unshare, sh and chroot all exec, so the Popen's pid is the command itself."""
        with log.open("wb") as out:
            proc = subprocess.Popen(self.argv(cmd, user, env), stdout=out, stderr=subprocess.STDOUT)
            try:
                yield proc
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

    def snapshot(self, skip: Sequence[str]) -> dict[str, tuple[int, int, int, str]]:
        """Every path in the root (but those under skip) → (mode, uid, gid, content digest)."""
        result: dict[str, tuple[int, int, int, str]] = {}
        skipped = tuple(s.rstrip("/") for s in skip)
        for dirpath, dirnames, filenames in os.walk(self.path):
            rel_dir = "/" + os.path.relpath(dirpath, self.path).lstrip(".")
            dirnames[:] = [d for d in dirnames if f"{rel_dir.rstrip('/')}/{d}" not in skipped]
            for name in [*dirnames, *filenames]:
                rel = f"{rel_dir.rstrip('/')}/{name}"
                if rel in skipped:
                    continue
                full = Path(dirpath) / name
                st = full.lstat()
                digest = ""
                if full.is_symlink():
                    digest = os.readlink(full)
                elif full.is_file():
                    digest = hashlib.sha256(full.read_bytes()).hexdigest()
                result[rel] = (st.st_mode, st.st_uid, st.st_gid, digest)
        return result
