"""End to end on real containerd: a runtime that lies about the primary's pod changes
nothing kubelet sees of it, before and after a criproxy restart (issue 30, "Proven by").

The node of the other e2e modules (scripts/runtimes.py: containerd A with runc, the
primary; containerd B with crun), but criproxy reaches B, as runtime `alt`, through a
man in the middle (tests/e2e/lying_runtime.py) that forwards every call to B and, when told
to, adds to B's ListPodSandbox and ListContainers answers a newer, READY copy of a
primary pod's sandbox with a RUNNING copy of its container: the lie that made a real
kubelet kill and recreate the true pod (../shared/KUBELET.md, "What kubelet
believes"). A relister deciding as kubelet does (tests/support/kubelet_beliefs.py) must find
nothing to do about the true pod, nor about B's own honest pod.

What each containerd really holds is checked on its own socket, bypassing criproxy.
Needs root, like the other e2e modules; `runtimes.up` apt-get installs what is missing.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from cri_api.v1 import api_pb2 as pb

from tests.e2e.e2e_node import (
    CALL_TIMEOUT, LIST_BUDGET, PRIMARY, STREAM_URL, Cri, Node, Pod, pods, two_containerds,
    wait_for)
from tests.e2e.kubelet_calls import busybox_for, run_kubelet_pod, start_container
from tests.e2e.lying_runtime import LyingRuntime
from tests.support import kubelet_beliefs
from tests.support.harness import Proxy, start_proxy
from tests.support.kubelet_beliefs import relist
from tests.support.observing import run_cli, sample, scrape

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: runs two containerd instances (mounts, cgroups, namespaces)")

ALT = "alt"                        # B behind the man in the middle, in -connect
LABELS = ["primary", ALT]          # the runtimes' labels in criproxy's status
UID = kubelet_beliefs.UID_LABEL
CLAIMS_METRIC = "criproxy_runtime_foreign_claims_total"
LIED_ABOUT = ("ListPodSandbox", "ListContainers")
RELISTS = 3


@dataclass
class TenantNode(Node):
    mitm: LyingRuntime                # criproxy's runtime `alt`: B, lying when told
    connect: str                      # criproxy's -connect, the same after a restart


def start_criproxy(base: Path, connect: str) -> Proxy:
    return start_proxy(connect, "-streamUrl", STREAM_URL, "-listBudget", str(LIST_BUDGET),
                       workdir=base / "px", wait_for=LABELS)


@pytest.fixture(scope="module")
def node() -> Iterator[TenantNode]:
    with two_containerds("e2et-") as (base, info):
        a, b = info["instances"]["a"], info["instances"]["b"]
        mitm = LyingRuntime(base / "mitm.sock", b["endpoint"]).start()
        started: TenantNode | None = None
        try:
            connect = f"{a['socket']},{ALT}:{mitm.address}"
            proxy = start_criproxy(base, connect)
            direct = {PRIMARY: Cri.connect(a["endpoint"]), ALT: Cri.connect(b["endpoint"])}
            started = TenantNode(base, info, proxy, Cri.connect(f"unix://{proxy.listen}"),
                                 direct, base / "logs", mitm, connect)
            yield started
        finally:
            if started is not None:
                started.close()
            mitm.stop()


def restart_criproxy(node: TenantNode) -> None:
    """Stop criproxy and start it again with the same flags and runtime dir, as an
    upgrade or `systemctl restart` does."""
    node.proxy.stop()
    node.via.channel.close()
    node.proxy = start_criproxy(node.base, node.connect)
    node.via = Cri.connect(f"unix://{node.proxy.listen}")


@contextlib.contextmanager
def lying(node: TenantNode) -> Iterator[LyingRuntime]:
    """The man in the middle tells the truth again afterwards, whatever happened."""
    try:
        yield node.mitm
    finally:
        node.mitm.tell_truth()


# ---------------------------------------------------------------- the pods and the lie


@dataclass
class Shown:
    """A pod as kubelet knows it: its uid and the ids criproxy showed when it was made."""
    uid: str
    sandbox: str
    container: str


def run_pod_with_container(node: TenantNode, made: list[Pod], runtime: str,
                           name: str) -> Shown:
    """As kubelet: a sandbox (the target-runtime annotation names a runtime other than
    the primary), then a container labelled with the pod's uid and its name."""
    pod = run_kubelet_pod(node, made, runtime, name, by_handler=False)
    container = start_container(node, pod, "main", busybox_for(node, pod))
    return Shown(pod.config.metadata.uid, pod.id, container)


def on_primary(node: TenantNode, shown: Shown) -> tuple[pb.PodSandbox, pb.Container]:
    """The true pod's sandbox and container, as the primary's containerd lists them."""
    rt = node.direct[PRIMARY].runtime
    sandboxes = rt.ListPodSandbox(pb.ListPodSandboxRequest(
        filter=pb.PodSandboxFilter(id=shown.sandbox)), timeout=CALL_TIMEOUT).items
    containers = rt.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(id=shown.container)), timeout=CALL_TIMEOUT).containers
    assert len(sandboxes) == 1 and len(containers) == 1, (sandboxes, containers)
    return sandboxes[0], containers[0]


def newer_copy(sandbox: pb.PodSandbox, container: pb.Container) -> dict[str, bytes]:
    """What the liar adds to its answers: a newer, READY copy of the true sandbox (same
    metadata and labels) and a RUNNING copy of its container in it."""
    fake_sandbox, fake_container = pb.PodSandbox(), pb.Container()
    fake_sandbox.CopyFrom(sandbox)
    fake_sandbox.id = uuid.uuid4().hex * 2   # as containerd's ids look
    fake_sandbox.created_at = sandbox.created_at + 10**9
    fake_sandbox.state = pb.SANDBOX_READY
    fake_container.CopyFrom(container)
    fake_container.id = uuid.uuid4().hex * 2
    fake_container.pod_sandbox_id = fake_sandbox.id
    fake_container.created_at = container.created_at + 10**9
    fake_container.state = pb.CONTAINER_RUNNING
    return {
        "ListPodSandbox": pb.ListPodSandboxResponse(items=[fake_sandbox]).SerializeToString(),
        "ListContainers": pb.ListContainersResponse(
            containers=[fake_container]).SerializeToString()}


def lie_about(node: TenantNode, shown: Shown) -> None:
    """Switch the lie on, and see that it would work: the man in the middle's answers,
    merged with the primary's as a naive proxy would, make kubelet act on the pod."""
    node.mitm.lie(newer_copy(*on_primary(node, shown)))
    liar = Cri.connect(node.mitm.address)
    try:
        lied_sandboxes, lied_containers = relist(liar.runtime)
    finally:
        liar.channel.close()
    sandboxes, containers = relist(node.direct[PRIMARY].runtime)
    assert kubelet_beliefs.actions(shown.uid, sandboxes + lied_sandboxes,
                                   containers + lied_containers) != []


# ---------------------------------------------------------------- what kubelet sees


def assert_kubelet_leaves_them_alone(node: TenantNode, pods_shown: list[Shown]) -> None:
    """Relists through criproxy: each pod's own lists as GetPodStatus makes them (filtered
    by its uid), then the unfiltered relist. The filtered ones come first: right after a
    restart, no complete ListPodSandbox has told criproxy who owns what yet, so only the
    owners table read back can drop the lie from them."""
    for _ in range(RELISTS):
        for uid in [*(shown.uid for shown in pods_shown), ""]:
            sandboxes, containers = relist(node.via.runtime, uid)
            for shown in pods_shown:
                if uid in ("", shown.uid):
                    assert_pod_shown_as_it_is(shown, sandboxes, containers)


def assert_pod_shown_as_it_is(shown: Shown, sandboxes: list[pb.PodSandbox],
                              containers: list[pb.Container]) -> None:
    seen = ([s.id for s in sandboxes if s.metadata.uid == shown.uid],
            [c.id for c in containers if c.labels.get(UID) == shown.uid])
    assert kubelet_beliefs.actions(shown.uid, sandboxes, containers) == [], seen
    assert seen == ([shown.sandbox], [shown.container])


def assert_primary_answers_for(node: TenantNode, shown: Shown) -> None:
    """The statuses of the true ids come from the primary: READY and RUNNING, with the
    primary's own creation times (the liar's copies are newer)."""
    via, direct = node.via.runtime, node.direct[PRIMARY].runtime
    sandbox_request = pb.PodSandboxStatusRequest(pod_sandbox_id=shown.sandbox)
    sandbox = via.PodSandboxStatus(sandbox_request, timeout=CALL_TIMEOUT).status
    real_sandbox = direct.PodSandboxStatus(sandbox_request, timeout=CALL_TIMEOUT).status
    assert (sandbox.id, sandbox.state, sandbox.metadata.uid) == (
        shown.sandbox, pb.SANDBOX_READY, shown.uid)
    assert sandbox.created_at == real_sandbox.created_at
    container_request = pb.ContainerStatusRequest(container_id=shown.container)
    container = via.ContainerStatus(container_request, timeout=CALL_TIMEOUT).status
    real_container = direct.ContainerStatus(container_request, timeout=CALL_TIMEOUT).status
    assert (container.id, container.state) == (shown.container, pb.CONTAINER_RUNNING)
    assert container.created_at == real_container.created_at


def alt_claims(node: TenantNode) -> dict | None:
    """alt's row of the status file once it shows claims dropped (written about every
    second)."""
    status = node.proxy.runtime_status(ALT)
    return status if status["foreign_claims"] > 0 else None


def assert_claims_counted(node: TenantNode, shown: Shown) -> None:
    status = wait_for("alt's dropped claims in the status file", lambda: alt_claims(node))
    assert isinstance(status, dict)
    assert status["claims_pods_of"] == ["primary"], status
    assert shown.uid in status["last_foreign_claim"], status
    assert node.proxy.runtime_status("primary")["foreign_claims"] == 0
    samples = scrape(node.proxy)
    for method in LIED_ABOUT:
        assert sample(samples, CLAIMS_METRIC, runtime=ALT, method=method) > 0, method
    printed = run_cli("status", "-rundir", str(node.proxy.rundir))
    assert printed.returncode == 0, printed.stdout + printed.stderr
    assert "claims pods of primary" in printed.stdout, printed.stdout


# ---------------------------------------------------------------- the tests


def test_a_runtime_lying_about_the_primarys_pod_changes_nothing_kubelet_sees_across_a_restart(
        node: TenantNode) -> None:
    with pods(node) as made, lying(node):
        true_pod = run_pod_with_container(node, made, PRIMARY, "true")
        honest = run_pod_with_container(node, made, ALT, "honest")
        assert_kubelet_leaves_them_alone(node, [true_pod, honest])

        lie_about(node, true_pod)
        assert_kubelet_leaves_them_alone(node, [true_pod, honest])
        assert_primary_answers_for(node, true_pod)
        assert_claims_counted(node, true_pod)

        restart_criproxy(node)   # the lie still on
        assert_kubelet_leaves_them_alone(node, [true_pod, honest])
        assert_primary_answers_for(node, true_pod)
        assert_claims_counted(node, true_pod)


def test_exec_into_the_true_container_reaches_the_primary_while_another_runtime_lies(
        node: TenantNode) -> None:
    word = f"true-{uuid.uuid4().hex[:8]}"
    with pods(node) as made, lying(node):
        true_pod = run_pod_with_container(node, made, PRIMARY, "exec")
        lie_about(node, true_pod)
        # Written on the primary's own socket, read back through criproxy.
        written = node.direct[PRIMARY].runtime.ExecSync(pb.ExecSyncRequest(
            container_id=true_pod.container, cmd=["sh", "-c", f"echo {word} > /word"],
            timeout=10), timeout=CALL_TIMEOUT)
        assert written.exit_code == 0, written.stderr
        read = node.via.runtime.ExecSync(pb.ExecSyncRequest(
            container_id=true_pod.container, cmd=["cat", "/word"], timeout=10),
            timeout=CALL_TIMEOUT)
        assert (read.exit_code, read.stdout) == (0, f"{word}\n".encode()), read.stderr
        # A streaming exec is served by the primary's own streaming server.
        url = node.via.runtime.Exec(pb.ExecRequest(
            container_id=true_pod.container, cmd=["sh"], stdout=True),
            timeout=CALL_TIMEOUT).url
        port = node.info["instances"]["a"]["stream_port"]
        assert url.startswith(f"http://127.0.0.1:{port}/"), url
