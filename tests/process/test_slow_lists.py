"""A runtime that stops answering Lists (hung: it takes calls, never answers) is
waited for once: after it missed -listBudget, every List answers for it from its
last answer at once, and one List at a time asks it aside, until it answers one
(criproxy/front/slowlists.py). Found by the runtime-in-pod e2e: the Lists kubelet
makes for the runtime's own pod, on the primary, each waited 2 s on it.
"""
from __future__ import annotations

import time
from pathlib import Path

from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import Cluster
from tests.process.routing_util import Kubelet, wait_until
from tests.support.fakeknobs import set_delays

UID_LABEL = "io.kubernetes.pod.uid"


def timed_list(kubelet: Kubelet, **labels: str) -> tuple[float, set[str]]:
    started = time.monotonic()
    answer = kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(
        filter=cri.PodSandboxFilter(label_selector=labels)), timeout=10)
    return time.monotonic() - started, {p.id for p in answer.items}


def test_a_hung_runtime_is_waited_for_once(controlled_alt: tuple[Cluster, Path]) -> None:
    cluster, control = controlled_alt
    kubelet = Kubelet(cluster)
    mine = kubelet.run_pod("primary", labels={UID_LABEL: "runtime-pod"})
    theirs = kubelet.run_pod("alt")
    timed_list(kubelet)  # alt's last answer
    set_delays(control, {"ListPodSandbox": 8.0})

    first, listed = timed_list(kubelet)
    assert 1.5 < first < 4 and {mine, theirs} <= listed
    asked = len(cluster.fakes["alt"].entries("ListPodSandbox"))
    for _ in range(5):
        took, listed = timed_list(kubelet)
        assert took < 0.5 and {mine, theirs} <= listed
        took, listed = timed_list(kubelet, **{UID_LABEL: "runtime-pod"})
        assert took < 0.5 and listed == {mine}
    by_id = kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(
        filter=cri.PodSandboxFilter(id=theirs)), timeout=10).items
    assert [p.id for p in by_id] == [theirs]  # its own id, matched in its last answer
    assert len(cluster.fakes["alt"].entries("ListPodSandbox")) <= asked + 1  # one aside
    wait_until(lambda: "did not answer ListPodSandbox within" in cluster.proxy.log(), 10,
               "the slow runtime logged")

    set_delays(control, {})
    wait_until(lambda: "runtime alt answers Lists again" in cluster.proxy.log(), 20,
               "the List asked aside to answer")
    newer = kubelet.run_pod("alt")
    before = len(cluster.fakes["alt"].entries("ListPodSandbox"))
    took, listed = timed_list(kubelet)
    assert {mine, theirs, newer} <= listed
    assert len(cluster.fakes["alt"].entries("ListPodSandbox")) == before + 1  # asked again
