"""The pod an image call is for, so a RuntimeClass pod's images follow the pod.

A stock kubelet names no RuntimeClass in its image calls (that needs the alpha
gate RuntimeClassInImageCriAPI); what it does send identifies the pod:
PullImage carries the pod's sandbox config (uid), ImageStatus the pod's
annotations (equal to its sandbox config's, and unique per pod thanks to
`kubernetes.io/config.seen`). The pod record knows on which runtime each
sandbox is, from the runtimes' own answers and kubelet's RunPodSandbox calls,
so this survives a criproxy restart.

Only pods placed by a RuntimeClass handler count: a pod carrying the
`kubernetes.io/target-runtime` annotation keeps the original contract, in
which its image names carry the runtime prefix.
"""
from __future__ import annotations

from typing import Callable

from google.protobuf.message import Message

from cri_api.v1 import api_pb2 as v1
from criproxy.front.routing import TARGET_RUNTIME_ANNOTATION
from criproxy.record.podrecord import PodRecord

Matcher = Callable[[v1.PodSandbox], bool]


def pod_matcher(request: Message, spec: v1.ImageSpec) -> Matcher | None:
    """What tells the pod of this image call among sandboxes: its uid (PullImage's
    sandbox config) or its annotations; None without pod context, or for a pod
    placed by the target-runtime annotation."""
    config = _sandbox_config(request)
    uid = config.metadata.uid if config is not None else ""
    annotations = dict(spec.annotations or (config.annotations if config is not None else {}))
    if TARGET_RUNTIME_ANNOTATION in annotations or \
            (config is not None and TARGET_RUNTIME_ANNOTATION in config.annotations):
        return None
    if not uid and not annotations:
        return None
    return lambda sandbox: _placed_by_handler(sandbox) and bool(
        uid and sandbox.metadata.uid == uid or
        annotations and dict(sandbox.annotations) == annotations)


def _placed_by_handler(sandbox: v1.PodSandbox) -> bool:
    return TARGET_RUNTIME_ANNOTATION not in sandbox.annotations


def _sandbox_config(request: Message) -> v1.PodSandboxConfig | None:
    if "sandbox_config" in request.DESCRIPTOR.fields_by_name and \
            request.HasField("sandbox_config"):
        return request.sandbox_config  # type: ignore[attr-defined]
    return None


def placed_by_handler(record: PodRecord, runtime: str, sandbox_id: str) -> bool:
    """Whether `runtime` holds this sandbox and a RuntimeClass handler put it there."""
    if not runtime:
        return False
    sandbox = record.runtimes[runtime].view().sandboxes.get(sandbox_id)
    return sandbox is not None and _placed_by_handler(sandbox)
