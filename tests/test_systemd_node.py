"""The operator's path of the README, on the built .deb, under a real systemd.

Each test boots Debian's systemd as PID 1 in a systemd-nspawn container
(tests/nspawn.py: a fresh copy of a cached root every time, private network) and
does there what root does on a node: `dpkg -i`, `criproxy install-systemd`,
`systemctl enable --now criproxy`, restarts, upgrade, remove, purge. The runtimes
are fake ones (tests/fakeruntime.py) served on the host, their sockets bound in
at /run/fakes; the tests reach criproxy's socket from the host through
/proc/LEADER/root. A kubelet stand-in (tests/kubelet_standin.py) runs as
kubelet.service with criproxy's drop-in, relisting as kubelet does.

The package is built once for the module. Needs root (nspawn, cgroups): run as
another user, the tests fail rather than skip.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from tests import nspawn
from tests.fakeruntime import FakeRuntime, read_journal, start_fake
from tests.harness import REPO, short_dir

FAKES_INSIDE = "/run/fakes"
SHARE = "/share"
LISTEN = "/run/criproxy.sock"
ENV_FILE = "/etc/criproxy/criproxy.env"
DROP_IN = "/etc/systemd/system/kubelet.service.d/20-criproxy.conf"
STANDIN_LOG = "/var/log/kubelet-standin.jsonl"
PRIVATE_PYTHON = "/usr/lib/criproxy/bin/python3"
# The stand-in's python: a copy of the package's environment (grpc, cri_api), so that
# kubelet outlives the package as a real one does.
STANDIN_ENV = "/opt/kubelet-standin"
# kubelet.service as the tests install it: kubelet's flags come from the drop-in.
KUBELET_UNIT = f"""[Unit]
Description=kubelet stand-in (relists through the CRI endpoint it is given)

[Service]
ExecStart={STANDIN_ENV}/bin/python3 {SHARE}/kubelet_standin.py --log {STANDIN_LOG} $KUBELET_EXTRA_ARGS
Restart=always
RestartSec=1
"""
CALL_TIMEOUT = 10
MAX_EXPOSURE = 3.0


# The first test also builds the package, and the root when it is not cached (~1 min each).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module", autouse=True)
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/test_systemd_node.py needs root (systemd-nspawn, cgroups, dpkg in "
                    "the container); CI runs as root")


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bound read-only at /share in every machine: the package, a newer build of it
    (newer.deb) and the kubelet stand-in."""
    out = tmp_path_factory.mktemp("share")
    nspawn.build_package(out)
    shutil.copy(REPO / "tests" / "kubelet_standin.py", out)
    return out


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeRuntime]]:
    """Two fake runtimes on the host, `primary` and `alt`, in one directory."""
    base = short_dir("nsf-")
    started: dict[str, FakeRuntime] = {}
    try:
        for name in ("primary", "alt"):
            started[name] = start_fake(base, name)
        yield started
    finally:
        for fake in started.values():
            fake.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node(share: Path, fakes: dict[str, FakeRuntime],
         request: pytest.FixtureRequest) -> Iterator[nspawn.Machine]:
    """A freshly booted machine with the package and the fakes' sockets at hand."""
    fakes_dir = fakes["primary"].socket.parent
    with nspawn.booted(request.node.name[5:30], binds=[f"{fakes_dir}:{FAKES_INSIDE}"],
                       binds_ro=[f"{share}:{SHARE}"]) as machine:
        yield machine


# ---------------------------------------------------------------- steps of the path


def package_file(share: Path) -> str:
    """The built package's name inside the machine."""
    (deb,) = share.glob("criproxy_*.deb")
    return f"{SHARE}/{deb.name}"


def connect_flag() -> str:
    return f"{FAKES_INSIDE}/primary.sock,alt:{FAKES_INSIDE}/alt.sock"


def systemctl(node: nspawn.Machine, *args: str) -> None:
    """systemctl ARGS inside; a failure says what criproxy's journal says."""
    proc = node.run("systemctl", *args, check=False, timeout=120)
    assert proc.returncode == 0, (f"systemctl {' '.join(args)} exited {proc.returncode}: "
                                  f"{proc.stderr}\n"
                                  f"{node.journal('-u', 'criproxy', '-n', '25', '-o', 'cat')}")


def install(node: nspawn.Machine, share: Path) -> None:
    """dpkg -i, as root on a node does it."""
    node.run("dpkg", "-i", package_file(share), timeout=300)


def configure_and_start(node: nspawn.Machine, *flags: str) -> float:
    """install-systemd with the fakes, then the README's enable --now; returns when
    systemctl did (the time it took)."""
    node.run("criproxy", "install-systemd", "-connect", connect_flag(), "-v", "2", *flags)
    node.run("systemctl", "daemon-reload")
    started = time.monotonic()
    systemctl(node, "enable", "--now", "criproxy")
    return time.monotonic() - started


def installed_and_running(node: nspawn.Machine, share: Path, *flags: str) -> None:
    install(node, share)
    configure_and_start(node, *flags)


@contextlib.contextmanager
def cri(node: nspawn.Machine) -> Iterator[rpc.RuntimeServiceStub]:
    """A CRI client of criproxy's socket inside the machine, from the host."""
    with grpc.insecure_channel(f"unix://{node.host_path(LISTEN)}") as channel:
        yield rpc.RuntimeServiceStub(channel)


def version_now(node: nspawn.Machine) -> pb.VersionResponse:
    """Version on a new connection, without waiting for the socket: it answers now,
    or the call fails at once (gRPC's fail-fast)."""
    with cri(node) as stub:
        try:
            return stub.Version(pb.VersionRequest(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            raise AssertionError(f"criproxy does not answer Version: {err.code().name}: "
                                 f"{err.details()}\n{unit_status(node)}") from None


def wait_serving(node: nspawn.Machine, timeout: float) -> float:
    """Poll Version until it answers; how long that took."""
    started = time.monotonic()
    while True:
        try:
            version_now(node)
            return time.monotonic() - started
        except AssertionError:
            if time.monotonic() - started > timeout:
                raise
            time.sleep(0.1)


def unit_status(node: nspawn.Machine, unit: str = "criproxy") -> str:
    return node.run("systemctl", "status", "--no-pager", "-l", "-n", "40", unit,
                    check=False).stdout


def run_pod(node: nspawn.Machine, runtime: str, name: str = "") -> str:
    """RunPodSandbox through criproxy, for `runtime` by annotation (the primary for
    ""): the pod's id."""
    uid = uuid.uuid4().hex
    annotations = {"kubernetes.io/target-runtime": runtime} if runtime else {}
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name or f"node-{uid[:6]}", uid=uid,
                                       namespace="systemd"), annotations=annotations)
    with cri(node) as stub:
        return stub.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                  timeout=CALL_TIMEOUT).pod_sandbox_id


def listed_pods(node: nspawn.Machine) -> list[str]:
    with cri(node) as stub:
        answer = stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
    return sorted(pod.id for pod in answer.items)


def main_pid(node: nspawn.Machine, unit: str) -> int:
    return int(node.show(unit, "MainPID"))


def criproxy_processes(node: nspawn.Machine) -> dict[int, str]:
    """criproxy's processes inside, by the titles ps shows: pid -> title."""
    out = node.run("ps", "-e", "-o", "pid=,args=").stdout
    return {int(pid): args for pid, args in
            (line.strip().split(None, 1) for line in out.splitlines() if "criproxy:" in line)}


def start_kubelet_standin(node: nspawn.Machine) -> int:
    """kubelet.service (the stand-in) started, with criproxy's drop-in: its MainPID."""
    node.run("cp", "-a", "/usr/lib/criproxy", STANDIN_ENV)
    node.write("/etc/systemd/system/kubelet.service", KUBELET_UNIT)
    node.run("systemctl", "daemon-reload")
    node.run("systemctl", "start", "kubelet")
    node.wait_active("kubelet")
    return main_pid(node, "kubelet")


def standin_entries(node: nspawn.Machine) -> list[dict]:
    path = node.host_path(STANDIN_LOG)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_standin_ok(node: nspawn.Machine, since: float, count: int, timeout: float = 30) -> None:
    """Until the stand-in logged `count` successful relists after `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for e in standin_entries(node) if e["t"] > since and e["ok"]) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"kubelet stand-in: no {count} good relists since {since}:\n"
                         f"{standin_entries(node)[-10:]}\n{unit_status(node, 'kubelet')}")


# ---------------------------------------------------------------- the path


def test_dpkg_i_starts_nothing(node: nspawn.Machine, share: Path) -> None:
    install(node, share)
    assert node.is_active("criproxy") == "inactive"
    assert node.show("criproxy", "UnitFileState") == "disabled"
    assert not node.host_path(LISTEN).exists()
    assert not node.host_path("/run/criproxy").exists()
    assert not node.host_path(DROP_IN).exists()
    assert criproxy_processes(node) == {}


def test_enable_now_returns_once_criproxy_serves(node: nspawn.Machine, share: Path,
                                                 fakes: dict[str, FakeRuntime]) -> None:
    """Ready means serving: when `systemctl enable --now` (start, restart) returns,
    Version answers at once, and a pod on the second runtime runs at once."""
    install(node, share)
    configure_and_start(node)
    assert node.is_active("criproxy") == "active"
    assert node.show("criproxy", "Type") == "notify"
    version_now(node)
    assert run_pod(node, "alt").startswith("alt__")
    systemctl(node, "stop", "criproxy")
    assert node.is_active("criproxy") == "inactive"
    systemctl(node, "start", "criproxy")
    version_now(node)
    systemctl(node, "restart", "criproxy")
    version_now(node)


def test_a_pod_lands_on_the_runtime_its_annotation_names(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt", "on-alt")
    plain = run_pod(node, "", "on-primary")
    assert pod.startswith("alt__") and "__" not in plain
    for fake, name in (("alt", "on-alt"), ("primary", "on-primary")):
        ran = [e["request"]["config"]["metadata"]["name"]
               for e in read_journal(fakes[fake].journal) if e["method"] == "RunPodSandbox"]
        assert ran == [name], (fake, ran)
    assert listed_pods(node) == sorted([pod, plain])


def test_journal_has_every_process_and_priorities(node: nspawn.Machine, share: Path,
                                                  fakes: dict[str, FakeRuntime]) -> None:
    """`journalctl -u criproxy` has the front's and each worker's lines; `-p err`
    none on a clean start; a failed call's warning shows under -p warning only."""
    installed_and_running(node, share)
    wait_serving(node, 30)
    run_pod(node, "alt")
    lines = node.journal("-u", "criproxy", "-o", "cat")
    assert re.search(r"\bfront\[\d+\]", lines), lines[-3000:]
    for label in ("primary", "alt"):
        assert re.search(rf"\bworker-{label}\[\d+\]", lines), lines[-3000:]
    assert node.journal("-u", "criproxy", "-p", "err") == ""
    with cri(node) as stub, pytest.raises(grpc.RpcError) as failed:
        stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="alt__nosuchpod"),
                              timeout=CALL_TIMEOUT)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    warning = re.compile(r"PodSandboxStatus -> alt: NOT_FOUND")
    deadline = time.monotonic() + 10
    while not warning.search(node.journal("-u", "criproxy", "-p", "warning")):
        assert time.monotonic() < deadline, node.journal("-u", "criproxy")[-3000:]
        time.sleep(0.2)
    assert not warning.search(node.journal("-u", "criproxy", "-p", "err"))
    assert node.journal("-u", "criproxy", "-p", "err") == ""


def test_every_journal_line_names_its_process(node: nspawn.Machine, share: Path,
                                              fakes: dict[str, FakeRuntime]) -> None:
    """Each line criproxy's processes write says which one wrote it, supervisord's
    own lines too (systemd's lines about the unit are not criproxy's)."""
    installed_and_running(node, share)
    wait_serving(node, 30)
    run_pod(node, "alt")
    systemctl(node, "restart", "criproxy")
    entries = [json.loads(line) for line in
               node.journal("-u", "criproxy", "-o", "json").splitlines()]
    ours = [e["MESSAGE"] for e in entries if e.get("SYSLOG_IDENTIFIER") == "criproxy"]
    named = re.compile(r"^\S+ \S+ [A-Z] (front|worker-[\w.-]+|supervisord)\[\d+\] ")
    unnamed = [m for m in ours if not named.match(m)]
    assert ours and not unnamed, "lines that name no process:\n" + "\n".join(unnamed)


def test_an_error_shows_under_p_err(node: nspawn.Machine, share: Path,
                                    fakes: dict[str, FakeRuntime]) -> None:
    """The metrics port taken: criproxy serves CRI anyway, and says so at error level."""
    install(node, share)
    node.run("systemd-run", "--unit", "squatter", PRIVATE_PYTHON, "-c",
             "import socket, time; s = socket.socket(); "
             "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
             "s.bind(('127.0.0.1', 9610)); s.listen(); time.sleep(3600)")
    node.wait_active("squatter")
    time.sleep(0.5)  # bound by now (a 3600 s sleep follows the bind)
    configure_and_start(node)
    version_now(node)
    deadline = time.monotonic() + 15
    while not (errors := node.journal("-u", "criproxy", "-p", "err", "-o", "cat")):
        assert time.monotonic() < deadline, node.journal("-u", "criproxy")[-3000:]
        time.sleep(0.2)
    assert "cannot serve metrics on 127.0.0.1:9610" in errors, errors
    assert "front serving" not in errors, errors  # an info line: not under -p err
    assert re.search(r"\bfront\[\d+\]", errors), errors


def test_restart_does_not_restart_kubelet_nor_show_it_a_wrong_list(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt")
    kubelet = start_kubelet_standin(node)
    assert "--container-runtime-endpoint=unix:///run/criproxy.sock" in \
        node.show("kubelet", "Environment")
    before = time.time()
    wait_standin_ok(node, before, 3)
    criproxy_pid = main_pid(node, "criproxy")
    restarted = time.time()
    systemctl(node, "restart", "criproxy")
    version_now(node)
    assert main_pid(node, "criproxy") != criproxy_pid
    wait_standin_ok(node, time.time(), 5)
    assert main_pid(node, "kubelet") == kubelet, unit_status(node, "kubelet")
    assert node.show("kubelet", "NRestarts") == "0"
    entries = standin_entries(node)
    wrong = [e for e in entries if e["ok"] and pod not in e["pods"]]
    assert wrong == [], wrong[:5]
    assert any(e["ok"] for e in entries if e["t"] < restarted)


def test_kubelet_started_alone_starts_criproxy_first_and_finds_its_pods(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    """The drop-in's After= means ready: kubelet, started while criproxy is stopped,
    pulls it in and is started only once criproxy serves every runtime's pods."""
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt")
    systemctl(node, "stop", "criproxy")
    start_kubelet_standin(node)
    assert node.is_active("criproxy") == "active"
    wait_standin_ok(node, 0, 3)
    entries = standin_entries(node)
    assert entries[0]["ok"] and pod in entries[0]["pods"], entries[:3]
    assert [e for e in entries if not e["ok"] or pod not in e["pods"]] == []


def test_killed_criproxy_is_restarted_by_systemd(node: nspawn.Machine, share: Path,
                                                 fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt")
    before = main_pid(node, "criproxy")
    node.run("systemctl", "kill", "-s", "KILL", "criproxy")
    deadline = time.monotonic() + 30
    while main_pid(node, "criproxy") in (before, 0) or node.is_active("criproxy") != "active":
        assert time.monotonic() < deadline, unit_status(node)
        time.sleep(0.1)
    assert int(node.show("criproxy", "NRestarts")) == 1
    wait_serving(node, 10)  # active means ready (Type=notify): it answers at once
    assert pod in listed_pods(node)


def test_upgrade_restarts_on_the_new_version_and_keeps_the_flags(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt")
    env = node.host_path(ENV_FILE).read_text()
    before = main_pid(node, "criproxy")
    node.run("dpkg", "-i", f"{SHARE}/newer.deb", timeout=300)
    assert re.search(r"\+upgrade1$", node.run("dpkg-query", "-W", "-f", "${Version}",
                                              "criproxy").stdout)
    assert node.is_active("criproxy") == "active"
    assert main_pid(node, "criproxy") != before
    version_now(node)
    assert pod in listed_pods(node)
    assert node.host_path(ENV_FILE).read_text() == env
    # Every process runs the new files: none maps a file dpkg replaced.
    processes = criproxy_processes(node)
    assert len(processes) == 4, processes  # supervisor, front, two workers
    for pid in processes:
        maps = node.run("cat", f"/proc/{pid}/maps").stdout
        assert "(deleted)" not in maps, [l for l in maps.splitlines() if "(deleted)" in l][:3]


def test_remove_stops_criproxy_and_kubelet_still_starts(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    kubelet = start_kubelet_standin(node)
    assert node.host_path(DROP_IN).exists()
    node.run("dpkg", "-r", "criproxy", timeout=300)
    assert node.is_active("criproxy") in ("inactive", "failed")
    assert criproxy_processes(node) == {}
    assert not node.host_path(DROP_IN).exists()  # remove takes back what install-systemd wrote
    assert main_pid(node, "kubelet") == kubelet  # ... without restarting kubelet
    assert node.show("kubelet", "NeedDaemonReload") == "no"  # remove reloaded systemd
    node.run("systemctl", "restart", "kubelet")
    node.wait_active("kubelet")
    assert "criproxy" not in node.show("kubelet", "Environment")


def test_purge_leaves_nothing(node: nspawn.Machine, share: Path,
                              fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    run_pod(node, "alt")  # the runtime dir gets its record files
    node.run("dpkg", "--purge", "criproxy", timeout=300)
    assert node.run("dpkg-query", "-W", "criproxy", check=False).returncode != 0
    assert leftovers_inside(node, share) == []
    for path in ("/usr/lib/criproxy", "/etc/criproxy", "/run/criproxy", LISTEN, DROP_IN,
                 "/etc/systemd/system/kubelet.service.wants/criproxy.service",
                 "/var/lib/systemd/deb-systemd-helper-enabled/criproxy.service.dsh-also"):
        assert not os.path.lexists(node.host_path(path)), path
    assert node.is_active("criproxy") == "inactive"
    assert node.show("criproxy", "LoadState") == "not-found"


# Run by Debian's python3 inside the machine: tests/test_deb.py's leftovers() there.
LEFTOVERS = """
import os, subprocess, sys
left = []
for name in sys.stdin.read().split():
    path = "/" + name.lstrip("./")
    if path == "/" or not os.path.lexists(path):
        continue
    if name.endswith("/") and subprocess.run(["dpkg", "-S", os.path.realpath(path)],
                                             capture_output=True).returncode == 0:
        continue
    left.append(path)
print("\\n".join(left))
"""


def leftovers_inside(node: nspawn.Machine, share: Path) -> list[str]:
    """The package's paths still in the machine; a directory counts unless another
    package owns it too."""
    (deb,) = share.glob("criproxy_*.deb")
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                             capture_output=True).stdout
    names = subprocess.run(["tar", "-t"], input=listing, check=True,
                           capture_output=True).stdout.decode()
    out = node.run("python3", "-c", LEFTOVERS, input=names).stdout
    return out.split()


def test_the_unit_is_hardened_and_still_serves(node: nspawn.Machine, share: Path,
                                                fakes: dict[str, FakeRuntime]) -> None:
    install(node, share)
    verify = node.run("systemd-analyze", "verify", "/lib/systemd/system/criproxy.service",
                      check=False, timeout=120)
    assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr
    security = node.run("systemd-analyze", "security", "--no-pager", "criproxy.service",
                        check=False, timeout=120).stdout
    exposure = re.search(r"Overall exposure level for criproxy\.service: (\d+\.\d+)", security)
    assert exposure, security[-2000:]
    assert float(exposure[1]) <= MAX_EXPOSURE, security
    configure_and_start(node)
    version_now(node)
    assert run_pod(node, "alt").startswith("alt__")
    metrics = node.run(PRIVATE_PYTHON, "-c", "import urllib.request; print(urllib.request."
                       "urlopen('http://127.0.0.1:9610/metrics', timeout=10).read().decode())")
    for label in ("primary", "alt"):
        assert f'criproxy_runtime_up{{runtime="{label}"}} 1.0' in metrics.stdout, \
            metrics.stdout[-2000:]
