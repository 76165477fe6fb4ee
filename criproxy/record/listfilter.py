"""A List request's filter, applied by criproxy itself to a runtime's last answer.

It must select what the runtime would have selected (containerd's CRI plugin
is the model): an id filter matches the object with that id, or the only one
whose id starts with it (containerd resolves unique id prefixes); a state
filter matches that state; every label of the selector must be present with
that value. All filters given must match.
"""
from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

from google.protobuf.message import Message

from cri_api.v1 import api_pb2 as v1

Item = TypeVar("Item", v1.PodSandbox, v1.Container)


def is_filtered(request: Message) -> bool:
    """Whether a List asks for part of the runtime's objects (kubelet's GetPodStatus),
    not all of them (its relist)."""
    return ("filter" in request.DESCRIPTOR.fields_by_name and
            request.filter.ByteSize() > 0)  # type: ignore[attr-defined]


def resolve_id(wanted: str, ids: Iterable[str]) -> str | None:
    """The id `wanted` names among `ids`: itself, or the only id it is a prefix of."""
    candidates = [i for i in ids if i.startswith(wanted)]
    if wanted in candidates:
        return wanted
    return candidates[0] if len(candidates) == 1 else None


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def select_sandboxes(items: list[v1.PodSandbox],
                     wanted: v1.PodSandboxFilter) -> list[v1.PodSandbox]:
    if wanted.id:
        sandbox_id = resolve_id(wanted.id, (s.id for s in items))
        items = [s for s in items if s.id == sandbox_id]
    if wanted.HasField("state"):
        items = [s for s in items if s.state == wanted.state.state]
    return [s for s in items if labels_match(s.labels, wanted.label_selector)]


def select_containers(items: list[v1.Container], wanted: v1.ContainerFilter,
                      sandbox_ids: Iterable[str]) -> list[v1.Container]:
    if wanted.id:
        container_id = resolve_id(wanted.id, (c.id for c in items))
        items = [c for c in items if c.id == container_id]
    if wanted.pod_sandbox_id:
        sandbox_id = resolve_id(wanted.pod_sandbox_id, sandbox_ids)
        items = [c for c in items if c.pod_sandbox_id == sandbox_id]
    if wanted.HasField("state"):
        items = [c for c in items if c.state == wanted.state.state]
    return [c for c in items if labels_match(c.labels, wanted.label_selector)]
