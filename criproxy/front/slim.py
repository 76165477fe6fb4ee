"""Slim message classes: decode only the fields that prefixing rewrites.

Showing a named runtime's List answer to kubelet means decoding it, prefixing
its ids and images (rewrite.add_prefixes) and encoding it again. Most of such
an answer is labels, annotations, metadata and stats that are never rewritten,
yet decoding them into Python-visible maps and encoding them back costs about
as much as the rewriting itself.

slim_class(ListContainersResponse) is a message class with the same field
numbers, names and types, but only the fields that rewrite.plan_for visits
(directly or below). Everything else is kept by protobuf as unknown fields:
carried as raw bytes, written back unchanged. So

    slim.FromString(answer) -> add_prefixes -> SerializeToString()

yields a message that every protobuf parser reads exactly as the fully decoded
one (unknown fields come after the known ones on the wire; field order carries
no meaning in protobuf). Fields that are not rewritten are not validated either
(e.g. UTF-8 in a label), as the primary runtime's answers, which pass through
undecoded, are not.

A type it cannot mirror exactly (oneofs, nested types, fields of another file)
gets no slim class: slim_class returns the full class, as if this module did
not exist.
"""
from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from criproxy.front.rewrite import MESSAGE, plan_for

_POOL = descriptor_pool.DescriptorPool()
_PACKAGE = "criproxy.slim."


class _CannotMirror(Exception):
    pass


@functools.cache
def _slim_file(original: FileDescriptor) -> str | None:
    """Add a slim copy of every message of `original` that has something to rewrite;
    return its package, or None if one of them cannot be mirrored."""
    package = _PACKAGE + original.package
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"criproxy/slim/{original.name}", package=package, syntax="proto3")
    try:
        for message in original.message_types_by_name.values():
            if plan_for(message):
                _add_message(proto, package, message)
    except _CannotMirror:
        return None
    _POOL.Add(proto)
    return package


def _add_message(proto: descriptor_pb2.FileDescriptorProto, package: str,
                 message: Descriptor) -> None:
    slim = proto.message_type.add(name=message.name)
    for name, kind, repeated in plan_for(message):
        field = message.fields_by_name[name]
        if field.containing_oneof is not None:
            raise _CannotMirror(f"{message.full_name}.{name} is in a oneof")
        label = FieldDescriptor.LABEL_REPEATED if repeated else FieldDescriptor.LABEL_OPTIONAL
        added = slim.field.add(name=name, number=field.number, type=field.type, label=label)
        if kind == MESSAGE:
            sub = field.message_type
            if sub.file is not message.file or sub.containing_type is not None:
                raise _CannotMirror(f"{message.full_name}.{name} has type {sub.full_name}")
            added.type_name = f".{package}.{sub.name}"


@functools.cache
def slim_class(message_class: type[Message]) -> type[Message]:
    """The slim class of a top-level message class (or the class itself)."""
    original = message_class.DESCRIPTOR
    if original.containing_type is not None or not plan_for(original):
        return message_class
    package = _slim_file(original.file)
    if package is None:
        return message_class
    slim = GetMessageClass(_POOL.FindMessageTypeByName(f"{package}.{original.name}"))
    # Rewriting the slim message must visit exactly what it visits in the full one.
    if not _same_plans(original, slim.DESCRIPTOR):
        return message_class
    return slim


def _same_plans(original: Descriptor, slim: Descriptor) -> bool:
    if plan_for(original) != plan_for(slim):
        return False
    return all(_same_plans(original.fields_by_name[name].message_type,
                           slim.fields_by_name[name].message_type)
               for name, kind, _ in plan_for(original) if kind == MESSAGE)
