"""Rewriting ids and image names inside CRI messages.

Which fields hold ids or images is decided once per message type from the
protobuf descriptors (by field name), so a new CRI message with e.g. a
`container_id` field is rewritten without code changes. Subtrees that cannot
hold such a field (labels, resources, ...) are never visited.
"""
from __future__ import annotations

import functools
from typing import Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from criproxy.front.naming import Names, prefix_id, prefix_image

ID_FIELDS = frozenset({"id", "pod_sandbox_id", "container_id", "target_id"})
IMAGE_FIELDS = frozenset({"image", "user_specified_image", "image_ref", "image_id",
                          "repo_tags", "repo_digests"})
# In these messages `id` is an image id, not a sandbox or container id.
IMAGE_ID_MESSAGES = frozenset({"Image"})

HANDLER_FIELDS = frozenset({"runtime_handler"})

ID, IMAGE, HANDLER, MESSAGE = "id", "image", "handler", "message"

Plan = tuple[tuple[str, str, bool], ...]  # (field name, kind, repeated)


class ForeignObject(Exception):
    """A request names an object of another runtime than the one it goes to."""

    def __init__(self, field: str, value: str, owner: str | None) -> None:
        super().__init__(field, value, owner)
        self.field, self.value, self.owner = field, value, owner


def _string_kind(message: Descriptor, field: FieldDescriptor) -> str | None:
    if field.name == "id" and message.name in IMAGE_ID_MESSAGES:
        return IMAGE
    if field.name in ID_FIELDS:
        return ID
    if field.name in IMAGE_FIELDS:
        return IMAGE
    if field.name in HANDLER_FIELDS:
        return HANDLER
    return None


@functools.cache
def plan_for(message: Descriptor) -> Plan:
    """The fields of `message` that hold ids or images, directly or below."""
    plan = []
    for field in message.fields:
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_STRING:
            kind = _string_kind(message, field)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(field):
            kind = MESSAGE if plan_for(field.message_type) else None
        else:
            kind = None
        if kind:
            plan.append((field.name, kind, repeated))
    return tuple(plan)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type.GetOptions().map_entry


# (kind, field name, value, the message holding it) -> new value
Rewriter = Callable[[str, str, str, Message], str]


# plan_for with each sub-message's own plan attached: (name, kind, repeated, sub-plan)
_Walk = tuple[tuple[str, str, bool, "_Walk | None"], ...]


@functools.cache
def _walk_plan(message: Descriptor) -> _Walk:
    fields = message.fields_by_name
    return tuple((name, kind, repeated,
                  _walk_plan(fields[name].message_type) if kind == MESSAGE else None)
                 for name, kind, repeated in plan_for(message))


def rewrite(message: Message, rewriter: Rewriter) -> None:
    """Apply `rewriter` to every non-empty id, image and handler string in `message`."""
    _rewrite(message, _walk_plan(message.DESCRIPTOR), rewriter)


def _rewrite(message: Message, plan: _Walk, rewriter: Rewriter) -> None:
    # Hot (a List answer of a named runtime passes here for every item): plans are
    # looked up once per message type, and fields are only written when they change.
    for name, kind, repeated, sub_plan in plan:
        if sub_plan is not None:
            if repeated:
                for item in getattr(message, name):
                    _rewrite(item, sub_plan, rewriter)
            elif message.HasField(name):
                _rewrite(getattr(message, name), sub_plan, rewriter)
        elif repeated:
            values = getattr(message, name)
            if values:
                new_values = [rewriter(kind, name, v, message) if v else v for v in values]
                if new_values != list(values):
                    values[:] = new_values
        else:
            value = getattr(message, name)
            if value:
                new_value = rewriter(kind, name, value, message)
                if new_value != value:
                    setattr(message, name, new_value)


def add_prefixes(message: Message, runtime: str) -> None:
    """Show a named runtime's answer to kubelet: prefix its ids and images."""
    if not runtime:
        return

    def prefix(kind: str, _name: str, value: str, _message: Message) -> str:
        if kind == ID:
            return prefix_id(runtime, value)
        return prefix_image(runtime, value) if kind == IMAGE else value
    rewrite(message, prefix)


def _owner(kind: str, value: str, message: Message, names: Names,
           plain_images: str | None = None) -> tuple[str | None, str]:
    """Which runtime a request's id, image or handler belongs to, and its bare form;
    `plain_images`, when given, owns image names without a runtime prefix."""
    if kind == ID:
        return names.split_id(value)
    if kind == IMAGE:
        handler = getattr(message, "runtime_handler", "")
        if plain_images is not None and names.is_plain_image(value) and \
                names.handler_route(handler) is None:
            return plain_images, value
        return names.split_image(value, handler)
    route = names.handler_route(value)
    return (route.runtime, route.runtime_handler) if route else (None, value)


def strip_prefixes(message: Message, runtime: str, names: Names,
                   plain_images_are_its: bool = False) -> bool:
    """Make a request fit `runtime`: drop prefixes, rename mapped handlers, refuse
    other runtimes' objects. Returns whether anything changed. With
    `plain_images_are_its`, image names without a prefix are `runtime`'s (the
    images of a pod placed by its RuntimeClass handler), not the primary's."""
    changed = False
    plain_images = runtime if plain_images_are_its else None

    def strip(kind: str, name: str, value: str, holder: Message) -> str:
        nonlocal changed
        owner, bare = _owner(kind, value, holder, names, plain_images)
        if owner is not None and owner != runtime:
            if kind == HANDLER:
                return value  # another runtime's handler name: this runtime may know it
            raise ForeignObject(name, value, owner)
        changed |= bare != value
        return bare
    rewrite(message, strip)
    return changed


def owners(message: Message, names: Names) -> set[str]:
    """The runtimes whose objects a request (e.g. a List filter) names."""
    found: set[str] = set()

    def collect(kind: str, _name: str, value: str, holder: Message) -> str:
        owner, _bare = _owner(kind, value, holder, names)
        if owner is not None:
            found.add(owner)
        return value
    rewrite(message, collect)
    return found
