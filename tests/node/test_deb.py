"""The Debian package: `make deb`, then dpkg -i, run, upgrade and purge it on this machine.

The package is built once for the module and installed for real (it must be: the
point is what dpkg does with it), so the module needs root; the tests run in file
order, from the fresh install to the purge. The installed criproxy runs a pod on
real containerd (scripts/runtimes.py) with Debian's python3 alone on PATH.
One lock serializes this module across test runs on the machine, and dpkg runs
under dpkg's frontend lock, so a concurrent apt-get waits instead of failing.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from tests.node.debpackage import (TEST_LOCK, debian_python_version, ensure_tools, locked,
                                   upgrade_of, version)
from tests.support.harness import REPO, runtimes_script

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: installs the package with dpkg, runs containerd")

runtimes = runtimes_script()

PRIVATE = Path("/usr/lib/criproxy")
ENV_FILE = Path("/etc/criproxy/criproxy.env")
UNIT = Path("/lib/systemd/system/criproxy.service")
DROP_IN = Path("/etc/systemd/system/kubelet.service.d/20-criproxy.conf")
DEFAULT_RUNDIR = Path("/run/criproxy")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # no pyenv, no venv: Debian's python3 only
CALL_TIMEOUT = 30


# ---------------------------------------------------------------- machine set-up


def dpkg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """dpkg as a package manager frontend runs it: holding the frontend lock, so
    that it waits for a concurrent apt-get rather than failing at once."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", DPKG_FRONTEND_LOCKED="1")
    with locked(Path("/var/lib/dpkg/lock-frontend")):
        proc = subprocess.run(["dpkg", *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"dpkg {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc


def package_status() -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "criproxy"],
                          capture_output=True, text=True)
    return proc.stdout.strip()  # "ii" installed, "rc" config files left, "" unknown


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make deb`, once for the module."""
    ensure_tools()
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["make", "-C", str(REPO), "deb", f"DIST={out}"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()
    path = out / f"criproxy_{version()}_{arch}.deb"
    assert path.is_file(), sorted(out.iterdir())
    return path


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    """The package installed by `dpkg -i` alone; purged at the end whatever happened."""
    with locked(TEST_LOCK):
        if package_status():
            pytest.fail(f"a criproxy package is on this machine already "
                        f"({package_status()}); these tests install and purge their own")
        left = [str(p) for p in (DEFAULT_RUNDIR, DROP_IN, ENV_FILE.parent) if p.exists()]
        if left:
            pytest.fail(f"left from an earlier criproxy on this machine: {left}")
        try:
            dpkg("-i", str(deb))
            yield deb
        finally:
            if package_status():
                dpkg("--purge", "criproxy", check=False)
            DROP_IN.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def containerd() -> Iterator[dict]:
    base = Path(tempfile.mkdtemp(prefix="deb-", dir="/tmp"))
    try:
        yield runtimes.up(base / "rt")
    finally:
        runtimes.down(base / "rt")
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- the installed criproxy


@dataclass
class Running:
    proc: subprocess.Popen
    rundir: Path
    log: Path

    def status(self) -> dict:
        return json.loads((self.rundir / "status.json").read_text())

    def wait_up(self, labels: list[str], timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                status = self.status()
                if sorted(r["label"] for r in status["runtimes"] if r["state"] == "up") == \
                        sorted(labels):
                    return status
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"runtimes {labels} not up after {timeout}s:\n"
                             f"{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def installed_criproxy(flags: list[str], rundir: Path, log: Path) -> Iterator[Running]:
    """/usr/bin/criproxy as systemd would start it: from /, Debian's python3 alone on PATH."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(["/usr/bin/criproxy", *flags, "-rundir", str(rundir),
                                 "-metricsAddress", "127.0.0.1:0", "-v", "2"],
                                cwd="/", env={"PATH": SYSTEM_PATH}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    running = Running(proc, rundir, log)
    try:
        yield running
    finally:
        running.stop()


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode()


def run_pod_through(listen: Path, runtime: str, image: str, logs: Path) -> tuple[str, str]:
    """A pod with a container through criproxy: (the pod's id, what the container echoed)."""
    with grpc.insecure_channel(f"unix://{listen}") as channel:
        cri = rpc.RuntimeServiceStub(channel)
        uid = uuid.uuid4().hex
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"deb-{uid[:6]}", uid=uid, namespace="deb"),
            log_directory=str(logs), annotations={"kubernetes.io/target-runtime": runtime},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"/criproxy-deb/pod{uid}",
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.NODE))))
        pod = cri.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                timeout=CALL_TIMEOUT).pod_sandbox_id
        try:
            cid = cri.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod, sandbox_config=config, config=pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name="main"), log_path="main.log",
                    image=pb.ImageSpec(image=f"{runtime}/{image}"),
                    command=["sleep", "1000"])), timeout=CALL_TIMEOUT).container_id
            cri.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)
            out = cri.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["echo", pod],
                                                  timeout=10), timeout=CALL_TIMEOUT)
            assert out.exit_code == 0, out
            return pod, out.stdout.decode().strip()
        finally:
            cri.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT)
            cri.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                 timeout=CALL_TIMEOUT)
            runtimes.remove_cgroup_tree("/criproxy-deb")


# ---------------------------------------------------------------- the package itself


def test_make_deb_builds_a_package_for_debians_python(deb: Path) -> None:
    fields = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                            text=True).stdout
    assert re.search(rf"^Version: {re.escape(version())}$", fields, re.M), fields
    depends = re.search(r"^Depends: (.*)$", fields, re.M)[1].split(", ")
    assert depends[0] == f"python{debian_python_version()}"  # the exact interpreter
    assert any(d.startswith("libc6 (>= ") for d in depends), depends  # compiled modules
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], check=True,
                               capture_output=True, text=True).stdout
    assert conffiles.split() == [str(ENV_FILE)]


def test_lintian_finds_nothing_unexplained(deb: Path) -> None:
    """Every finding, down to info and pedantic ones, is fixed or overridden, and each
    overridden tag is explained in docs/packaging.md."""
    proc = subprocess.run(["lintian", "--info", "--pedantic", "--fail-on",
                           "error,warning,info,pedantic", str(deb)],
                          capture_output=True, text=True, timeout=600)
    findings = [line for line in proc.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert (proc.returncode, findings) == (0, []), proc.stdout + proc.stderr
    overrides = (REPO / "packaging/deb/lintian-overrides").read_text()
    tags = set(re.findall(r"^criproxy: (\S+)", overrides, re.M))
    explained = (REPO / "docs/packaging.md").read_text()
    assert tags and [t for t in sorted(tags) if f"`{t}`" not in explained] == []


# ---------------------------------------------------------------- installed


def test_dpkg_i_installs_without_taking_over(installed: Path) -> None:
    assert package_status() == "ii"
    assert os.readlink("/usr/bin/criproxy") == "../lib/criproxy/bin/criproxy"
    assert "ExecStart=/usr/bin/criproxy $CRIPROXY_FLAGS" in UNIT.read_text()
    # Nothing points kubelet at criproxy, nothing enables or starts it.
    assert not DROP_IN.exists()
    assert not Path("/etc/systemd/system/kubelet.service.wants/criproxy.service").exists()
    assert not DEFAULT_RUNDIR.exists()
    assert re.search(r"^CRIPROXY_FLAGS=$", ENV_FILE.read_text(), re.M)
    # postinst byte-compiled the environment: nothing is written there at run time.
    assert list(PRIVATE.rglob("criproxy/__pycache__/cli.*.pyc"))


def test_the_package_ships_the_alert_rules_and_dashboard(installed: Path) -> None:
    shipped = Path("/usr/share/criproxy")
    for name in ("prometheus/criproxy-alerts.yaml", "grafana/criproxy.json"):
        assert (shipped / name).read_text() == (REPO / "deploy" / name).read_text()


def test_installed_criproxy_runs_on_debians_python_alone(installed: Path) -> None:
    proc = subprocess.run(["criproxy", "--version"], env={"PATH": SYSTEM_PATH}, cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, f"criproxy {version()}\n"), proc.stderr
    script = Path("/usr/bin/criproxy").resolve()
    assert script.read_text().split("\n", 1)[0] == \
        f"#!{PRIVATE}/bin/python{debian_python_version()}"
    assert (PRIVATE / "bin/python3").resolve() == \
        Path(f"/usr/bin/python{debian_python_version()}").resolve()


def test_installed_criproxy_runs_a_pod_on_containerd(installed: Path, containerd: dict,
                                                     tmp_path: Path) -> None:
    a, b = containerd["instances"]["a"], containerd["instances"]["b"]
    listen = Path(tempfile.mkdtemp(prefix="debpx-", dir="/tmp")) / "criproxy.sock"
    flags = ["-connect", f"{a['socket']},crun.test:{b['socket']}", "-listen", str(listen)]
    try:
        with installed_criproxy(flags, DEFAULT_RUNDIR, tmp_path / "criproxy.log") as running:
            status = running.wait_up(["primary", "crun.test"])
            pod, echoed = run_pod_through(listen, "crun.test", containerd["images"]["busybox"],
                                          tmp_path)
            assert pod.startswith("crun.test__") and echoed == pod
            check_processes(running, status, listen, b["socket"])
    finally:
        shutil.rmtree(listen.parent, ignore_errors=True)


def check_processes(running: Running, status: dict, listen: Path, b_socket: str) -> None:
    """Titles as ps shows them; every process is Debian's python3 running the package."""
    rundir = running.rundir
    supervisor = int((rundir / "supervisord.pid").read_text())
    worker = next(r["worker_pid"] for r in status["runtimes"] if r["label"] == "crun.test")
    assert cmdline(supervisor) == f"criproxy: supervisor {listen} [{rundir}]"
    assert cmdline(status["front_pid"]) == f"criproxy: front {listen} [{rundir}]"
    assert cmdline(worker) == f"criproxy: worker crun.test {b_socket} [{rundir}]"
    python = Path(f"/usr/bin/python{debian_python_version()}").resolve()
    for pid in (supervisor, status["front_pid"], worker):
        assert Path(f"/proc/{pid}/exe").resolve() == python
        assert f"{PRIVATE}/lib/python" in Path(f"/proc/{pid}/maps").read_text()


def test_systemd_analyze_verifies_the_unit_and_kubelet_drop_in(installed: Path,
                                                               tmp_path: Path) -> None:
    verify = ["systemd-analyze", "verify"]
    proc = subprocess.run([*verify, str(UNIT)], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    # The drop-in as the installed criproxy writes it, on a stand-in for kubelet's unit.
    proc = subprocess.run(["/usr/bin/criproxy", "install-systemd", "-connect",
                           "/run/containerd/containerd.sock", "-listen", "/run/criproxy.sock"],
                          env={"PATH": SYSTEM_PATH}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not Path("/etc/systemd/system/criproxy.service").exists()  # the package's unit runs
    assert "--container-runtime-endpoint=unix:///run/criproxy.sock" in DROP_IN.read_text()
    kubelet = tmp_path / "kubelet.service"
    # DefaultDependencies=no: the check below may leave the system's units out.
    kubelet.write_text("[Unit]\nDescription=stand-in for kubelet\nDefaultDependencies=no\n"
                       "[Service]\n"
                       "ExecStart=/bin/sleep infinity $KUBELET_EXTRA_ARGS\n")
    search = {"SYSTEMD_UNIT_PATH": f"{tmp_path}:"}  # the trailing ':' keeps the default paths
    proc = subprocess.run([*verify, str(kubelet)], env=dict(os.environ, **search),
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    # Without criproxy.service (removed) kubelet's unit still loads: the drop-in only Wants= it.
    only_etc = {"SYSTEMD_UNIT_PATH": f"{tmp_path}:/etc/systemd/system"}
    proc = subprocess.run([*verify, str(kubelet)], env=dict(os.environ, **only_etc),
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr


def test_reinstall_and_upgrade_keep_the_edited_env_file(installed: Path,
                                                        tmp_path: Path) -> None:
    edited = ENV_FILE.read_text() + f"# the operator's edit {uuid.uuid4()}\n"
    ENV_FILE.write_text(edited)
    dpkg("-i", str(installed))
    assert ENV_FILE.read_text() == edited
    dpkg("-i", str(upgrade_of(installed, tmp_path)))
    assert ENV_FILE.read_text() == edited
    assert package_status() == "ii"
    assert list(ENV_FILE.parent.iterdir()) == [ENV_FILE]  # no .dpkg-dist or .dpkg-old
    assert list(PRIVATE.rglob("criproxy/__pycache__/cli.*.pyc"))


def leftovers(deb: Path) -> list[str]:
    """The package's paths still on the machine; a directory counts unless another
    package owns it too (/usr/bin, /lib/systemd/system...)."""
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                             capture_output=True).stdout
    paths = subprocess.run(["tar", "-t"], input=listing, check=True,
                           capture_output=True).stdout.decode().split()
    left = []
    for name in paths:
        path = Path("/", name.lstrip("."))
        if not os.path.lexists(path) or str(path) == "/":
            continue
        # A directory may be a link on this machine (/lib -> usr/lib): ask about its target.
        if name.endswith("/") and subprocess.run(
                ["dpkg", "-S", str(path.resolve())], capture_output=True).returncode == 0:
            continue
        left.append(str(path))
    return left


def test_purge_leaves_nothing(installed: Path, containerd: dict, tmp_path: Path) -> None:
    # What criproxy makes when it runs and is configured, for purge to remove.
    socket = containerd["instances"]["a"]["socket"]
    listen = Path(tempfile.mkdtemp(prefix="debpx-", dir="/tmp")) / "criproxy.sock"
    try:
        with installed_criproxy(["-connect", socket, "-listen", str(listen)], DEFAULT_RUNDIR,
                                tmp_path / "criproxy.log") as running:
            running.wait_up(["primary"])
    finally:
        shutil.rmtree(listen.parent, ignore_errors=True)
    subprocess.run(["/usr/bin/criproxy", "install-systemd", "-connect", socket],
                   env={"PATH": SYSTEM_PATH}, check=True, capture_output=True, timeout=60)
    assert DEFAULT_RUNDIR.is_dir() and DROP_IN.exists()

    dpkg("--purge", "criproxy")
    assert package_status() == ""
    assert leftovers(installed) == []
    for path in (PRIVATE, ENV_FILE.parent, DEFAULT_RUNDIR, DROP_IN,
                 Path("/var/lib/systemd/deb-systemd-helper-enabled/criproxy.service.dsh-also")):
        assert not path.exists(), path
