"""A structure-aware builder of CRI messages, driven by a Provider.

It walks a message's protobuf descriptor (cri_api.v1 or v1alpha2): every field
may be set or not, repeated fields get a few items, maps a few entries, nested
messages are built the same way down to a depth. Strings are chosen by what the
field holds (the names criproxy rewrites: rewrite.ID_FIELDS, IMAGE_FIELDS,
runtime_handler): ids with and without runtime prefixes (`alt__abc`), image
names (`alt/docker.io/x`), digests (`sha256:...`), kubelet's annotations, long
strings; and after encoding, now and then a string field whose bytes are not
UTF-8 (which no Python message can hold, so it is spliced in on the wire).
"""
from __future__ import annotations

import hashlib

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from criproxy.front.rewrite import ID_FIELDS, IMAGE_FIELDS
from fuzz.provider import Provider

F = FieldDescriptor
RUNTIME_NAMES = ("alt", "vm.cloud", "x_", "_y", "unknown", "")
HANDLERS = ("", "runc", "kata", "gvisor", "alt", "nope")
TARGET = "kubernetes.io/target-runtime"
UID_LABEL = "io.kubernetes.pod.uid"


def hexid(seed: int, length: int = 64) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()[:length] * (length // 64 + 1)


def digest(seed: int) -> str:
    return "sha256:" + hexid(seed)


IMAGES = ("docker.io/library/busybox:latest", "registry.k8s.io/pause:3.9",
          "busybox", "image-service/cirros", "localhost:5000/a/b:tag")


def an_id(p: Provider) -> str:
    kind = p.int_in(0, 11)
    bare = hexid(p.byte())
    if kind == 0:
        return ""
    if kind <= 3:
        return bare
    if kind <= 7:
        return p.pick(RUNTIME_NAMES) + "__" + p.pick((bare, bare[:12], "", "__x", "a__b"))
    if kind == 8:
        return bare[:p.int_in(1, 12)]  # a unique prefix, as crictl sends
    if kind == 9:
        return p.pick(RUNTIME_NAMES) + "___" + bare[:8]
    if kind == 10:
        return "alt__alt__" + bare[:8]
    return p.text(80)


def an_image(p: Provider) -> str:
    kind = p.int_in(0, 11)
    image = p.pick(IMAGES)
    if kind == 0:
        return ""
    if kind <= 3:
        return image
    if kind <= 6:
        return p.pick(RUNTIME_NAMES) + "/" + image
    if kind == 7:
        return digest(p.byte())
    if kind == 8:
        return p.pick(RUNTIME_NAMES) + "/" + digest(p.byte())
    if kind == 9:
        return p.pick(("", "alt/")) + image.split(":")[0] + "@" + digest(p.byte())
    if kind == 10:
        return p.pick(("sha256:", "sha512:", "SHA256:", "sha256:x")) + hexid(p.byte())[:p.int_in(0, 64)]
    return p.text(80)


def a_string(p: Provider, name: str) -> str:
    if name in ID_FIELDS:
        return an_id(p)
    if name in IMAGE_FIELDS:
        return an_image(p)
    if name == "runtime_handler":
        return p.pick(HANDLERS)
    if name in ("uid", "name", "namespace"):
        return p.pick(("nginx", "kube-system", "uid-" + hexid(p.byte(), 8), "", "x" * 300))
    if name == "url":
        return p.pick(("/cri/exec/tok", "http://10.0.0.1:10010/exec/x", "", "cri/attach/y",
                       "::", "//host/x", "http://[::1"))
    kind = p.int_in(0, 15)
    if kind == 0:
        return "x" * p.int_in(1000, 20000)
    return p.text(24)


_INTS = (0, 1, -1, 2, 255, 1 << 31, -(1 << 31), (1 << 63) - 1, -(1 << 63), 1 << 32)


def _scalar(p: Provider, field: FieldDescriptor, holder: str) -> object:
    kind = field.type
    if kind == F.TYPE_STRING:
        return a_string(p, field.name)
    if kind == F.TYPE_BYTES:
        return p.take(p.int_in(0, 32))
    if kind == F.TYPE_BOOL:
        return p.bool()
    if kind == F.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return p.pick(values) if p.int_in(0, 7) else p.pick((99, -1, 1 << 20))
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return p.pick((0.0, 1.5, -1.0, float("inf"), float("nan"), 1e300))
    value = p.pick(_INTS) if p.bool() else p.int_in(0, 1 << 16)
    unsigned = kind in (F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_FIXED32, F.TYPE_FIXED64)
    bits = 32 if kind in (F.TYPE_INT32, F.TYPE_UINT32, F.TYPE_SINT32, F.TYPE_FIXED32,
                          F.TYPE_SFIXED32) else 64
    if unsigned:
        return value % (1 << bits)
    return (value + (1 << (bits - 1))) % (1 << bits) - (1 << (bits - 1))


def _map_entries(p: Provider, field: FieldDescriptor, message: Message) -> None:
    target = getattr(message, field.name)
    key_field, value_field = field.message_type.fields_by_name["key"], \
        field.message_type.fields_by_name["value"]
    for _ in range(p.int_in(0, 3)):
        if key_field.type == F.TYPE_STRING and field.name == "annotations" and p.chance(3):
            key, value = TARGET, p.pick(RUNTIME_NAMES)
        elif key_field.type == F.TYPE_STRING and field.name == "labels" and p.chance(3):
            key, value = UID_LABEL, "uid-" + hexid(p.byte(), 8)
        else:
            key = _scalar(p, key_field, "")
            if value_field.type == F.TYPE_MESSAGE:
                build_into(p, target[key], depth=2)
                continue
            value = _scalar(p, value_field, "")
        target[key] = value


def build_into(p: Provider, message: Message, depth: int = 0) -> Message:
    """Fill `message` from the provider's bytes; stops descending below depth 5."""
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        if not p.bool():
            continue
        if field.type == F.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                _map_entries(p, field, message)
            elif depth >= 5:
                continue
            elif field.is_repeated:
                for _ in range(p.int_in(0, 3)):
                    build_into(p, getattr(message, field.name).add(), depth + 1)
            else:
                getattr(message, field.name).SetInParent()
                build_into(p, getattr(message, field.name), depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend(
                _scalar(p, field, descriptor.name) for _ in range(p.int_in(0, 3)))
        else:
            setattr(message, field.name, _scalar(p, field, descriptor.name))
    return message


def build(p: Provider, message_class: type[Message]) -> Message:
    return build_into(p, message_class())


# --- the wire ------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


NOT_UTF8 = (b"\xff", b"\xc3\x28", b"alt__\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x80b")


def string_paths(descriptor: Descriptor, depth: int = 0) -> list[tuple[int, ...]]:
    """Field-number paths from `descriptor` to string fields (through messages)."""
    paths: list[tuple[int, ...]] = []
    for field in descriptor.fields:
        if field.type == F.TYPE_STRING:
            paths.append((field.number,))
        elif field.type == F.TYPE_MESSAGE and depth < 3:
            paths += [(field.number, *rest)
                      for rest in string_paths(field.message_type, depth + 1)]
    return paths


def splice_not_utf8(p: Provider, descriptor: Descriptor, encoded: bytes) -> bytes:
    """`encoded` with one more occurrence of a string field (below messages)
    whose bytes are not UTF-8; protobuf merges it into the message."""
    paths = string_paths(descriptor)
    if not paths:
        return encoded
    path = p.pick(paths)
    payload = length_delimited(path[-1], p.pick(NOT_UTF8))
    for number in reversed(path[:-1]):
        payload = length_delimited(number, payload)
    return encoded + payload


def encode(p: Provider, message: Message) -> bytes:
    """The message's bytes; one in eight times with a non-UTF-8 string spliced in."""
    encoded = message.SerializeToString()
    if p.chance(8):
        encoded = splice_not_utf8(p, message.DESCRIPTOR, encoded)
    return encoded


def flip(p: Provider, encoded: bytes) -> bytes:
    """A few byte-level damages: flips, cuts, insertions."""
    data = bytearray(encoded)
    for _ in range(p.int_in(1, 4)):
        how = p.int_in(0, 3)
        at = p.int_in(0, max(0, len(data) - 1))
        if how == 0 and data:
            data[at] ^= p.int_in(1, 255)
        elif how == 1:
            del data[at:]
        elif how == 2:
            data[at:at] = p.take(p.int_in(1, 8))
        elif data:
            data[at] = p.pick((0x00, 0x0A, 0x12, 0x1A, 0x7F, 0x80, 0xFF))
    return bytes(data)
