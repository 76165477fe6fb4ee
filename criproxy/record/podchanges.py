"""What kubelet's successful calls change in a runtime's pods and containers.

The pod record applies these on top of a runtime's last List answers, so an
answer served from the record never undoes what kubelet did through criproxy
since (a removed sandbox stays removed, a created one is there, states follow
Start/Stop). Requests arrive here as the runtime saw them (ids unprefixed).
A change is a pair: what it does to the sandboxes (by id) and to the
containers (by id); either may be None.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from google.protobuf.message import Message

from cri_api.v1 import api_pb2 as v1

Items = dict
Change = tuple[Optional[Callable[[Items], None]], Optional[Callable[[Items], None]]]

READY, NOTREADY = v1.SANDBOX_READY, v1.SANDBOX_NOTREADY
CREATED, RUNNING, EXITED = v1.CONTAINER_CREATED, v1.CONTAINER_RUNNING, v1.CONTAINER_EXITED


def _adding(item: Message) -> Callable[[Items], None]:
    def add(items: Items) -> None:
        if item.id not in items:  # type: ignore[attr-defined]
            copied = type(item)()
            copied.CopyFrom(item)
            items[copied.id] = copied  # type: ignore[attr-defined]
    return add


def _setting_state(item_id: str, state: int) -> Callable[[Items], None]:
    def set_state(items: Items) -> None:
        if item_id in items:
            items[item_id].state = state
    return set_state


def _removing(item_id: str) -> Callable[[Items], None]:
    return lambda items: items.pop(item_id, None)


def _in_sandbox(sandbox_id: str, act: Callable[[Items, str], None]) -> Callable[[Items], None]:
    def apply(containers: Items) -> None:
        for container_id in [c.id for c in containers.values() if c.pod_sandbox_id == sandbox_id]:
            act(containers, container_id)
    return apply


def _exit_if_running(containers: Items, container_id: str) -> None:
    # A stopped sandbox's running containers are stopped with it (containerd does so).
    if containers[container_id].state == RUNNING:
        containers[container_id].state = EXITED


def sandbox_ran(request: v1.RunPodSandboxRequest, answer: bytes) -> Change:
    config = request.config
    sandbox = v1.PodSandbox(
        id=v1.RunPodSandboxResponse.FromString(answer).pod_sandbox_id,
        metadata=config.metadata, state=READY, created_at=time.time_ns(),
        labels=config.labels, annotations=config.annotations,
        runtime_handler=request.runtime_handler)
    return _adding(sandbox), None


def sandbox_stopped(request: v1.StopPodSandboxRequest, _answer: bytes) -> Change:
    sandbox_id = request.pod_sandbox_id
    return _setting_state(sandbox_id, NOTREADY), _in_sandbox(sandbox_id, _exit_if_running)


def sandbox_removed(request: v1.RemovePodSandboxRequest, _answer: bytes) -> Change:
    sandbox_id = request.pod_sandbox_id
    return (_removing(sandbox_id),
            _in_sandbox(sandbox_id, lambda containers, cid: containers.pop(cid)))


def container_created(request: v1.CreateContainerRequest, answer: bytes) -> Change:
    config = request.config
    container = v1.Container(
        id=v1.CreateContainerResponse.FromString(answer).container_id,
        pod_sandbox_id=request.pod_sandbox_id, metadata=config.metadata, image=config.image,
        image_ref=config.image.image, state=CREATED, created_at=time.time_ns(),
        labels=config.labels, annotations=config.annotations)
    return None, _adding(container)


def container_started(request: v1.StartContainerRequest, _answer: bytes) -> Change:
    return None, _setting_state(request.container_id, RUNNING)


def container_stopped(request: v1.StopContainerRequest, _answer: bytes) -> Change:
    return None, _setting_state(request.container_id, EXITED)


def container_removed(request: v1.RemoveContainerRequest, _answer: bytes) -> Change:
    return None, _removing(request.container_id)


# kubelet's calls that change what a runtime's Lists answer, by method name.
CHANGES: dict[str, Callable[[Message, bytes], Change]] = {
    "RunPodSandbox": sandbox_ran,
    "StopPodSandbox": sandbox_stopped,
    "RemovePodSandbox": sandbox_removed,
    "CreateContainer": container_created,
    "StartContainer": container_started,
    "StopContainer": container_stopped,
    "RemoveContainer": container_removed,
}
