"""Slim classes (criproxy/front/slim.py): prefixing through them gives the same messages."""
from __future__ import annotations

import itertools

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from criproxy.front.rewrite import add_prefixes, plan_for
from criproxy.front.routing import METHODS
from criproxy.front.slim import slim_class

RESPONSES = sorted({m.response for m in METHODS.values()}, key=lambda c: c.DESCRIPTOR.full_name)
_counter = itertools.count()


def _value(field: FieldDescriptor) -> object:
    n = next(_counter)
    if field.type == FieldDescriptor.TYPE_STRING:
        # ids, names, digests (left alone by prefixing) and a tag with a registry
        return ["id-%d" % n, "sha256:" + "ab" * 32, "docker.io/library/img:%d" % n][n % 3]
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xff%d" % n
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5
    return n + 1


def fill(message: Message, depth: int = 0) -> Message:
    """Set every field (two items in repeated fields and maps), four levels deep."""
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            if field.message_type.GetOptions().map_entry:
                target = getattr(message, field.name)
                key_field, value_field = field.message_type.fields
                for _ in range(2):
                    key = _value(key_field)
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        fill(target[key], depth + 1)
                    else:
                        target[key] = _value(value_field)
            elif field.is_repeated:
                for _ in range(2):
                    fill(getattr(message, field.name).add(), depth + 1)
            else:
                fill(getattr(message, field.name), depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend([_value(field), _value(field)])
        else:
            setattr(message, field.name, _value(field))
    return message


@pytest.mark.parametrize("response", RESPONSES, ids=lambda c: c.DESCRIPTOR.full_name)
def test_prefixing_a_slim_message_gives_the_same_message(response: type[Message]) -> None:
    raw = fill(response()).SerializeToString()
    full = response.FromString(raw)
    add_prefixes(full, "vm.cloud")
    slim = slim_class(response).FromString(raw)
    add_prefixes(slim, "vm.cloud")
    assert response.FromString(slim.SerializeToString()) == full


def test_lists_get_slim_classes_with_the_same_plan() -> None:
    from cri_api.v1 import api_pb2 as v1
    for response in (v1.ListContainersResponse, v1.ListPodSandboxResponse,
                     v1.ListPodSandboxStatsResponse, v1.ListImagesResponse):
        slim = slim_class(response)
        assert slim is not response
        assert plan_for(slim.DESCRIPTOR) == plan_for(response.DESCRIPTOR)
        assert len(slim.DESCRIPTOR.fields) <= len(response.DESCRIPTOR.fields)


def test_a_message_with_nothing_to_rewrite_keeps_its_class() -> None:
    from cri_api.v1 import api_pb2 as v1
    assert slim_class(v1.VersionResponse) is v1.VersionResponse
