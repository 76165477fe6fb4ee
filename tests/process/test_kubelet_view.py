"""What kubelet sees while a runtime, a worker or criproxy itself is in trouble.

A kubelet-like relister (tests/support/relister.py) runs through every fault; a relist
that succeeds but lacks an existing pod or container would make kubelet
restart that pod, so there must be none. Failed relists are allowed, briefly.
The fakes keep their pods on disk (`--state`), as real runtimes do, so a
restarted runtime still has them.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from tests.process.routing_util import BUSYBOX, TARGET, image_of, unique, wait_until
from tests.support import fakeknobs
from tests.support.fakeruntime import FakeRuntime, start_fake
from tests.support.harness import REPO, Proxy, short_dir, start_proxy
from tests.support.observing import metrics_address
from tests.support.relister import UID_LABEL, Relister, longest_failure, partial, summary

PODS = 20
# A failed relist is harmless while short (kubelet's PLEG tolerates 3 min); these
# faults must end well within this.
FAILURES_END_WITHIN = 8.0
# A whole restart leaves the socket unserved for a few seconds (stop, start), and
# a gRPC client, kubelet's too, then redials with growing backoff (1 s, 1.6 s,
# 2.6 s, ...): the failures last longer than that socket gap.
RESTART_FAILURES_END_WITHIN = 15.0


@dataclasses.dataclass
class Node:
    base: Path
    fakes: dict[str, FakeRuntime]
    proxy: Proxy
    proxy_args: tuple[str, ...]
    sandboxes: set[str] = dataclasses.field(default_factory=set)
    containers: set[str] = dataclasses.field(default_factory=set)
    alt_uid: str = ""

    @property
    def connect(self) -> str:
        return f"{self.fakes['primary'].socket},alt:{self.fakes['alt'].socket}"

    def rt(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.proxy.channel())

    def relister(self) -> Relister:
        return Relister(str(self.proxy.listen), self.sandboxes, self.containers, self.alt_uid)


def fake_args(base: Path, name: str) -> tuple[str, ...]:
    return ("--state", str(base / f"{name}.state"), "--control", str(base / f"{name}.control"))


def start_runtime(base: Path, name: str) -> FakeRuntime:
    return start_fake(base, name, *fake_args(base, name))


def run_pod(rt: api_pb2_grpc.RuntimeServiceStub, runtime: str) -> tuple[str, str, list[str]]:
    """A pod with two running containers, through criproxy: (sandbox, uid, containers)."""
    uid = unique("uid")
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=unique(), namespace="view", uid=uid),
        labels={UID_LABEL: uid}, annotations={TARGET: runtime} if runtime != "primary" else {})
    sandbox = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=10).pod_sandbox_id
    containers = []
    for _ in range(2):
        container = rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=sandbox, sandbox_config=config, config=cri.ContainerConfig(
                metadata=cri.ContainerMetadata(name=unique("ctr")), labels={UID_LABEL: uid},
                image=cri.ImageSpec(image=image_of(runtime, BUSYBOX)))), timeout=10).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=container), timeout=10)
        containers.append(container)
    return sandbox, uid, containers


def start_node(*proxy_args: str, pods: int = PODS) -> Node:
    base = short_dir("cpk-")
    fakes = {name: start_runtime(base, name) for name in ("primary", "alt")}
    args = ("-listBudget", "1", *proxy_args)
    proxy = start_proxy(f"{fakes['primary'].socket},alt:{fakes['alt'].socket}", *args,
                        workdir=base, wait_for=["primary", "alt"])
    node = Node(base, fakes, proxy, args)
    rt = node.rt()
    for runtime, count in (("alt", pods), ("primary", 3)):
        for _ in range(count):
            sandbox, uid, containers = run_pod(rt, runtime)
            node.sandboxes.add(sandbox)
            node.containers.update(containers)
            if runtime == "alt":
                node.alt_uid = uid
    return node


def stop_node(node: Node) -> None:
    node.proxy.stop()
    for fake in node.fakes.values():
        fake.stop()
    shutil.rmtree(node.base, ignore_errors=True)


@pytest.fixture
def node() -> Iterator[Node]:
    started = start_node()
    yield started
    stop_node(started)


def fresh_relists(node: Node, seconds: float) -> None:
    """Let the front keep the runtimes' current answers (kubelet relists every second)."""
    relister = node.relister().start()
    time.sleep(seconds)
    relists = relister.stop()
    assert relists and not partial(relists) and not relists[-1].error, summary(relists)


def assert_kubelet_saw_everything(relists: list, log: str,
                                  failures_end_within: float = FAILURES_END_WITHIN) -> None:
    assert relists, "the relister never got an answer to Version"
    assert not partial(relists), summary(relists) + "\n" + log[-3000:]
    assert longest_failure(relists) < failures_end_within, summary(relists)
    assert not relists[-1].error, summary(relists)


def restart_criproxy(node: Node) -> None:
    node.proxy.stop()
    node.proxy = start_proxy(node.connect, *node.proxy_args, workdir=node.base,
                             wait_for=["primary", "alt"])


def settle(relister: Relister, seconds: float = 2.0) -> None:
    """Relist on after a fault until relists succeed again, and then some."""
    fault_over = time.monotonic()
    wait_until(lambda: any(r.at > fault_over and not r.error for r in relister.relists[-3:]),
               20, "a successful relist after the fault")
    time.sleep(seconds)


# --- faults -------------------------------------------------------------------------


def kill_worker(node: Node) -> None:
    os.kill(node.proxy.worker_pid("alt"), signal.SIGKILL)
    time.sleep(1.0)
    node.proxy.wait_state("alt", "up")


def freeze_runtime(node: Node) -> None:
    """SIGSTOP for longer than -listBudget."""
    node.fakes["alt"].proc.send_signal(signal.SIGSTOP)
    time.sleep(4.0)
    node.fakes["alt"].proc.send_signal(signal.SIGCONT)


def restart_runtime(node: Node) -> None:
    node.fakes["alt"].stop()
    time.sleep(2.0)
    node.fakes["alt"] = start_runtime(node.base, "alt")
    node.proxy.wait_state("alt", "up")


def kill_front(node: Node) -> None:
    os.kill(node.proxy.front_pid(), signal.SIGKILL)
    time.sleep(0.5)
    wait_until(lambda: _front_serving(node), 20, "a new front")


def _front_serving(node: Node) -> bool:
    try:
        return node.proxy.front_pid() > 0 and node.proxy.runtime_status("alt")["state"] == "up"
    except (OSError, ValueError, StopIteration, KeyError):
        return False


@pytest.mark.parametrize("fault", [kill_worker, freeze_runtime, restart_runtime, kill_front,
                                   restart_criproxy], ids=lambda f: f.__name__)
def test_no_relist_lacks_a_runtimes_pods_during(node: Node, fault) -> None:
    fresh_relists(node, 1.5)
    relister = node.relister().start()
    time.sleep(0.5)

    fault(node)
    settle(relister)

    limit = RESTART_FAILURES_END_WITHIN if fault is restart_criproxy else FAILURES_END_WITHIN
    assert_kubelet_saw_everything(relister.stop(), node.proxy.log(), limit)


def test_no_relist_lacks_pods_from_the_first_answer_of_a_restarted_criproxy(node: Node) -> None:
    """kubelet waits for Version and then relists at once: the restarted front has
    the last answers on disk, and a worker that has not reported yet is waited for."""
    fresh_relists(node, 1.5)
    node.proxy.stop()
    relister = node.relister().start()  # waits for Version, like kubelet
    node.proxy = start_proxy(node.connect, *node.proxy_args, workdir=node.base)
    wait_until(lambda: len(relister.relists) >= 8, 30, "relists after the start")
    settle(relister)

    assert_kubelet_saw_everything(relister.stop(), node.proxy.log(), RESTART_FAILURES_END_WITHIN)


def test_a_pod_run_right_after_start_waits_for_its_worker(node: Node) -> None:
    node.proxy.stop()
    node.proxy = start_proxy(node.connect, *node.proxy_args, workdir=node.base)
    rt = node.rt()
    wait_until(lambda: _answers_version(rt), 20, "Version")

    sandbox, _uid, _containers = run_pod(rt, "alt")

    assert sandbox.startswith("alt__")


def _answers_version(rt: api_pb2_grpc.RuntimeServiceStub) -> bool:
    try:
        rt.Version(cri.VersionRequest(), timeout=2)
        return True
    except grpc.RpcError:
        return False


def test_while_lists_are_slow_kubelets_own_changes_show(node: Node) -> None:
    """Lists slower than -listBudget for 10 s: a pod created through criproxy is in
    every relist and pod-uid List; one removed through criproxy never comes back."""
    rt = node.rt()
    fresh_relists(node, 1.5)
    relister = node.relister().start()
    control = node.base / "alt.control"
    fakeknobs.set_delays(control, {"ListPodSandbox": 3.0, "ListContainers": 3.0})
    started = time.monotonic()

    watched = _sandboxes_of_uid(rt, node.alt_uid)
    victim = next(s for s in node.sandboxes if s.startswith("alt__") and s not in watched)
    victim_containers = _containers_of(rt, victim)
    # While kubelet's changes are under way, either state may be listed.
    relister.expect(node.sandboxes - {victim}, node.containers - set(victim_containers))
    for container in victim_containers:
        rt.StopContainer(cri.StopContainerRequest(container_id=container), timeout=10)
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container), timeout=10)
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=victim), timeout=10)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=victim), timeout=10)
    sandbox, uid, containers = run_pod(rt, "alt")
    relister.expect(node.sandboxes - {victim} | {sandbox},
                    node.containers - set(victim_containers) | set(containers))
    seen_removed = []
    while time.monotonic() - started < 10:
        listed = rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30).items
        seen_removed += [s.id for s in listed if s.id == victim]
        by_uid = rt.ListPodSandbox(cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(
            label_selector={UID_LABEL: uid})), timeout=30).items
        assert [s.id for s in by_uid] == [sandbox]
        by_pod = rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(
            label_selector={UID_LABEL: uid})), timeout=30).containers
        assert sorted(c.id for c in by_pod) == sorted(containers)
        assert {c.state for c in by_pod} == {cri.CONTAINER_RUNNING}
    fakeknobs.set_delays(control, {})
    time.sleep(4.0)

    assert seen_removed == [], "a sandbox removed through criproxy came back"
    assert_kubelet_saw_everything(relister.stop(), node.proxy.log())


def _sandboxes_of_uid(rt: api_pb2_grpc.RuntimeServiceStub, uid: str) -> list[str]:
    return [s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(
        label_selector={UID_LABEL: uid})), timeout=10).items]


def _containers_of(rt: api_pb2_grpc.RuntimeServiceStub, sandbox: str) -> list[str]:
    return [c.id for c in rt.ListContainers(cri.ListContainersRequest(
        filter=cri.ContainerFilter(pod_sandbox_id=sandbox)), timeout=10).containers]


def test_a_pod_removed_behind_criproxys_back_goes_at_the_runtimes_next_answer(
        node: Node) -> None:
    rt = node.rt()
    fresh_relists(node, 1.5)
    victim = next(s for s in node.sandboxes if s.startswith("alt__"))
    with grpc.insecure_channel(node.fakes["alt"].address) as channel:
        direct = api_pb2_grpc.RuntimeServiceStub(channel)
        direct.RemovePodSandbox(cri.RemovePodSandboxRequest(
            pod_sandbox_id=victim.removeprefix("alt__")), timeout=10)

    listed = {s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items}

    assert victim not in listed
    node.fakes["alt"].stop()
    listed = {s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items}
    assert victim not in listed and listed == node.sandboxes - {victim}, \
        "the last answer is the runtime's own, which no longer had it"


def test_after_stale_for_a_silent_runtime_is_left_out() -> None:
    node = start_node("-staleFor", "3", pods=2)
    try:
        rt = node.rt()
        fresh_relists(node, 1.5)
        node.fakes["alt"].stop()
        stopped = time.monotonic()
        listed = {s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items}
        assert listed == node.sandboxes, "within -staleFor, the last answer stands in"
        node.proxy.wait_state("alt", "down")

        wait_until(lambda: not any(s.id.startswith("alt__") for s in rt.ListPodSandbox(
            cri.ListPodSandboxRequest(), timeout=10).items), 15, "alt to be left out")

        assert time.monotonic() - stopped > 2.5
        assert "more than -staleFor" in node.proxy.log()
    finally:
        stop_node(node)


def test_status_and_metrics_show_answers_from_the_last_answer(node: Node) -> None:
    rt = node.rt()
    fresh_relists(node, 1.5)
    node.fakes["alt"].stop()
    for _ in range(3):
        rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10)
    wait_until(lambda: node.proxy.runtime_status("alt")["serving_last_answer"], 5,
               "status to say alt's Lists come from its last answer")

    status = subprocess.run([sys.executable, "-m", "criproxy", "status", "-rundir",
                             str(node.proxy.rundir)], cwd=REPO, capture_output=True, text=True)
    row = next(line for line in status.stdout.splitlines() if line.startswith("alt "))
    assert "last answer" in row, status.stdout
    assert node.proxy.log().count("answering from its last answer") == 1, \
        "one log line when a runtime starts being served from its last answer"
    metrics = _scrape(node)
    assert 'criproxy_list_stale_answers_total{method="ListPodSandbox",runtime="alt"} 3.0' \
        in metrics, metrics


def _scrape(node: Node) -> str:
    import urllib.request
    address = metrics_address(node.proxy)
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        return answer.read().decode()


# --- one criproxy per socket ---------------------------------------------------------


def test_a_second_criproxy_on_a_live_socket_is_refused(node: Node) -> None:
    other = short_dir("cp2-")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "criproxy", "-connect", str(node.fakes["primary"].socket),
             "-listen", str(node.proxy.listen), "-rundir", str(other / "run")],
            cwd=REPO, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"criproxy: -listen {node.proxy.listen} is served by a running process "
            "(another criproxy?); not taking it over"]
        same_rundir = subprocess.run(
            [sys.executable, "-m", "criproxy", "-connect", str(node.fakes["primary"].socket),
             "-listen", str(other / "x.sock"), "-rundir", str(node.proxy.rundir)],
            cwd=REPO, capture_output=True, text=True, timeout=30)
        assert same_rundir.returncode == 2, same_rundir.stderr
        assert "already runs with -rundir" in same_rundir.stderr
        _answers_version(node.rt())
        assert node.proxy.listen.is_socket() and _answers_version(node.rt())
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_a_stale_socket_left_by_a_crash_is_replaced() -> None:
    base = short_dir("cps-")
    primary = start_fake(base, "primary")
    stale = base / "criproxy.sock"
    import socket
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))
    leftover.close()  # bound, never listening: what a SIGKILLed server leaves
    proxy = start_proxy(str(primary.socket), workdir=base, wait_for=["primary"])
    try:
        assert _answers_version(api_pb2_grpc.RuntimeServiceStub(proxy.channel()))
    finally:
        proxy.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_list_naming_one_runtimes_pod_is_answered_within_the_list_budget(node: Node) -> None:
    """A filter naming an alt sandbox asks alt only; while alt's Lists are slow, the
    answer comes from its last answer within -listBudget, not at the deadline."""
    rt = node.rt()
    fresh_relists(node, 1.5)
    watched = _sandboxes_of_uid(rt, node.alt_uid)
    fakeknobs.set_delays(node.base / "alt.control", {"ListContainers": 5.0})
    started = time.monotonic()

    listed = rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(
        pod_sandbox_id=watched[0])), timeout=30).containers

    assert time.monotonic() - started < 4.0
    assert len(listed) == 2 and {c.pod_sandbox_id for c in listed} == set(watched)
    fakeknobs.set_delays(node.base / "alt.control", {})
