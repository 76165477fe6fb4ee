"""A protobuf-aware mutator for the targets whose input ends with a CRI message
(what atheris-libprotobuf-mutator would do, were it to build here).

Half the time libFuzzer's own byte mutation; otherwise the message is decoded,
one field somewhere in its tree is set, replaced, added to or cleared with a
value the builder chooses (prefixed ids, digests, long strings, ...), and it is
encoded again, now and then with a non-UTF-8 string spliced in. Used only under
atheris (fuzz/run.py); inputs replay without it.
"""
from __future__ import annotations

import random
from typing import Callable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from fuzz import builder
from fuzz.provider import Provider

F = FieldDescriptor


def _mutate_field(p: Provider, message: Message, depth: int = 0) -> None:
    fields = message.DESCRIPTOR.fields
    if not fields:
        return
    field = p.pick(fields)
    value = getattr(message, field.name)
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        if p.chance(4):
            value.clear()
        else:
            builder._map_entries(p, field, message)
    elif field.type == F.TYPE_MESSAGE and field.is_repeated:
        how = p.int_in(0, 3)
        if how == 0 or not value:
            builder.build_into(p, value.add(), depth + 1)
        elif how == 1:
            del value[p.int_in(0, len(value) - 1)]
        else:
            _mutate_field(p, value[p.int_in(0, len(value) - 1)], depth + 1)
    elif field.type == F.TYPE_MESSAGE:
        if message.HasField(field.name) and p.int_in(0, 2) and depth < 6:
            _mutate_field(p, value, depth + 1)
        elif p.chance(3):
            message.ClearField(field.name)
        else:
            value.Clear()
            value.SetInParent()
            builder.build_into(p, value, depth + 1)
    elif field.is_repeated:
        if value and p.chance(3):
            del value[p.int_in(0, len(value) - 1)]
        else:
            value.append(builder._scalar(p, field, message.DESCRIPTOR.name))
    else:
        setattr(message, field.name, builder._scalar(p, field, message.DESCRIPTOR.name))


def message_mutator(head: int, message_class: Callable[[bytes], type[Message] | None]
                    ) -> Callable[[bytes, int, int], bytes]:
    """A libFuzzer custom mutator for inputs of `head` bytes then a message of the
    class `message_class(head bytes)` names (None: not such an input)."""
    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        import atheris
        rng = random.Random(seed)
        cls = message_class(data[:head]) if len(data) >= head else None
        if cls is None or rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        try:
            message = cls.FromString(data[head:])
        except DecodeError:
            return atheris.Mutate(data, max_size)
        p = Provider(rng.randbytes(256))
        for _ in range(p.int_in(1, 3)):
            _mutate_field(p, message)
        try:
            encoded = builder.encode(p, message)
        except Exception:  # noqa: BLE001 - a value the message refuses: mutate the bytes
            return atheris.Mutate(data, max_size)
        return (data[:head] + encoded)[:max_size]
    return mutate
