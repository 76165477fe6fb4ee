"""The errors a routed call ends with that criproxy decides itself, not a runtime:
a request that does not decode (the caller's mistake: INVALID_ARGUMENT), an answer
that does not (the runtime's: INTERNAL), a method the runtime's CRI version lacks
(UNIMPLEMENTED).
"""
from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError, Message

from criproxy.front.routing import Method
from criproxy.front.workerlink import CallError, WorkerLink


def parse(message_class: type[Message], raw: bytes) -> Message:
    """Decode what the caller sent: bytes that do not decode are its mistake."""
    try:
        return message_class.FromString(raw)
    except DecodeError as err:
        raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"cannot parse {message_class.DESCRIPTOR.name}: {err}") from None


class BadAnswer(CallError):
    """A runtime answered what criproxy cannot read. INTERNAL, as a gRPC client says
    of an answer it cannot unmarshal: the runtime is at fault, never the caller."""

    def __init__(self, label: str, method: Method, problem: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL,
                         f"runtime {label} answered {method.name} with {problem}")


def check_version(link: WorkerLink, method: Method) -> None:
    if link.cri_version == "v1alpha2" and not method.in_v1alpha2:
        raise CallError(grpc.StatusCode.UNIMPLEMENTED,
                        f"runtime {link.label} speaks CRI v1alpha2, which has no {method.name}")
