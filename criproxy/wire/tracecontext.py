"""A call's W3C trace context (`traceparent`, `tracestate`), from kubelet to the runtimes.

kubelet's gRPC client sends it as metadata when its tracing is on, and
containerd continues the trace it names. The front takes it from each call
(`received`) into the `carried` ContextVar. WorkerLink puts it in every
envelope sent on that call's behalf (`attach`, as "tc"); fan-out calls run in
tasks, which copy the context, so they carry it too. The worker checks it
again (`from_envelope`) and sends it to the runtime as gRPC metadata. No other
incoming metadata is passed on, and a value that breaks the W3C format is
dropped without failing the call.

When -otlpEndpoint is set, the front and each worker also make spans of their
own (criproxy/ops/tracing.py, loaded by criproxy/ops/spans.py) and the context
passed on names their span as the parent. When it is not, `begin` returns a
`Passthrough` and the context passes unchanged; the OpenTelemetry SDK is then
never imported.

This module imports nothing of criproxy's: the front and the workers share it
(it is part of the envelope, "tc"), and criproxy/ops/tracing.py builds its
spans on `Passthrough`. A tracer reaches it only as an argument (`Tracer`
below says what one must do).
"""
from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any, Iterable, Optional, Protocol

import grpc

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
ENVELOPE_KEY = "tc"

Carried = dict[str, str]
# The trace context of the call the current task works for; None: it came without one.
carried: ContextVar[Optional[Carried]] = ContextVar("carried", default=None)

# version-traceid-parentid-flags; a version after 00 may append fields ("-...").
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?",
                          re.DOTALL)
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16
_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})={_VALUE}")
_MAX_MEMBERS = 32
# W3C: propagate at least 512 characters; when cutting, drop members over 128 first.
_MAX_TRACESTATE, _BIG_MEMBER = 512, 128


def parse_traceparent(value: Any) -> Optional[str]:
    """`value` as a version-00 traceparent, or None when it is not a valid one."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE \
            or parent_id == _ZERO_PARENT:
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"


def parse_tracestate(values: Iterable[Any]) -> str:
    """The tracestate list made of every `values` header, or "" when one is malformed."""
    members: list[str] = []
    keys: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            return ""
        for member in value.split(","):
            member = member.strip(" \t")
            if not member:
                continue
            match = _MEMBER.fullmatch(member)
            if match is None or match.group(1) in keys:
                return ""
            keys.add(match.group(1))
            members.append(member)
            if len(members) > _MAX_MEMBERS:
                return ""
    return _cut(members)


def _cut(members: list[str]) -> str:
    """Keep the list within _MAX_TRACESTATE characters, as W3C says to cut it."""
    if len(",".join(members)) > _MAX_TRACESTATE:
        members = [m for m in members if len(m) <= _BIG_MEMBER]
    while len(",".join(members)) > _MAX_TRACESTATE:
        members.pop()
    return ",".join(members)


def from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> Optional[Carried]:
    """The valid trace context in gRPC `metadata`, or None.

    Exactly one traceparent is valid; tracestate may come in several entries,
    and a malformed tracestate is dropped alone.
    """
    parents: list[Any] = []
    states: list[Any] = []
    for key, value in metadata or ():
        if key == TRACEPARENT:
            parents.append(value)
        elif key == TRACESTATE:
            states.append(value)
    if len(parents) != 1:
        return None
    parent = parse_traceparent(parents[0])
    if parent is None:
        return None
    state = parse_tracestate(states) if states else ""
    return {TRACEPARENT: parent, TRACESTATE: state} if state else {TRACEPARENT: parent}


def from_envelope(message: dict[str, Any]) -> Optional[Carried]:
    """The trace context a front's envelope carries, checked like incoming metadata."""
    context = message.get(ENVELOPE_KEY)
    return from_metadata(context.items()) if isinstance(context, dict) else None


def attach(message: dict[str, Any]) -> dict[str, Any]:
    """`message`, an envelope to a worker, with the current call's trace context."""
    context = carried.get()
    if context is not None:
        message[ENVELOPE_KEY] = context
    return message


class Span(Protocol):
    """criproxy's part of one call: a span of its own (tracing.CallSpan) or none."""

    carried: Optional[Carried]  # what the next hop gets

    @property
    def metadata(self) -> Optional[tuple[tuple[str, str], ...]]: ...

    def finish(self, code: grpc.StatusCode, message: str = "",
               runtimes: Iterable[str] = ()) -> None: ...

    def __enter__(self) -> Span: ...

    def __exit__(self, *exc_info: Any) -> None:
        """Finishes the span with the outcome of the block (tracing.CallSpan)."""


class Tracer(Protocol):
    """What makes criproxy's own spans: criproxy/ops/tracing.py's Tracer."""

    def span(self, path: str, context: Optional[Carried]) -> Span: ...

    def close(self) -> None: ...


class Passthrough:
    """No span of criproxy's own: the trace context passes on unchanged."""

    __slots__ = ("carried",)

    def __init__(self, context: Optional[Carried]) -> None:
        self.carried = context

    @property
    def metadata(self) -> Optional[tuple[tuple[str, str], ...]]:
        """The context as gRPC metadata for the runtime call."""
        return tuple(self.carried.items()) if self.carried else None

    def finish(self, code: grpc.StatusCode, message: str = "",
               runtimes: Iterable[str] = ()) -> None:
        pass

    def __enter__(self) -> Passthrough:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass


_NO_CONTEXT = Passthrough(None)


def begin(tracer: Optional[Tracer], path: str, context: Optional[Carried]) -> Span:
    """criproxy's span for a call to `path` under `context`, when spans are on."""
    if tracer is not None:
        return tracer.span(path, context)
    return Passthrough(context) if context is not None else _NO_CONTEXT


def received(tracer: Optional[Tracer], path: str,
             metadata: Iterable[tuple[str, Any]] | None) -> Span:
    """The front's part of a call: its span, and the context its worker calls carry."""
    span = begin(tracer, path, from_metadata(metadata))
    carried.set(span.carried)
    return span

