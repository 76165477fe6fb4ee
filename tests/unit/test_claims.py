"""Unit tests of front/claims.py: a runtime's answers only describe the pods it owns."""
from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as cri

from criproxy.front.claims import ForeignClaims
from criproxy.record.owners import PodOwners

UID = "io.kubernetes.pod.uid"


def sandbox(sandbox_id: str, uid: str, created: int = 1, state: int = cri.SANDBOX_READY,
            label: bool = True) -> cri.PodSandbox:
    return cri.PodSandbox(id=sandbox_id, metadata=cri.PodSandboxMetadata(name=uid, uid=uid),
                          created_at=created, state=state, labels={UID: uid} if label else {})


def container(container_id: str, sandbox_id: str, uid: str = "") -> cri.Container:
    return cri.Container(id=container_id, pod_sandbox_id=sandbox_id,
                         metadata=cri.ContainerMetadata(name="c"),
                         labels={UID: uid} if uid else {}, state=cri.CONTAINER_RUNNING)


class Node:
    """The primary owns pod `p`, alt owns pod `a`; `newest` is what the record knows."""

    def __init__(self, tmp_path: Path) -> None:
        self.owners = PodOwners(str(tmp_path), ["", "alt"])
        self.owners.place("p", "")
        self.owners.place("a", "alt")
        self.newest: dict[tuple[str, str], int] = {}
        self.claims = ForeignClaims(self.owners, lambda r, u: self.newest.get((r, u)),
                                    lambda r: r or "primary")

    def own(self, runtime: str, method: str, answer: object, complete: bool = False) -> object:
        raw = answer.SerializeToString()  # type: ignore[attr-defined]
        kept = self.claims.own_answer(runtime, method, type(answer), raw, complete)
        return None if kept is None else type(answer).FromString(kept)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_a_list_loses_the_items_about_another_runtimes_pod_and_counts_them(node: Node) -> None:
    answer = cri.ListPodSandboxResponse(items=[
        sandbox("own", "a"), sandbox("fake", "p", created=9), sandbox("orphan", "nobody's"),
        sandbox("label-only", "a2", label=False)])
    answer.items[3].labels[UID] = "p"   # metadata says one pod, the label another
    kept = node.own("alt", "ListPodSandbox", answer, complete=True)
    assert [s.id for s in kept.items] == ["own", "orphan"]  # type: ignore[union-attr]
    status = node.claims.snapshot("alt")
    assert status["foreign_claims"] == 2 and status["claims_pods_of"] == ["primary"]
    assert "ListPodSandbox: pod p of runtime primary" == status["last_foreign_claim"]
    assert node.claims.snapshot("")["foreign_claims"] == 0


def test_the_containers_stats_and_metrics_of_a_dropped_sandbox_go_with_it(node: Node) -> None:
    node.own("alt", "ListPodSandbox", cri.ListPodSandboxResponse(
        items=[sandbox("fake", "p"), sandbox("own", "a")]), complete=True)
    containers = node.own("alt", "ListContainers", cri.ListContainersResponse(containers=[
        container("c-unlabelled", "fake"), container("c-labelled", "own", uid="p"),
        container("c-own", "own", uid="a")]))
    assert [c.id for c in containers.containers] == ["c-own"]  # type: ignore[union-attr]
    metrics = node.own("alt", "ListPodSandboxMetrics", cri.ListPodSandboxMetricsResponse(
        pod_metrics=[cri.PodSandboxMetrics(pod_sandbox_id=i) for i in ("fake", "own")]))
    assert [m.pod_sandbox_id for m in metrics.pod_metrics] == ["own"]  # type: ignore[union-attr]
    stats = node.own("alt", "ListPodSandboxStats", cri.ListPodSandboxStatsResponse(stats=[
        cri.PodSandboxStats(attributes=cri.PodSandboxAttributes(id="fake")),
        cri.PodSandboxStats(attributes=cri.PodSandboxAttributes(
            id="x", metadata=cri.PodSandboxMetadata(uid="p")))]))
    assert list(stats.stats) == []  # type: ignore[union-attr]
    container_stats = node.own("alt", "ListContainerStats", cri.ListContainerStatsResponse(
        stats=[cri.ContainerStats(attributes=cri.ContainerAttributes(id="c", labels={UID: "p"}))]))
    assert list(container_stats.stats) == []  # type: ignore[union-attr]


def test_a_status_or_an_event_about_another_runtimes_pod_is_not_shown(node: Node) -> None:
    lie = cri.ContainerStatusResponse(status=cri.ContainerStatus(id="c", labels={UID: "p"}))
    assert node.own("alt", "ContainerStatus", lie) is None
    truth = cri.ContainerStatusResponse(status=cri.ContainerStatus(id="c", labels={UID: "a"}))
    assert node.own("alt", "ContainerStatus", truth) == truth
    pod_lie = cri.PodSandboxStatusResponse(status=cri.PodSandboxStatus(
        id="s", metadata=cri.PodSandboxMetadata(uid="p")))
    assert node.own("alt", "PodSandboxStatus", pod_lie) is None
    event = cri.ContainerEventResponse(container_id="c", containers_statuses=[
        cri.ContainerStatus(id="c", labels={UID: "p"})])
    assert node.own("alt", "GetContainerEvents", event) is None
    assert node.own("", "GetContainerEvents", event) == event


class NotToDecode:
    """A response class whose answers must not be decoded again."""

    @staticmethod
    def FromString(_raw: bytes) -> None:
        raise AssertionError("an unchanged relist was decoded again")


def test_an_honest_relist_passes_as_it_is_and_is_not_looked_at_again(node: Node) -> None:
    relist = cri.ListPodSandboxResponse(items=[sandbox("s", "p")]).SerializeToString()
    assert node.claims.own_answer("", "ListPodSandbox", cri.ListPodSandboxResponse, relist,
                                  complete=True) is relist
    # kubelet's GetPodStatus between two relists: a filtered List of the same method.
    filtered = cri.ListPodSandboxResponse(items=[sandbox("t", "p")]).SerializeToString()
    assert node.claims.own_answer("", "ListPodSandbox", cri.ListPodSandboxResponse,
                                  filtered) is filtered
    assert node.claims.own_answer("", "ListPodSandbox", NotToDecode,  # type: ignore[arg-type]
                                  relist, complete=True) is relist
    node.owners.place("q", "alt")  # the owners changed: looked at again
    with pytest.raises(AssertionError, match="decoded again"):
        node.claims.own_answer("", "ListPodSandbox", NotToDecode,  # type: ignore[arg-type]
                               relist, complete=True)


def test_nothing_is_decoded_while_no_pod_belongs_to_another_runtime(tmp_path: Path) -> None:
    owners = PodOwners(str(tmp_path), ["", "alt"])
    owners.place("p", "")
    claims = ForeignClaims(owners, lambda r, u: None, str)
    assert claims.own_answer("", "ListPodSandbox", cri.ListPodSandboxResponse,
                             b"\xff") == b"\xff"


def test_a_moved_pods_old_sandbox_is_shown_dead_and_older_and_nothing_else_of_it(
        node: Node) -> None:
    node.owners.place("p", "alt")           # kubelet recreated pod p on alt
    node.newest[("alt", "p")] = 50
    answer = cri.ListPodSandboxResponse(items=[
        sandbox("old", "p", created=10), sandbox("newer", "p", created=60)])
    kept = node.own("", "ListPodSandbox", answer, complete=True)
    assert [(s.id, s.state) for s in kept.items] == [  # type: ignore[union-attr]
        ("old", cri.SANDBOX_NOTREADY)]
    containers = node.own("", "ListContainers", cri.ListContainersResponse(containers=[
        container("c", "old", uid="p")]))
    assert list(containers.containers) == []  # type: ignore[union-attr]
    status = node.own("", "PodSandboxStatus", cri.PodSandboxStatusResponse(
        status=cri.PodSandboxStatus(id="old", metadata=cri.PodSandboxMetadata(uid="p"),
                                    created_at=10, state=cri.SANDBOX_READY)))
    assert status.status.state == cri.SANDBOX_NOTREADY  # type: ignore[union-attr]
    assert node.claims.snapshot("")["foreign_claims"] == 0  # the previous owner: no claim
    # Someone else's copy of it is a claim all the same.
    assert node.own("", "ListPodSandbox", cri.ListPodSandboxResponse(
        items=[sandbox("x", "a", created=1)])).items == []  # type: ignore[union-attr]
    assert node.claims.snapshot("")["foreign_claims"] == 1
