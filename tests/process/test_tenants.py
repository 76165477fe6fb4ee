"""Runtimes are tenants: one that lies about another runtime's pods changes nothing
kubelet sees of them (issue 30).

A real criproxy in front of three fake runtimes: the primary and `vm.cloud` are
honest; `alt` answers as a runtime does but adds, through its control file, a
copy of another runtime's pod to its answers (tests/support/fakeknobs.py "lies"). After
every lie a kubelet-like relist must leave the true pod exactly as it is
(tests/support/kubelet_beliefs.py: kubelet would take no action), and the lie is counted.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from tests.process.routing_util import TARGET, unique, wait_until
from tests.support import kubelet_beliefs
from tests.support.fakeknobs import set_delays
from tests.support.fakeruntime import GRPC_OPTIONS, FakeRuntime, start_fake
from tests.support.harness import Proxy, short_dir, start_proxy
from tests.support.kubelet_beliefs import relist
from tests.support.observing import run_cli, sample, scrape

UID, NAME = kubelet_beliefs.UID_LABEL, kubelet_beliefs.NAME_LABEL
LIAR_SANDBOX, LIAR_CONTAINER = "liar-sandbox", "liar-container"


@dataclass
class Pod:
    runtime: str
    uid: str
    name: str
    sandbox: str       # as kubelet sees it
    container: str


@dataclass
class Node:
    base: Path
    fakes: dict[str, FakeRuntime]
    proxy: Proxy
    control: Path
    connect: str

    def rt(self) -> api_pb2_grpc.RuntimeServiceStub:
        return self.proxy.runtime_stub()

    def restart_criproxy(self) -> None:
        self.proxy.stop()
        self.proxy = start_proxy(self.connect, workdir=self.base,
                                 wait_for=["primary", "alt", "vm.cloud"])

    def lie(self, **lies: bytes) -> None:
        set_delays(self.control, {}, lies=lies)


@pytest.fixture
def node() -> Iterator[Node]:
    base = short_dir("cpn-")
    control = base / "alt-control.json"
    set_delays(control, {})
    fakes = {"primary": start_fake(base, "primary"),
             "alt": start_fake(base, "alt", "--control", str(control)),
             "vm.cloud": start_fake(base, "vm.cloud")}
    connect = (f"{fakes['primary'].socket},alt:{fakes['alt'].socket},"
               f"vm.cloud:{fakes['vm.cloud'].socket}")
    node = Node(base, fakes, start_proxy(connect, workdir=base, wait_for=list(fakes)),
                control, connect)
    yield node
    node.proxy.stop()  # the one running now: a test may have restarted criproxy
    for fake in fakes.values():
        fake.stop()
    shutil.rmtree(base, ignore_errors=True)


# --- what kubelet does -----------------------------------------------------------------


def sandbox_config(uid: str, name: str, runtime: str) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="tenants", uid=uid),
        labels={UID: uid, "io.kubernetes.pod.name": name},
        annotations={} if runtime == "primary" else {TARGET: runtime})


def run_pod(rt: api_pb2_grpc.RuntimeServiceStub, runtime: str, uid: str | None = None) -> Pod:
    """As kubelet starts a pod: a sandbox, then a container labelled with the pod's uid."""
    name = unique()
    uid = uid or name + "-uid"
    config = sandbox_config(uid, name, runtime)
    sandbox = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=10).pod_sandbox_id
    image = "busybox" if runtime == "primary" else f"{runtime}/busybox"
    container = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sandbox, sandbox_config=config, config=cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=image),
            labels={UID: uid, NAME: "app"})), timeout=10).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=container), timeout=10)
    return Pod(runtime, uid, name, sandbox, container)


def assert_kubelet_leaves_it_alone(node: Node, pod: Pod, relists: int = 3) -> None:
    rt = node.rt()
    for _ in range(relists):
        for uid in ("", pod.uid):
            sandboxes, containers = relist(rt, uid)
            assert kubelet_beliefs.actions(pod.uid, sandboxes, containers) == []
            assert [s.id for s in sandboxes if s.metadata.uid == pod.uid] == [pod.sandbox]
            assert [c.id for c in containers if c.labels.get(UID) == pod.uid] == [pod.container]
        time.sleep(0.3)


# --- the lies ------------------------------------------------------------------------------


def fake_copy(pod: Pod, sandbox_state: int | None, container_state: int) -> dict[str, bytes]:
    """The liar's ListPodSandbox and ListContainers additions: a newer copy of `pod`."""
    later = time.time_ns() + 10**9
    lies = {"ListContainers": cri.ListContainersResponse(containers=[cri.Container(
        id=LIAR_CONTAINER, pod_sandbox_id=LIAR_SANDBOX if sandbox_state is not None else "none",
        metadata=cri.ContainerMetadata(name="app"), state=container_state, created_at=later,
        image=cri.ImageSpec(image="busybox"), labels={UID: pod.uid, NAME: "app"})
    ]).SerializeToString()}
    if sandbox_state is not None:
        lies["ListPodSandbox"] = cri.ListPodSandboxResponse(items=[cri.PodSandbox(
            id=LIAR_SANDBOX, metadata=cri.PodSandboxMetadata(
                name=pod.name, namespace="tenants", uid=pod.uid),
            state=sandbox_state, created_at=later, labels={UID: pod.uid})]).SerializeToString()
    return lies


VARIANTS = {
    "ready-running": (cri.SANDBOX_READY, cri.CONTAINER_RUNNING),
    "ready-exited": (cri.SANDBOX_READY, cri.CONTAINER_EXITED),
    "notready-exited": (cri.SANDBOX_NOTREADY, cri.CONTAINER_EXITED),
    "container-only": (None, cri.CONTAINER_EXITED),
}


def foreign_claims(node: Node, method: str) -> float:
    return sample(scrape(node.proxy), "criproxy_runtime_foreign_claims_total",
                  runtime="alt", method=method)


@pytest.mark.parametrize("owner", ["primary", "vm.cloud"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_runtime_listing_a_copy_of_another_runtimes_pod_changes_nothing_kubelet_sees(
        node: Node, owner: str, variant: str) -> None:
    pod = run_pod(node.rt(), owner)
    own_pod = run_pod(node.rt(), "alt")
    assert_kubelet_leaves_it_alone(node, pod, relists=1)
    node.lie(**fake_copy(pod, *VARIANTS[variant]))

    assert_kubelet_leaves_it_alone(node, pod)
    assert_kubelet_leaves_it_alone(node, own_pod, relists=1)  # the liar's own pod stays
    assert foreign_claims(node, "ListContainers") > 0
    status = node.proxy.runtime_status("alt")
    assert status["foreign_claims"] > 0 and status["claims_pods_of"] == [owner]
    assert pod.uid in status["last_foreign_claim"]
    assert node.proxy.runtime_status(owner)["foreign_claims"] == 0
    wait_until(lambda: f"runtime alt claims pod {pod.uid}" in node.proxy.log(), 5,
               "the claim in the log")


def test_status_and_doctor_say_which_runtime_claims_whose_pods(node: Node) -> None:
    pod = run_pod(node.rt(), "vm.cloud")
    node.lie(**fake_copy(pod, cri.SANDBOX_READY, cri.CONTAINER_RUNNING))
    relist(node.rt())
    wait_until(lambda: node.proxy.runtime_status("alt")["foreign_claims"] > 0, 5,
               "the status file to count alt's claims")
    status = run_cli("status", "-rundir", str(node.proxy.rundir)).stdout
    assert "claims pods of vm.cloud: " in status and pod.uid in status
    proc = node.base / "proc"   # an empty /proc: no kubelet to check on this node
    proc.mkdir()
    doctor = run_cli("doctor", "-rundir", str(node.proxy.rundir), "--proc", str(proc),
                     "--kubelet-config", str(proc / "none.yaml")).stdout
    assert "WARN runtime alt claims pods of vm.cloud" in doctor
    assert "runtime vm.cloud claims" not in doctor


def test_the_lie_never_enters_the_last_answers_and_survives_no_restart(node: Node) -> None:
    pod = run_pod(node.rt(), "primary")
    run_pod(node.rt(), "alt")
    node.lie(**fake_copy(pod, cri.SANDBOX_READY, cri.CONTAINER_RUNNING))
    assert_kubelet_leaves_it_alone(node, pod)
    node.restart_criproxy()                  # the owners are read back: dropped at once
    assert_kubelet_leaves_it_alone(node, pod)
    set_delays(node.control, {}, failures={"ListPodSandbox": ("UNAVAILABLE", "down"),
                                           "ListContainers": ("UNAVAILABLE", "down")})
    assert_kubelet_leaves_it_alone(node, pod)  # alt's last answers stand in for it
    assert "answering from its last answer" in node.proxy.log()


def test_claims_about_pods_nobody_owns_pass(node: Node) -> None:
    nobodys = Pod("alt", "nobodys-uid", "nobodys", "", "")
    node.lie(**fake_copy(nobodys, cri.SANDBOX_NOTREADY, cri.CONTAINER_EXITED))
    sandboxes, containers = relist(node.rt())
    assert "alt__" + LIAR_SANDBOX in [s.id for s in sandboxes]
    assert "alt__" + LIAR_CONTAINER in [c.id for c in containers]
    assert node.proxy.runtime_status("alt")["foreign_claims"] == 0


def test_status_stats_metrics_and_events_about_another_runtimes_pod_are_dropped(
        node: Node) -> None:
    pod = run_pod(node.rt(), "primary")
    own = run_pod(node.rt(), "alt")
    about_pod = cri.PodSandboxMetadata(name=pod.name, namespace="tenants", uid=pod.uid)
    node.lie(
        ListPodSandbox=fake_copy(pod, cri.SANDBOX_READY, 0)["ListPodSandbox"],
        ListPodSandboxStats=cri.ListPodSandboxStatsResponse(stats=[cri.PodSandboxStats(
            attributes=cri.PodSandboxAttributes(id="s2", metadata=about_pod))]).SerializeToString(),
        ListContainerStats=cri.ListContainerStatsResponse(stats=[cri.ContainerStats(
            attributes=cri.ContainerAttributes(id="c2", labels={UID: pod.uid}))]).SerializeToString(),
        ListPodSandboxMetrics=cri.ListPodSandboxMetricsResponse(pod_metrics=[
            cri.PodSandboxMetrics(pod_sandbox_id=LIAR_SANDBOX)]).SerializeToString(),
        # Merged into the liar's own answers: its own objects now name the primary's pod.
        ContainerStatus=cri.ContainerStatusResponse(status=cri.ContainerStatus(
            labels={UID: pod.uid})).SerializeToString(),
        PodSandboxStatus=cri.PodSandboxStatusResponse(status=cri.PodSandboxStatus(
            metadata=about_pod)).SerializeToString())
    rt = node.rt()
    assert all(s.id.startswith("alt__") is False or s.metadata.uid != pod.uid
               for s in relist(rt)[0])
    sandbox_stats = rt.ListPodSandboxStats(cri.ListPodSandboxStatsRequest(), timeout=10).stats
    assert pod.uid not in {s.attributes.metadata.uid for s in sandbox_stats if
                           s.attributes.id.startswith("alt__")}
    container_stats = rt.ListContainerStats(cri.ListContainerStatsRequest(), timeout=10).stats
    assert "alt__c2" not in {s.attributes.id for s in container_stats}
    pod_metrics = rt.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest(), timeout=10)
    assert "alt__" + LIAR_SANDBOX not in {m.pod_sandbox_id for m in pod_metrics.pod_metrics}
    for call, request in ((rt.ContainerStatus, cri.ContainerStatusRequest(container_id=own.container)),
                          (rt.PodSandboxStatus, cri.PodSandboxStatusRequest(pod_sandbox_id=own.sandbox))):
        with pytest.raises(grpc.RpcError) as failed:
            call(request, timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert "runtime alt answered" in failed.value.details()
    for method in ("ListPodSandboxStats", "ListContainerStats", "ListPodSandboxMetrics",
                   "ContainerStatus", "PodSandboxStatus"):
        assert foreign_claims(node, method) > 0, method


def test_events_about_another_runtimes_pod_are_dropped_and_the_others_pass(node: Node) -> None:
    pod = run_pod(node.rt(), "primary")
    node.lie(GetContainerEvents=cri.ContainerEventResponse(pod_sandbox_status=cri.PodSandboxStatus(
        metadata=cri.PodSandboxMetadata(uid=pod.uid))).SerializeToString())
    stream = node.rt().GetContainerEvents(cri.GetEventsRequest(), timeout=20)
    time.sleep(1.0)  # subscribed to every runtime
    run_pod(node.rt(), "alt")
    honest = run_pod(node.rt(), "vm.cloud")
    seen = []
    for event in stream:
        seen.append(event.container_id)
        assert event.pod_sandbox_status.metadata.uid != pod.uid
        if honest.container in seen:
            break
    stream.cancel()
    assert not any(c.startswith("alt__") for c in seen)
    assert foreign_claims(node, "GetContainerEvents") > 0


# --- honest runtimes lose nothing ------------------------------------------------------------


def test_a_pod_recreated_on_another_runtime_shows_its_new_sandbox_and_its_old_one_is_removed(
        node: Node) -> None:
    rt = node.rt()
    first = run_pod(rt, "primary")
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=first.sandbox), timeout=10)
    # Its annotation now names alt: kubelet starts its next sandbox there.
    moved = run_pod(rt, "alt", uid=first.uid)
    for uid in ("", first.uid):
        sandboxes, containers = relist(rt, uid)
        assert kubelet_beliefs.actions(first.uid, sandboxes, containers) == []
        shown = {s.id: s.state for s in sandboxes if s.metadata.uid == first.uid}
        assert shown == {moved.sandbox: cri.SANDBOX_READY, first.sandbox: cri.SANDBOX_NOTREADY}
        assert [c.id for c in containers if c.labels.get(UID) == first.uid] == [moved.container]
    # kubelet's garbage collection removes the old, dead sandbox: it goes to the primary.
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=first.sandbox), timeout=10)
    assert any(e["request"].get("pod_sandbox_id") == first.sandbox
               for e in node.fakes["primary"].entries("RemovePodSandbox"))
    assert node.proxy.runtime_status("primary")["foreign_claims"] == 0


def test_a_pod_made_behind_criproxys_back_belongs_to_the_runtime_that_lists_it(
        node: Node) -> None:
    with grpc.insecure_channel(node.fakes["vm.cloud"].address, options=GRPC_OPTIONS) as channel:
        direct = api_pb2_grpc.RuntimeServiceStub(channel)
        pod = run_pod(direct, "vm.cloud")
    pod.sandbox, pod.container = "vm.cloud__" + pod.sandbox, "vm.cloud__" + pod.container
    assert_kubelet_leaves_it_alone(node, pod, relists=1)   # vm.cloud lists it: its owner
    node.lie(**fake_copy(pod, cri.SANDBOX_READY, cri.CONTAINER_RUNNING))
    assert_kubelet_leaves_it_alone(node, pod)
    node.restart_criproxy()
    assert_kubelet_leaves_it_alone(node, pod)
