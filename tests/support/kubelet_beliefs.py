"""What kubelet would do to a pod, given one relist (../shared/KUBELET.md, "What kubelet
believes"; kuberuntime's computePodActions).

kubelet groups ListPodSandbox and ListContainers by pod uid (a sandbox's metadata
uid, a container's io.kubernetes.pod.uid label), whichever runtime they came
from, takes the newest sandbox by created_at as the pod's and, per container
name, the newest container. It acts when several sandboxes are ready, when the
newest is not ready (kill the pod, create a sandbox), when there is none (create
one), when a container's newest copy is not running (restart it) or lives in
another sandbox than the pod's (kill it). `actions` lists those decisions: an
empty list is a pod kubelet leaves alone. `relist` makes the two List calls it reads.
"""
from __future__ import annotations

from typing import Iterable

from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

UID_LABEL = "io.kubernetes.pod.uid"
NAME_LABEL = "io.kubernetes.container.name"


def _newest_containers(uid: str, containers: Iterable[cri.Container]) -> dict[str, cri.Container]:
    newest: dict[str, cri.Container] = {}
    for container in containers:
        if container.labels.get(UID_LABEL) != uid:
            continue
        name = container.labels.get(NAME_LABEL) or container.metadata.name
        if name not in newest or container.created_at > newest[name].created_at:
            newest[name] = container
    return newest


def actions(uid: str, sandboxes: Iterable[cri.PodSandbox],
            containers: Iterable[cri.Container]) -> list[str]:
    """kubelet's decisions about pod `uid` after a relist; [] when it would do nothing."""
    own = sorted((s for s in sandboxes if s.metadata.uid == uid),
                 key=lambda s: s.created_at, reverse=True)
    if not own:
        return ["no sandbox for the pod: start a new one"]
    if sum(s.state == cri.SANDBOX_READY for s in own) > 1:
        return ["several ready sandboxes: kill the pod and create it again"]
    if own[0].state != cri.SANDBOX_READY:
        return ["no ready sandbox: kill the pod and create it again"]
    decisions = []
    for name, container in sorted(_newest_containers(uid, containers).items()):
        if container.pod_sandbox_id != own[0].id:
            decisions.append(f"container {name} in another sandbox: kill it")
        elif container.state != cri.CONTAINER_RUNNING:
            decisions.append(f"container {name} not running: restart it")
    return decisions


def relist(rt: api_pb2_grpc.RuntimeServiceStub,
           uid: str = "") -> tuple[list[cri.PodSandbox], list[cri.Container]]:
    """kubelet's relist (unfiltered), or its GetPodStatus lists (filtered by the uid)."""
    sandbox_filter = cri.PodSandboxFilter(label_selector={UID_LABEL: uid}) if uid else None
    container_filter = cri.ContainerFilter(label_selector={UID_LABEL: uid}) if uid else None
    sandboxes = rt.ListPodSandbox(cri.ListPodSandboxRequest(filter=sandbox_filter), timeout=10)
    containers = rt.ListContainers(cri.ListContainersRequest(filter=container_filter), timeout=10)
    return list(sandboxes.items), list(containers.containers)
