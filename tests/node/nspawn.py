"""A real systemd (Debian's, as PID 1) in a systemd-nspawn container, for tests.

The machines that run the tests are VMs whose PID 1 is not systemd, with no host
D-Bus and no machined; /work/shared/SYSTEMD.md says what works there and this
module follows it:

- ensure_root(): a Debian root made once with `debootstrap --variant=minbase` from
  the mirror apt is configured with, cached under /var/cache/criproxy-tests and
  rebuilt when INCLUDE changes (the list is stored in a marker inside the root);
- booted(name): boots it with `--volatile=overlay` (every write is thrown away, so
  each boot starts from the clean root), in a cgroup of its own, waits until
  systemd says the system is up, and always tears everything down again;
- Machine: runs commands inside (nsenter) and maps paths inside to the host
  (/proc/LEADER/root/...), which is how the tests reach unix sockets inside;
- build_package(out): the .deb (and a newer build of it) to bind in and install.

Host directories go in with binds (`--bind=HOST:INSIDE`): unix sockets of
runtimes served on the host work through them.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tests.node import debpackage
from tests.support.harness import REPO, runtimes_script

CACHE = Path("/var/cache/criproxy-tests")
RELEASE = "bookworm"
# What the root holds besides minbase: systemd as PID 1, its bus, the python the
# package depends on, man-db (systemd-analyze verify checks `Documentation=man:`)
# and procps (ps, for looking at criproxy's processes inside).
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "man-db", "procps")
MARKER = "etc/criproxy-tests-root"  # inside the root: the INCLUDE list it was made with
LOCK = CACHE / f"root-{RELEASE}.lock"
BUILD_TIMEOUT = 1200.0
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CGROUP_HIERARCHIES = ("systemd", "unified")
PROPAGATE = Path("/run/systemd/nspawn/propagate")


# ---------------------------------------------------------------- the root


def root_path() -> Path:
    return CACHE / f"root-{RELEASE}"


def marker_text() -> str:
    """What the marker says: a root made with another INCLUDE list is rebuilt."""
    return f"release={RELEASE} include={','.join(INCLUDE)}\n"


def root_is_current(root: Path) -> bool:
    marker = root / MARKER
    return marker.is_file() and marker.read_text() == marker_text()


def ensure_root() -> Path:
    """The cached root, made (or remade, if INCLUDE changed) under a lock so that
    concurrent test runs wait for one build instead of racing."""
    root = root_path()
    if root_is_current(root):
        return root
    ensure_host_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    with debpackage.locked(LOCK, BUILD_TIMEOUT):  # the lock the package tests use too
        if not root_is_current(root):
            build_root(root)
    return root


def ensure_host_tools() -> None:
    """debootstrap and systemd-nspawn, installed with apt when missing (CI starts bare)."""
    missing = [pkg for tool, pkg in (("debootstrap", "debootstrap"),
                                     ("systemd-nspawn", "systemd-container"),
                                     ("nsenter", "util-linux")) if not shutil.which(tool)]
    if missing:
        runtimes_script().apt_install(missing, lock_timeout=BUILD_TIMEOUT)


def apt_mirror() -> str:
    """The Debian mirror apt is configured with: the only one these machines reach."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        found = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.M)
        if found:
            return found[1]
    listing = Path("/etc/apt/sources.list")
    if listing.is_file():
        found = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+\s", listing.read_text(), re.M)
        if found:
            return found[1]
    raise RuntimeError("no Debian mirror in /etc/apt/sources.list.d/debian.sources "
                       "or /etc/apt/sources.list")


def build_root(root: Path) -> None:
    """debootstrap into a temporary directory next to the root, then rename it into
    place: a build cut short never leaves a root that looks complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.build-", dir=root.parent))
    try:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}",
             RELEASE, str(tmp), apt_mirror()],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        (tmp / MARKER).write_text(marker_text())
        if root.exists():
            old = root.with_name(f"{root.name}.old-{uuid.uuid4().hex[:8]}")
            root.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the package


def build_package(out: Path) -> Path:
    """What `make deb` runs, into `out` (tools installed by tests/node/debpackage.py), plus
    the same package as a newer version, `out/newer.deb`, for upgrades. Bind `out`
    into a machine (binds_ro=[f"{out}:/share"]) to install them there. The build's
    work dir is a private one: with the Makefile's shared build/deb, a concurrent
    `make deb` in the same checkout would pull the tree away under this one."""
    debpackage.ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="deb-work-"))
    # Not the caller's PYTHONPATH or venv: with the checkout on PYTHONPATH, the build's
    # pip finds criproxy "already installed" and the package lacks bin/criproxy.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    try:
        proc = subprocess.run(["/usr/bin/python3", "packaging/deb/build.py", "--out", str(out),
                               "--work", str(work)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"make deb failed:\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}")
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()
    deb = out / f"criproxy_{debpackage.version()}_{arch}.deb"
    debpackage.upgrade_of(deb, out)
    return deb


# ---------------------------------------------------------------- a booted machine


@dataclass
class Machine:
    """A booted container: `leader` is its PID 1 (systemd) as the host sees it."""

    name: str
    nspawn: subprocess.Popen
    leader: int
    log: Path

    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        """argv inside the container (all its namespaces, its root), as root; text
        output captured. With check, a non-zero exit fails with both outputs."""
        proc = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv],
                              input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"in {self.name}: {' '.join(argv)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        return proc

    def host_path(self, path: str | os.PathLike) -> Path:
        """`path` inside the container, as the host reaches it (sockets too)."""
        return Path(f"/proc/{self.leader}/root") / str(path).lstrip("/")

    def write(self, path: str, text: str) -> None:
        """Write a file inside the container (its volatile overlay)."""
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, as `systemctl show -P` prints it."""
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def is_active(self, unit: str) -> str:
        """`systemctl is-active`: active, inactive, failed, activating..."""
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()

    def wait_active(self, unit: str, timeout: float = 30.0) -> None:
        """Until `unit` is active; a failed unit or the timeout fails with its status."""
        deadline = time.monotonic() + timeout
        while (state := self.is_active(unit)) != "active":
            if state == "failed" or time.monotonic() > deadline:
                status = self.run("systemctl", "status", "--no-pager", "-n", "30", unit,
                                  check=False).stdout
                raise AssertionError(f"{unit} is {state}, not active:\n{status}")
            time.sleep(0.1)

    def journal(self, *args: str) -> str:
        """`journalctl --no-pager ARGS`, after a sync so that recent lines are in."""
        self.run("journalctl", "--sync", check=False)
        return self.run("journalctl", "--no-pager", "-q", *args).stdout

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the boot's console output (nspawn's stdout and stderr)."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


def machine_name(name: str) -> str:
    """A name of this run's own: two runs (or two tests) never share cgroups."""
    clean = re.sub(r"[^a-zA-Z0-9-]", "-", name)[:40].strip("-") or "m"
    return f"{clean}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def own_cgroups(name: str) -> list[Path]:
    """One cgroup per hierarchy for this container, made empty. nspawn without them
    puts payload/ and supervisor/ in the shared cgroup root, where containers collide."""
    cgroups = []
    for hierarchy in CGROUP_HIERARCHIES:
        base = Path("/sys/fs/cgroup") / hierarchy
        if base.is_dir():
            path = base / f"nspawn-{name}"
            path.mkdir(exist_ok=True)
            cgroups.append(path)
    return cgroups


def start_nspawn(name: str, root: Path, args: Sequence[str], log: Path) -> subprocess.Popen:
    """systemd-nspawn in its own session and cgroups, console output to `log`. A small
    shell moves itself into the cgroups, then execs nspawn (no preexec_fn: the test
    process has threads)."""
    cgroups = own_cgroups(name)
    script = 'for c in $CGROUPS; do echo $$ > "$c/cgroup.procs"; done; exec "$@"'
    argv = ["systemd-nspawn", "-D", str(root), "-b", "--register=no", "--keep-unit",
            "-M", name, "--console=passive", *args]
    env = dict(os.environ, CGROUPS=" ".join(map(str, cgroups)), SYSTEMD_LOG_COLOR="0")
    with open(log, "ab") as out:
        return subprocess.Popen(["sh", "-c", script, "sh", *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def wait_leader(nspawn: subprocess.Popen, log: Path, deadline: float) -> int:
    """nspawn's child is the container's PID 1; wait until it has exec'd systemd."""
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {nspawn.returncode} while booting:\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        for pid in children(nspawn.pid):
            with contextlib.suppress(OSError):
                if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "systemd":
                    return pid
        time.sleep(0.05)
    raise RuntimeError(f"no systemd under nspawn after {BOOT_TIMEOUT}s:\n"
                       f"{log.read_text(errors='replace')[-4000:]}")


def wait_running(machine: Machine, deadline: float) -> str:
    """Until `systemctl is-system-running` says running or degraded ("Failed to
    connect to bus" and "starting" mean too early)."""
    state = ""
    while time.monotonic() < deadline:
        if machine.nspawn.poll() is not None:
            break
        state = machine.run("systemctl", "is-system-running", check=False, timeout=10)\
            .stdout.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(0.05)
    raise RuntimeError(f"{machine.name} not up after {BOOT_TIMEOUT}s (last state "
                       f"{state!r}, nspawn {machine.nspawn.poll()}):\n{machine.log_tail()}")


def stop_machine(machine: Machine | None, nspawn: subprocess.Popen) -> None:
    """poweroff inside, then SIGTERM and SIGKILL to nspawn by pid if it lingers."""
    if machine is not None and nspawn.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            machine.run("systemctl", "--no-block", "poweroff", check=False, timeout=10)
    for sig, wait in ((None, STOP_TIMEOUT), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if sig is not None and nspawn.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(nspawn.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            nspawn.wait(wait)
            return


def remove_cgroups(cgroups: list[Path]) -> None:
    """rmdir each cgroup tree, deepest first (cgroupfs refuses rm -r)."""
    for top in cgroups:
        if not top.is_dir():
            continue
        dirs = [p for p in top.rglob("*") if p.is_dir()]
        for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True) + [top]:
            with contextlib.suppress(OSError):
                path.rmdir()


def cleanup(name: str) -> None:
    """What nspawn leaves on the host after a boot: its cgroups and propagate dir."""
    remove_cgroups([Path("/sys/fs/cgroup") / h / f"nspawn-{name}" for h in CGROUP_HIERARCHIES])
    shutil.rmtree(PROPAGATE / name, ignore_errors=True)


def sweep_stale() -> None:
    """Remove what a test process killed before its teardown left: the empty cgroups
    and propagate dirs of machines whose creator (the pid in the name) is gone."""
    for path in [*Path("/sys/fs/cgroup").glob("*/nspawn-*"), *PROPAGATE.glob("*")]:
        found = re.search(r"-(\d+)-[0-9a-f]{6}$", path.name)
        if found and not Path(f"/proc/{found[1]}").exists():
            if path.parent == PROPAGATE:
                shutil.rmtree(path, ignore_errors=True)
            else:
                remove_cgroups([path])  # refused while a process is still inside


@contextlib.contextmanager
def booted(name: str, binds: Sequence[str] = (), binds_ro: Sequence[str] = (),
           private_network: bool = True, extra: Sequence[str] = ()) -> Iterator[Machine]:
    """Boot the cached root with systemd as PID 1 and yield it once systemd says it is
    up; power it off and remove its traces whatever happens.

    binds/binds_ro are nspawn's `HOST[:INSIDE]`. The network is private by default
    (only `lo`): a service's loopback port inside cannot clash with the host's.
    """
    root = ensure_root()
    sweep_stale()
    full = machine_name(name)
    args = ["--volatile=overlay", *(f"--bind={b}" for b in binds),
            *(f"--bind-ro={b}" for b in binds_ro), *extra]
    if private_network:
        args.append("--private-network")
    log = Path(tempfile.mkstemp(prefix=f"nspawn-{full}-", suffix=".log")[1])
    deadline = time.monotonic() + BOOT_TIMEOUT
    nspawn = start_nspawn(full, root, args, log)
    machine = None
    try:
        machine = Machine(full, nspawn, wait_leader(nspawn, log, deadline), log)
        wait_running(machine, deadline)
        yield machine
        log.unlink()  # kept (and named in the failure) only when something went wrong
    finally:
        stop_machine(machine, nspawn)
        cleanup(full)
