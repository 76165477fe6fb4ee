"""No runtime makes the shared front spend unbounded memory or CPU (issue 30, item 4):
an answer over -maxAnswerBytes is that runtime's bad answer, a runtime flooding the
merged event stream past -eventRate/-eventBurst has its events cut (not the
others'), and at most -maxRuntimes runtimes register.

The real criproxy in front of fake runtimes: `alt` misbehaves through its control
file (tests/support/fakeknobs.py) while it runs. The pieces, in-process:
tests/unit/test_bounds.py.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import Cluster, stop_cluster
from tests.process.registering import published, register, status_text
from tests.process.routing_util import Kubelet, wait_until
from tests.support.fakeknobs import set_delays
from tests.support.fakeruntime import start_fake
from tests.support.harness import short_dir, start_proxy

LIMIT = 1024 * 1024
TOO_BIG = b"x" * (2 * LIMIT)  # refused at its length prefix: what it holds never matters
RATE, BURST = 5, 20

# --- answers over -maxAnswerBytes, event floods: real criproxy -----------------------------


@pytest.fixture
def bounded() -> Iterator[tuple[Cluster, Path]]:
    """primary and a controlled alt behind criproxy with small bounds."""
    base = short_dir("cpb-")
    control = base / "alt-control.json"
    set_delays(control, {})
    fakes = {"primary": start_fake(base, "primary"),
             "alt": start_fake(base, "alt", "--control", str(control))}
    proxy = start_proxy(f"{fakes['primary'].socket},alt:{fakes['alt'].socket}",
                        "-maxAnswerBytes", str(LIMIT), "-eventRate", str(RATE),
                        "-eventBurst", str(BURST), workdir=base, wait_for=list(fakes))
    cluster = Cluster(proxy, fakes, base)
    yield cluster, control
    stop_cluster(cluster)


def test_an_answer_over_the_limit_is_the_runtimes_bad_answer(
        bounded: tuple[Cluster, Path]) -> None:
    cluster, control = bounded
    kubelet = Kubelet(cluster)
    pods = {runtime: kubelet.run_pod(runtime) for runtime in ("primary", "alt")}
    kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)  # alt's last answer
    set_delays(control, {}, garbage={"ListPodSandbox": TOO_BIG, "PodSandboxStatus": TOO_BIG})

    listed = {p.id for p in kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(),
                                                      timeout=5).items}
    assert set(pods.values()) <= listed  # alt from its last answer, as any failing runtime
    with pytest.raises(grpc.RpcError) as failed:
        kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pods["alt"]),
                                    timeout=5)
    assert failed.value.code() == grpc.StatusCode.INTERNAL  # not RESOURCE_EXHAUSTED
    assert failed.value.details() == ("runtime alt answered PodSandboxStatus with 2097152 "
                                      "bytes, over -maxAnswerBytes (1048576 bytes)")
    wait_until(lambda: cluster.proxy.runtime_status("alt")["bad_answers"] >= 2, 5,
               "the status file to count alt's answers over the limit")
    assert "-maxAnswerBytes" in cluster.proxy.runtime_status("alt")["last_bad_answer"]
    assert cluster.proxy.runtime_status("primary")["bad_answers"] == 0
    assert cluster.proxy.runtime_status("alt")["state"] == "up"


def test_a_runtimes_own_resource_exhausted_passes_unchanged(
        bounded: tuple[Cluster, Path]) -> None:
    """The runtime refusing kubelet's request as too big is kubelet's to know."""
    cluster, control = bounded
    kubelet = Kubelet(cluster)
    pod = kubelet.run_pod("alt")
    refusal = "SERVER: Received message larger than max (1048577 vs. 1048576)"
    set_delays(control, {}, failures={"PodSandboxStatus": ("RESOURCE_EXHAUSTED", refusal)})
    with pytest.raises(grpc.RpcError) as failed:
        kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=5)
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failed.value.details() == refusal
    assert cluster.proxy.runtime_status("alt")["bad_answers"] == 0


class Events:
    """kubelet's merged event stream, read aside: the container ids seen, in order."""

    def __init__(self, kubelet: Kubelet) -> None:
        self.stream = kubelet.rt.GetContainerEvents(cri.GetEventsRequest(), timeout=120)
        self.seen: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.seen.put(event.container_id)
        except grpc.RpcError:
            pass

    def wait_for(self, container_id: str, timeout: float = 10) -> list[str]:
        """Every id seen until `container_id` (which must come within `timeout`)."""
        got = []
        deadline = time.monotonic() + timeout
        while container_id not in got:
            got.append(self.seen.get(timeout=max(0.01, deadline - time.monotonic())))
        return got

    def drain(self) -> list[str]:
        got = []
        while not self.seen.empty():
            got.append(self.seen.get_nowait())
        return got

    def close(self) -> None:
        self.stream.cancel()
        self._reader.join(5)


@pytest.fixture
def events(bounded: tuple[Cluster, Path]) -> Iterator[Events]:
    cluster, _control = bounded
    subscribed = Events(Kubelet(cluster))
    primary = Kubelet(cluster)
    # Subscribed to both runtimes once an event of each comes through.
    for runtime in ("primary", "alt"):
        wait_until(lambda: _event_arrives(primary, subscribed, runtime), 10,
                   f"{runtime}'s events to reach the merged stream", interval=0.2)
    yield subscribed
    subscribed.close()


def _event_arrives(kubelet: Kubelet, events: Events, runtime: str) -> bool:
    sandbox = kubelet.run_pod(runtime)
    container = kubelet.create_container(runtime, sandbox)
    try:
        events.wait_for(container, timeout=0.5)
        return True
    except queue.Empty:
        return False


def test_an_event_over_the_limit_ends_only_that_runtimes_stream(
        bounded: tuple[Cluster, Path], events: Events) -> None:
    cluster, control = bounded
    kubelet = Kubelet(cluster)
    set_delays(control, {}, garbage={"GetContainerEvents": TOO_BIG})
    kubelet.create_container("alt", kubelet.run_pod("alt"))
    wait_until(lambda: "answered GetContainerEvents with 2097152 bytes, over -maxAnswerBytes"
               in cluster.proxy.log(), 5, "alt's stream to end on its event over the limit")
    primary = kubelet.create_container("primary", kubelet.run_pod("primary"))
    events.wait_for(primary)
    set_delays(control, {})
    wait_until(lambda: _event_arrives(kubelet, events, "alt"), 10,
               "alt subscribed again", interval=0.2)


def test_a_flooding_runtime_has_its_events_cut_not_the_others(
        bounded: tuple[Cluster, Path], events: Events) -> None:
    cluster, _control = bounded
    kubelet = Kubelet(cluster)
    alt_pod, primary_pod = kubelet.run_pod("alt"), kubelet.run_pod("primary")
    events.drain()
    flood = []
    for _ in range(BURST):  # 2 events each: twice the burst, faster than the rate
        container = kubelet.create_container("alt", alt_pod)
        kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=container), timeout=5)
        flood.append(container)
    wait_until(lambda: "runtime alt sent events faster than -eventRate 5/s beyond "
               "-eventBurst 20: its events are cut" in cluster.proxy.log(), 5,
               "the cut to be logged")

    primary = kubelet.create_container("primary", primary_pod)
    seen = events.wait_for(primary)
    assert 0 < sum(1 for c in seen if c in flood) < 2 * BURST
    assert flood[-1] not in seen  # the flood's end was cut
    # Cut for a while (the bucket refilling), then its events come through again.
    wait_until(lambda: _event_arrives(kubelet, events, "alt"), 2 * BURST / RATE,
               "alt's events again after the cut", interval=0.5)


# --- at most -maxRuntimes registered -------------------------------------------------------


@pytest.fixture
def node() -> Iterator[Cluster]:
    """The primary behind criproxy; one runtime may register; -leaveAfter 1 s."""
    base = short_dir("cpm-")
    primary = start_fake(base, "primary")
    proxy = start_proxy(str(primary.socket), "-maxRuntimes", "1", "-leaveAfter", "1",
                        workdir=base, wait_for=["primary"])
    cluster = Cluster(proxy, {"primary": primary}, base)
    yield cluster
    stop_cluster(cluster)


def test_a_runtime_past_max_runtimes_is_refused_until_a_place_is_free(node: Cluster) -> None:
    register(node, "first.cloud")
    node.proxy.wait_state("first.cloud", "up")
    register(node, "second.cloud")
    wait_until(lambda: [r["entry"] for r in published(node.proxy)["refused"]] ==
               ["second.cloud.sock"], 10, "second.cloud refused")
    assert [r["name"] for r in published(node.proxy)["runtimes"]] == ["first.cloud"]
    assert "refused second.cloud.sock: 1 runtimes are registered already, the most " \
           "-maxRuntimes allows" in status_text(node.proxy)
    assert "refusing" in node.proxy.log() and "-maxRuntimes" in node.proxy.log()

    os.unlink(node.proxy.runtimes_dir / "first.cloud.sock")  # it leaves after -leaveAfter
    wait_until(lambda: [r["name"] for r in published(node.proxy)["runtimes"]] ==
               ["second.cloud"], 15, "second.cloud to take the place first.cloud left")
    assert published(node.proxy)["refused"] == []
    node.proxy.wait_state("second.cloud", "up")
