"""The Debian package, for real: built from this checkout, installed into a clean bookworm root.

Slow (marked ``slow``, part of ``make test``): one package build per session (~30 s with
zstd), a debootstrap root cached per day under /var/cache/outpost-test-root (~1 min the first
time, ~1 s after), then install, run and purge in copies of that root. Timings are printed
(``pytest -s`` shows them).

Also here, fast: the hardened units' ``systemd-analyze security`` scores and the Prometheus
alert rules (``promtool check rules`` and ``promtool test rules``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.debian_root import DebianRoot, pristine_tarball

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
AGENT_MAX_EXPOSURE = 2.5
RECEIVER_MAX_EXPOSURE = 2.0
MODBUS_DEVICES = ("cdu-01", "ups-01", "pdu-01")
# Of the demo schedule's Modbus points, the sim's UPS has no register for this one (on purpose).
EXPECTED_BAD = {"ups-01.bypass_voltage"}

pytestmark = pytest.mark.slow
# The units' UMask=0027 for a command run in the root.
UNIT_UMASK = ["sh", "-c", 'umask 027 && exec "$@"', "sh"]


class Clock:
    """Prints how long each step took (pytest -s shows it)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.start = self.last = time.monotonic()

    def step(self, name: str) -> None:
        now = time.monotonic()
        print(f"[{self.what}] {name}: {now - self.last:.1f} s (total {now - self.start:.1f} s)")
        self.last = now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exposure(unit: str, cwd: Path | None = None, root: DebianRoot | None = None) -> float:
    cmd = ["systemd-analyze", "security", "--offline=true", "--no-pager", unit]
    if root is not None:
        out = root.run(cmd).stdout
    else:
        out = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert m, out
    return float(m.group(1))


def service_env(root: DebianRoot) -> dict[str, str]:
    """The environment systemd gives the agent from EnvironmentFile= (root reads the file)."""
    env = {}
    for line in (root.path / "etc/outpost/outpost.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def root_tarball() -> Iterator[Future[Path]]:
    """The clean root, made (or found in the cache) while the package builds."""
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(pristine_tarball)


@pytest.fixture(scope="session")
def outpost_deb(
    tmp_path_factory: pytest.TempPathFactory, root_tarball: Future[Path]
) -> Iterator[Path]:
    clock = Clock("deb")
    out = tmp_path_factory.mktemp("deb")
    built = subprocess.run(
        [
            "/usr/bin/python3",
            str(PACKAGING / "build_deb.py"),
            "--out",
            str(out),
            "--work",
            str(out / "work"),
            "--compression",
            "zstd",
            "--source",
            os.environ.get("OUTPOST_DEB_SOURCE", "worktree"),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert not (out / "work").exists()  # the staging tree is removed after a build
    (deb,) = out.glob("outpost_*_*.deb")
    clock.step(f"built {deb.name} ({deb.stat().st_size / 1e6:.1f} MB)")
    yield deb
    shutil.rmtree(out, ignore_errors=True)


def install(root: DebianRoot, deb: Path) -> None:
    shutil.copy(deb, root.path / "tmp/outpost.deb")
    # unsafe-io: no fsync per file; the root is thrown away after the test.
    root.run(["dpkg", "--force-unsafe-io", "-i", "/tmp/outpost.deb"])
    (root.path / "tmp/outpost.deb").unlink()


@pytest.fixture(scope="module")
def installed(
    outpost_deb: Path, root_tarball: Future[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DebianRoot]:
    clock = Clock("root")
    tarball = root_tarball.result()
    clock.step("clean bookworm root ready (built alongside the package when not cached)")
    root = DebianRoot.fresh(tmp_path_factory.mktemp("debian") / "root", tarball)
    clock.step("root extracted")
    install(root, outpost_deb)
    clock.step("dpkg -i")
    yield root
    shutil.rmtree(root.path, ignore_errors=True)  # ~0.5 GB; pytest would keep it for 3 runs


# ---------------------------------------------------------------------------- units, alerts


@pytest.mark.parametrize(
    ("unit", "limit"),
    [("outpost.service", AGENT_MAX_EXPOSURE), ("outpost-receiver.service", RECEIVER_MAX_EXPOSURE)],
)
def test_units_exposure_scores(unit: str, limit: float) -> None:
    score = exposure(unit, cwd=PACKAGING / "systemd")
    print(f"{unit}: exposure {score}")
    assert score <= limit


def test_agent_unit_sees_its_peers_as_themselves() -> None:
    """The local API records operator actions under the peer's user name (SO_PEERCRED); in a
    user namespace (PrivateUsers=) every technician would be "nobody"."""
    unit = (PACKAGING / "systemd/outpost.service").read_text()
    settings = [line.split("=", 1) for line in unit.splitlines() if "=" in line]
    assert [v for k, v in settings if k.strip() == "PrivateUsers"] in ([], ["false"], ["no"])
    dropin = (PACKAGING / "systemd/serial/serial.conf").read_text()
    assert not re.search(r"^PrivateUsers=(true|yes)", dropin, re.M)


def test_alert_rules_check_and_unit_tests() -> None:
    rules = PACKAGING / "prometheus"
    check = subprocess.run(
        ["promtool", "check", "rules", "alerts.yml"], cwd=rules, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    tested = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"], cwd=rules, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    for alert in (
        "OutpostAgentDown",
        "OutpostBufferBacklogGrowing",
        "OutpostDeviceDown",
        "OutpostUplinkFailing",
        "OutpostDiskAlmostFull",
    ):
        assert alert in (rules / "alerts_test.yml").read_text()


# ---------------------------------------------------------------------------- the package


def test_package_metadata(outpost_deb: Path) -> None:
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(outpost_deb)], check=True, capture_output=True, text=True
    ).stdout
    assert re.search(r"^Package: outpost$", fields, re.M)
    assert re.search(r"^Depends: python3\.11, adduser, procps$", fields, re.M)
    conffiles = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(outpost_deb)], check=True, capture_output=True
    ).stdout
    listing = subprocess.run(
        ["tar", "-xO", "./conffiles"], input=conffiles, check=True, capture_output=True
    ).stdout.decode()
    assert set(listing.split()) == {
        "/etc/outpost/agent.toml",
        "/etc/outpost/schedules/demo-site.csv",
        "/etc/outpost/outpost.env",
        "/etc/outpost/receiver.env",
    }


def test_installed_files_users_and_modes(installed: DebianRoot) -> None:
    root = installed
    passwd = root.run(["getent", "passwd", "outpost"]).stdout.strip().split(":")
    assert int(passwd[2]) < 1000, passwd  # a system user
    assert passwd[5:] == ["/var/lib/outpost", "/usr/sbin/nologin"]
    assert root.run(["getent", "group", "outpost"]).stdout.startswith("outpost:")

    def stat(path: str) -> str:
        return root.run(["stat", "-c", "%U:%G %a", path]).stdout.strip()

    assert stat("/etc/outpost/agent.toml") == "root:outpost 640"
    assert stat("/etc/outpost/schedules/demo-site.csv") == "root:outpost 640"
    assert stat("/etc/outpost/outpost.env") == "root:root 600"
    assert stat("/etc/outpost/receiver.env") == "root:root 600"
    assert stat("/var/lib/outpost") == "outpost:outpost 750"
    assert stat("/var/lib/outpost-receiver") == "outpost:outpost 750"
    assert root.run(["readlink", "-f", "/usr/bin/outpost"]).stdout.strip() == (
        "/opt/outpost/bin/outpost"
    )
    # The venv runs on the box's own interpreter, nothing points back at the build machine.
    assert root.run(["readlink", "-f", "/opt/outpost/bin/python"]).stdout.strip() == (
        "/usr/bin/python3.11"
    )
    leaks = root.run(
        ["grep", "-rlI", "-e", "/root/", "-e", "/work/", "-e", "/tmp/", "/opt/outpost/bin"],
        check=False,
    )
    assert leaks.stdout == "", leaks.stdout
    shebang = (root.path / "opt/outpost/bin/outpost").read_text().splitlines()[0]
    assert shebang == "#!/opt/outpost/bin/python"
    conf = (root.path / "etc/outpost/agent.toml").read_text()
    assert 'data_dir = "/var/lib/outpost"' in conf


def test_cli_man_page_and_completion(installed: DebianRoot) -> None:
    root = installed
    help_text = root.run(["outpost", "--help"], user="outpost").stdout
    assert "schedule" in help_text and "run" in help_text
    man = root.run(["man", "-P", "cat", "outpost"], env={"MANWIDTH": "100"}).stdout
    assert "OUTPOST(1)" in man
    assert "outpost schedule validate" in man
    assert "/etc/outpost/agent.toml" in man
    completion = (
        "source /usr/share/bash-completion/completions/outpost; "
        'COMP_WORDS=(outpost sch); COMP_CWORD=1; _outpost; echo "${COMPREPLY[*]}"; '
        "COMP_WORDS=(outpost schedule validate --j); COMP_CWORD=3; _outpost; "
        'echo "${COMPREPLY[*]}"'
    )
    lines = root.run(["bash", "-c", completion]).stdout.splitlines()
    assert lines == ["schedule", "--json"]


def test_config_and_schedule_check_as_outpost(installed: DebianRoot) -> None:
    root = installed
    env = service_env(root)
    checked = root.run(
        ["outpost", "config", "check", "-c", "/etc/outpost/agent.toml"], user="outpost", env=env
    )
    assert checked.returncode == 0
    validated = root.run(
        [
            "outpost",
            "schedule",
            "validate",
            "-c",
            "/etc/outpost/agent.toml",
            "/etc/outpost/schedules/demo-site.csv",
        ],
        user="outpost",
        env=env,
    )
    assert re.search(r"^valid: \d+ points in 1 file", validated.stdout, re.M), validated.stdout
    # Without the service's environment the missing secret is named, not a traceback.
    bare = root.run(
        ["outpost", "config", "check", "-c", "/etc/outpost/agent.toml"], user="outpost", check=False
    )
    assert bare.returncode != 0
    assert "PDU_COMMUNITY" in bare.stderr and "Traceback" not in bare.stderr


def test_units_verify_and_scores_installed(installed: DebianRoot) -> None:
    root = installed
    units = ["/lib/systemd/system/outpost.service", "/lib/systemd/system/outpost-receiver.service"]
    verified = root.run(["systemd-analyze", "verify", *units], check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stderr.strip() == "", verified.stderr
    assert exposure("outpost.service", root=root) <= AGENT_MAX_EXPOSURE
    assert exposure("outpost-receiver.service", root=root) <= RECEIVER_MAX_EXPOSURE
    # The documented serial drop-in (Modbus RTU) keeps the agent within its bound.
    dropin = root.path / "etc/systemd/system/outpost.service.d"
    dropin.mkdir(parents=True)
    shutil.copy(root.path / "usr/share/doc/outpost/examples/serial.conf", dropin / "serial.conf")
    try:
        verified = root.run(["systemd-analyze", "verify", "outpost.service"], check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert exposure("outpost.service", root=root) <= AGENT_MAX_EXPOSURE
    finally:
        shutil.rmtree(dropin)


def write_test_site(root: DebianRoot) -> tuple[Path, Path]:
    """A Modbus-only site (the demo's CDU, UPS and PDU) on free ports: sim + agent config."""
    ports = {dev: free_port() for dev in MODBUS_DEVICES}
    sim = "".join(
        f'[devices.{dev}]\nkind = "modbus-{dev.split("-")[0]}"\nhost = "127.0.0.1"\n'
        f"port = {port}\nunit_id = 1\n\n"
        for dev, port in ports.items()
    )
    sim_site = root.path / "tmp/sim-site.toml"
    sim_site.write_text(f'control = "127.0.0.1:{free_port()}"\ntick = 1.0\n\n{sim}')
    with (root.path / "etc/outpost/schedules/demo-site.csv").open(newline="") as f:
        rows = [r for r in csv.reader(f) if not r or not r[0].startswith("#")]
    schedule = root.path / "etc/outpost/schedules/modbus-site.csv"
    with schedule.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *(r for r in rows[1:] if r and r[1] in ports)])
    devices = "".join(
        f'[devices.{dev}]\nprotocol = "modbus"\nhost = "127.0.0.1"\nport = {port}\n'
        "unit_id = 1\ntimeout = 1.0\npoll_interval = 1.0\n\n"
        for dev, port in ports.items()
    )
    config = root.path / "etc/outpost/modbus-site.toml"
    config.write_text(
        '[agent]\nid = "pkg-test-gw"\nsite = "package test"\ndata_dir = "/var/lib/outpost"\n\n'
        '[schedules]\nfiles = ["schedules/modbus-site.csv"]\n\n'
        f'[api]\nsocket = "outpost.sock"\nbind = "127.0.0.1:{free_port()}"\n\n'
        '[logging]\nformat = "json"\n\n' + devices
    )
    for path in (schedule, config):
        os.chown(path, 0, int(root.run(["getent", "group", "outpost"]).stdout.split(":")[2]))
        path.chmod(0o640)
    sim_site.chmod(0o644)
    return sim_site, config


def good_points(root: DebianRoot, config: str) -> dict[str, dict]:
    out = root.run(["outpost", "points", "-c", config, "--json"], user="outpost", check=False)
    if out.returncode != 0:
        return {}
    return {r["point_id"]: r for r in json.loads(out.stdout) if r["quality"] == "good"}


def test_agent_polls_the_simulator_as_outpost(installed: DebianRoot, tmp_path: Path) -> None:
    """`outpost run` as user outpost, under MemoryDenyWriteExecute's kernel equivalent."""
    clock = Clock("run")
    root = installed
    sim_site, config_path = write_test_site(root)
    config = "/" + str(config_path.relative_to(root.path))
    shutil.copy(Path(__file__).with_name("mdwe_exec.py"), root.path / "tmp/mdwe_exec.py")
    # The wrapper really switches MDWE on (and exec keeps it).
    probe = root.run(
        [
            "/opt/outpost/bin/python",
            "/tmp/mdwe_exec.py",
            "/opt/outpost/bin/python",
            "-c",
            "import ctypes; print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))",
        ]
    )
    assert probe.stdout.strip() == "1"
    root.run(["outpost", "config", "check", "-c", config], user="outpost")
    expected = {
        row[0]
        for row in csv.reader((root.path / "etc/outpost/schedules/modbus-site.csv").open())
        if row and row[0] != "point_id"
    } - EXPECTED_BAD
    sim = ["outpost", "sim", "--site", "/" + str(sim_site.relative_to(root.path))]
    # As the unit runs it: UMask=0027, MemoryDenyWriteExecute (its kernel form), user outpost.
    agent = [*UNIT_UMASK, "/opt/outpost/bin/python", "/tmp/mdwe_exec.py"]
    agent += ["/usr/bin/outpost", "run", "-c", config]
    # A technician in group outpost and a user outside it (the latter with a readable copy
    # of the config, so that what stops them is the socket, not the config file).
    root.run(["useradd", "--no-create-home", "--groups", "outpost", "tech"])
    root.run(["useradd", "--no-create-home", "visitor"])
    shutil.copy(config_path, root.path / "tmp/visitor.toml")
    (root.path / "tmp/visitor.toml").chmod(0o644)
    with (
        root.background(sim, tmp_path / "sim.log", user="outpost") as sim_proc,
        root.background(agent, tmp_path / "agent.log", user="outpost") as agent_proc,
    ):
        deadline = time.monotonic() + 90
        good: dict[str, dict] = {}
        while time.monotonic() < deadline and not expected <= good.keys():
            assert agent_proc.poll() is None, (tmp_path / "agent.log").read_text()
            assert sim_proc.poll() is None, (tmp_path / "sim.log").read_text()
            good = good_points(root, config)
            time.sleep(0.5)
        clock.step(f"{len(good)} points good")
        assert expected <= good.keys(), sorted(expected - good.keys())
        supply = good["cdu-01.supply_temp"]["value"]
        assert 5 < supply < 60, supply
        socket_mode = root.run(["stat", "-c", "%U:%G %a", "/var/lib/outpost/outpost.sock"])
        assert socket_mode.stdout.strip() == "outpost:outpost 660"
        status = root.run(["outpost", "status", "-c", config, "--json"], user="tech")
        assert set(json.loads(status.stdout)["devices"]) == set(MODBUS_DEVICES)
        refused = root.run(
            ["outpost", "status", "-c", "/tmp/visitor.toml"], user="visitor", check=False
        )
        assert refused.returncode != 0
        assert "outpost" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        agent_proc.terminate()
        assert agent_proc.wait(timeout=20) == 0, (tmp_path / "agent.log").read_text()
        clock.step("agent stopped cleanly")
    stats = json.loads(
        root.run(["outpost", "buffer", "stats", "-c", config, "--json"], user="outpost").stdout
    )
    assert stats["rows"] >= len(expected), stats
    assert stats["path"] == "/var/lib/outpost/buffer.db"
    buffer_mode = root.run(["stat", "-c", "%U:%G %a", "/var/lib/outpost/buffer.db"])
    assert buffer_mode.stdout.strip() == "outpost:outpost 640"
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log, log


def test_receiver_serves_as_outpost(installed: DebianRoot, tmp_path: Path) -> None:
    """`outpost cloud serve` as its unit runs it (embedded PostgreSQL in its state directory)."""
    clock = Clock("receiver")
    root = installed
    shutil.copy(Path(__file__).with_name("mdwe_exec.py"), root.path / "tmp/mdwe_exec.py")
    port = free_port()
    receiver = [*UNIT_UMASK, "/opt/outpost/bin/python", "/tmp/mdwe_exec.py", "/usr/bin/outpost"]
    receiver += ["cloud", "serve", "--data-dir", "/var/lib/outpost-receiver"]
    receiver += ["--bind", f"127.0.0.1:{port}"]
    log = tmp_path / "receiver.log"
    with root.background(receiver, log, user="outpost") as proc:
        deadline = time.monotonic() + 120
        ready: dict = {}
        while time.monotonic() < deadline and not ready.get("ready"):
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    ready = json.loads(r.read())
            except (OSError, ValueError):
                time.sleep(0.5)
        clock.step("ready")
        assert ready.get("ready") is True, log.read_text()
        proc.terminate()
        assert proc.wait(timeout=30) == 0, log.read_text()
        clock.step("stopped cleanly")
    token = root.run(["stat", "-c", "%U:%G %a", "/var/lib/outpost-receiver/admin.token"])
    assert token.stdout.strip() == "outpost:outpost 600"
    assert "Traceback" not in log.read_text()


# ---------------------------------------------------------------------------- remove, purge

# Bookkeeping that changes with any dpkg run and is not the package's.
NOT_OURS = (
    "/proc",
    "/dev",
    "/tmp",
    "/run",
    "/var/log",
    "/var/lib/dpkg",
    "/var/cache/debconf",
    "/var/cache/man",
    "/etc/passwd-",
    "/etc/group-",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/subuid-",
    "/etc/subgid-",
)


@pytest.fixture
def fresh_root(tmp_path: Path, root_tarball: Future[Path]) -> Iterator[DebianRoot]:
    root = DebianRoot.fresh(tmp_path / "root", root_tarball.result())
    yield root
    shutil.rmtree(tmp_path / "root", ignore_errors=True)


def test_remove_keeps_config_and_data_purge_keeps_only_data(
    outpost_deb: Path, fresh_root: DebianRoot
) -> None:
    clock = Clock("purge")
    root = fresh_root
    before = root.snapshot(NOT_OURS)
    install(root, outpost_deb)
    root.run(["sh", "-c", "echo reading > /var/lib/outpost/buffer.db"], user="outpost")
    (root.path / "etc/outpost/agent.toml").write_text("# edited by the admin\n")
    clock.step("installed")

    root.run(["dpkg", "--force-unsafe-io", "--remove", "outpost"])
    assert not (root.path / "opt/outpost").exists()
    assert not (root.path / "usr/bin/outpost").is_symlink()
    assert not (root.path / "lib/systemd/system/outpost.service").exists()
    assert (root.path / "etc/outpost/agent.toml").read_text() == "# edited by the admin\n"
    assert root.run(["getent", "passwd", "outpost"]).returncode == 0
    assert (root.path / "var/lib/outpost/buffer.db").read_text() == "reading\n"
    clock.step("removed")

    root.run(["dpkg", "--force-unsafe-io", "--purge", "outpost"])
    after = root.snapshot(NOT_OURS)
    added = sorted(after.keys() - before.keys())
    assert added == [
        "/var/lib/outpost",
        "/var/lib/outpost-receiver",
        "/var/lib/outpost/buffer.db",
    ], added
    assert sorted(before.keys() - after.keys()) == []
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    # Directories whose entries changed (mtime is not compared, mode and owner are).
    assert changed == [], changed
    assert root.run(["getent", "passwd", "outpost"], check=False).returncode == 2
    assert root.run(["getent", "group", "outpost"], check=False).returncode == 2
    # Kept data belongs to root now: a later account reusing the uid cannot read it.
    data = root.run(["stat", "-c", "%U:%G %a", "/var/lib/outpost", "/var/lib/outpost/buffer.db"])
    assert data.stdout.split("\n")[:2] == ["root:root 700", "root:root 644"]
    clock.step("purged")

    # Reinstalling hands the kept data back to the new outpost user …
    install(root, outpost_deb)
    owner = root.run(["stat", "-c", "%U:%G", "/var/lib/outpost/buffer.db"]).stdout.strip()
    assert owner == "outpost:outpost"
    # … and a purge with OUTPOST_PURGE_DATA=yes leaves the root as it was.
    root.run(["dpkg", "--force-unsafe-io", "--purge", "outpost"], env={"OUTPOST_PURGE_DATA": "yes"})
    assert root.snapshot(NOT_OURS) == before
    clock.step("reinstalled and purged with the data")
