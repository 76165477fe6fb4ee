"""Whether two answers to one List hold the same items, in whatever order.

containerd lists its sandboxes and containers from Go maps, so an unchanged
List comes back with its items in another order each time: compared as bytes,
every relist would look new, and be judged, recorded and written again. Each
item's own bytes are stable (its maps are written sorted), so the items are
compared as a sorted list of their bytes. Every List answer criproxy compares
(ListPodSandboxResponse, ListContainersResponse) holds its items in field 1
and nothing else, so its items, read as bytes, are all of it.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass


def _items_class() -> type:
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="criproxy/sameitems.proto",
                                               package="criproxy.sameitems", syntax="proto3")
    message = proto.message_type.add(name="Items")
    message.field.add(name="items", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    pool.Add(proto)
    return GetMessageClass(pool.FindMessageTypeByName("criproxy.sameitems.Items"))


_ITEMS = _items_class()


def same_items(kept: bytes, answer: bytes) -> bool:
    """Whether `answer` holds exactly the items of `kept` (a List answer of the same
    method), in any order. Cheap when they are the same bytes or differ in length."""
    if kept == answer:
        return True
    if len(kept) != len(answer):
        return False
    try:
        return sorted(_ITEMS.FromString(kept).items) == sorted(_ITEMS.FromString(answer).items)
    except DecodeError:
        return False
