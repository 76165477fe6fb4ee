"""A machine booted with Debian's systemd, and the steps root takes on it, for
the tests of the built .deb under a real systemd (tests/node/test_systemd_*.py).

Each test boots Debian's systemd as PID 1 in a systemd-nspawn container
(tests/node/nspawn.py: a fresh copy of a cached root every time, private network) and
does there what root does on a node. The runtimes are fake ones
(tests/support/fakeruntime.py) served on the host, their sockets bound in at /run/fakes;
the tests reach criproxy's socket from the host through /proc/LEADER/root. A
kubelet stand-in (tests/node/kubelet_standin.py) runs as kubelet.service with
criproxy's drop-in, relisting as kubelet does. The package is built once per
test run.
"""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from tests.node import nspawn

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
