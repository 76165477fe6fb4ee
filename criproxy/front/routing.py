"""The routing table: which runtime gets each CRI method, and its log level.

This is ROUTING.md as data. The front looks a method up here; a method that is
not in the table answers UNIMPLEMENTED, because forwarding an unknown (newer)
List-style call to one runtime would hide the other runtimes' objects.

Both CRI versions are served. runtime.v1alpha2's messages are a wire-compatible
subset of runtime.v1's (same field numbers and types: tests check it), so a
v1alpha2 call is the v1 method of the same name, its bytes unchanged; the
worker sends it to its runtime under the version that runtime speaks.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any

from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from cri_api.v1 import api_pb2 as v1
from cri_api.v1alpha2 import api_pb2 as v1alpha2


class Rule(enum.Enum):
    PRIMARY = "primary"                # the primary runtime, nothing rewritten
    STATUS = "status"                  # the primary's, plus every mapped handler
    BROADCAST = "broadcast"            # every runtime that is up, errors joined
    BY_ANNOTATION = "by annotation"    # kubernetes.io/target-runtime on the pod config
    BY_ID = "by id"                    # the runtime owning the id prefix of `key`
    BY_IMAGE = "by image"              # the runtime owning the ImageSpec `key` (prefix, handler)
    FAN_OUT = "fan-out"                # every runtime (or the one a filter names), merged
    STREAM_MERGE = "stream merge"      # every runtime's stream, merged


class Digest(enum.Enum):
    """Where an image call goes when its image is a bare digest (owned by none)."""

    PRIMARY = "primary"
    FIRST_FOUND = "first found"        # ask runtimes in order, first that knows it
    EVERY = "every"                    # e.g. RemoveImage: remove it everywhere


# Log levels, as the original's -v: 3 state-changing calls, 4 status calls, 5 List calls.
CHANGE, STATUS, LIST = 3, 4, 5


@dataclasses.dataclass(frozen=True)
class Route:
    rule: Rule
    log_level: int
    key: str = ""                      # dotted path of the field (or ImageSpec) routing the call
    stream_url: bool = False           # the answer's url may be relative
    digest: Digest = Digest.PRIMARY
    # A plain image name in the call belongs to the runtime of the pod it is for,
    # when that pod was placed by its RuntimeClass handler (see docs/routing.md).
    images_follow_pod: bool = False


RUNTIME_SERVICE = "/runtime.v1.RuntimeService/"
IMAGE_SERVICE = "/runtime.v1.ImageService/"

_RUNTIME_ROUTES: dict[str, Route] = {
    "Version": Route(Rule.PRIMARY, STATUS),
    "Status": Route(Rule.STATUS, STATUS),
    "RuntimeConfig": Route(Rule.PRIMARY, STATUS),
    "UpdateRuntimeConfig": Route(Rule.BROADCAST, CHANGE),
    "RunPodSandbox": Route(Rule.BY_ANNOTATION, CHANGE),
    "StopPodSandbox": Route(Rule.BY_ID, CHANGE, "pod_sandbox_id"),
    "RemovePodSandbox": Route(Rule.BY_ID, CHANGE, "pod_sandbox_id"),
    "PodSandboxStatus": Route(Rule.BY_ID, STATUS, "pod_sandbox_id"),
    "PodSandboxStats": Route(Rule.BY_ID, STATUS, "pod_sandbox_id"),
    "PortForward": Route(Rule.BY_ID, CHANGE, "pod_sandbox_id", stream_url=True),
    "UpdatePodSandboxResources": Route(Rule.BY_ID, CHANGE, "pod_sandbox_id"),
    "CreateContainer": Route(Rule.BY_ID, CHANGE, "pod_sandbox_id", images_follow_pod=True),
    "StartContainer": Route(Rule.BY_ID, CHANGE, "container_id"),
    "StopContainer": Route(Rule.BY_ID, CHANGE, "container_id"),
    "RemoveContainer": Route(Rule.BY_ID, CHANGE, "container_id"),
    "ContainerStatus": Route(Rule.BY_ID, STATUS, "container_id"),
    "ContainerStats": Route(Rule.BY_ID, STATUS, "container_id"),
    "UpdateContainerResources": Route(Rule.BY_ID, CHANGE, "container_id"),
    "ReopenContainerLog": Route(Rule.BY_ID, CHANGE, "container_id"),
    "ExecSync": Route(Rule.BY_ID, CHANGE, "container_id"),
    "Exec": Route(Rule.BY_ID, CHANGE, "container_id", stream_url=True),
    "Attach": Route(Rule.BY_ID, CHANGE, "container_id", stream_url=True),
    "CheckpointContainer": Route(Rule.BY_ID, CHANGE, "container_id"),
    "ListPodSandbox": Route(Rule.FAN_OUT, LIST),
    "ListContainers": Route(Rule.FAN_OUT, LIST),
    "ListContainerStats": Route(Rule.FAN_OUT, LIST),
    "ListPodSandboxStats": Route(Rule.FAN_OUT, LIST),
    "ListPodSandboxMetrics": Route(Rule.FAN_OUT, LIST),
    "ListMetricDescriptors": Route(Rule.FAN_OUT, LIST),
    "GetContainerEvents": Route(Rule.STREAM_MERGE, CHANGE),
}

_IMAGE_ROUTES: dict[str, Route] = {
    "ListImages": Route(Rule.FAN_OUT, LIST),
    "ImageFsInfo": Route(Rule.FAN_OUT, LIST),
    "ImageStatus": Route(Rule.BY_IMAGE, STATUS, "image", digest=Digest.FIRST_FOUND,
                         images_follow_pod=True),
    "PullImage": Route(Rule.BY_IMAGE, CHANGE, "image", images_follow_pod=True),
    "RemoveImage": Route(Rule.BY_IMAGE, CHANGE, "image", digest=Digest.EVERY),
}


@dataclasses.dataclass(frozen=True)
class Method:
    path: str                          # the runtime.v1 path, whatever the caller used
    name: str
    route: Route
    request: type[Message]
    response: type[Message]
    in_v1alpha2: bool                  # a v1alpha2 runtime has it too


def _methods(prefix: str, service: str, routes: dict[str, Route]) -> dict[str, Method]:
    descriptor = v1.DESCRIPTOR.services_by_name[service]
    older = v1alpha2.DESCRIPTOR.services_by_name[service].methods_by_name
    table = {}
    for name, route in routes.items():
        method = descriptor.methods_by_name[name]
        table[prefix + name] = Method(prefix + name, name, route,
                                      GetMessageClass(method.input_type),
                                      GetMessageClass(method.output_type), name in older)
    return table


def _v1alpha2_aliases(methods: dict[str, Method]) -> dict[str, Method]:
    return {m.path.replace("/runtime.v1.", "/runtime.v1alpha2.", 1): m
            for m in methods.values() if m.in_v1alpha2}


_V1_METHODS: dict[str, Method] = {
    **_methods(RUNTIME_SERVICE, "RuntimeService", _RUNTIME_ROUTES),
    **_methods(IMAGE_SERVICE, "ImageService", _IMAGE_ROUTES),
}
METHODS: dict[str, Method] = {**_V1_METHODS, **_v1alpha2_aliases(_V1_METHODS)}

TARGET_RUNTIME_ANNOTATION = "kubernetes.io/target-runtime"


def field_value(message: Message, path: str) -> Any:
    """Read a dotted field path, e.g. `config.metadata`."""
    value = message
    for part in path.split("."):
        value = getattr(value, part)
    return value


def target_runtime_annotation(request: Message) -> str:
    return request.config.annotations.get(TARGET_RUNTIME_ANNOTATION, "")  # type: ignore[attr-defined]
