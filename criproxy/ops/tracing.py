"""criproxy's own trace spans (opt-in: -otlpEndpoint), made with OpenTelemetry's SDK.

The front makes a SERVER span for each call it answers, a child of kubelet's
span; each worker makes a CLIENT span for each call to its runtime, a child of
the front's. The runtime receives the worker's span as its parent, so its
spans hang under criproxy's. The sampling decision follows kubelet's (parent
based; the standard OTEL_TRACES_SAMPLER variables can change that).

Ended spans go to a BatchSpanProcessor: its own thread exports them, and a
call only appends to its queue. A collector that is slow or gone never delays
a call; when the queue is full, spans are dropped.

Only criproxy/ops/spans.py imports this module, and only when spans are on.
"""
from __future__ import annotations

import asyncio
import importlib.metadata
import os
from typing import Any, Iterable, Optional

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from criproxy.wire.tracecontext import Carried, Passthrough

_PROPAGATOR = TraceContextTextMapPropagator()
# Bounds how long a stopping process may spend on a collector that does not answer.
_EXPORT_TIMEOUT = 3.0


class CallSpan(Passthrough):
    """One span of criproxy's; `carried` names it as the parent of what follows."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span, context: Optional[Carried]) -> None:
        super().__init__(context)
        self._span = span

    def finish(self, code: grpc.StatusCode, message: str = "",
               runtimes: Iterable[str] = ()) -> None:
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if runtimes:
            self._span.set_attribute("criproxy.runtimes", list(runtimes))
        if code != grpc.StatusCode.OK:
            self._span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"[:1024]))
        self._span.end()

    def __enter__(self) -> CallSpan:
        return self

    def __exit__(self, _type: Any, error: Optional[BaseException], _tb: Any) -> None:
        """Ends the span with the gRPC code of the error that left the block, if any."""
        if error is None:
            self.finish(grpc.StatusCode.OK)
        elif isinstance(getattr(error, "code", None), grpc.StatusCode):
            self.finish(error.code, getattr(error, "message", ""))  # type: ignore[attr-defined]
        elif isinstance(error, (GeneratorExit, asyncio.CancelledError)):
            self.finish(grpc.StatusCode.CANCELLED, "the caller went away")
        else:
            self.finish(grpc.StatusCode.INTERNAL, repr(error))


def _version() -> str:
    try:
        return importlib.metadata.version("criproxy")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


class Tracer:
    """The spans of one process: the front ("front") or a worker ("worker", runtime)."""

    def __init__(self, exporter: SpanExporter, process: str, runtime: str = "") -> None:
        attributes: dict[str, Any] = {
            "service.name": "criproxy", "service.version": _version(),
            "service.instance.id": f"{process}-{runtime}" if runtime else process,
            "criproxy.process": process, "process.pid": os.getpid()}
        if runtime:
            attributes["criproxy.runtime"] = runtime
        self._provider = TracerProvider(resource=Resource.create(attributes))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("criproxy")
        self._kind = SpanKind.SERVER if process == "front" else SpanKind.CLIENT

    def span(self, path: str, context: Optional[Carried]) -> CallSpan:
        """Start the span of a call to gRPC method `path`, a child of `context`'s."""
        parent = _PROPAGATOR.extract(context) if context else None
        span = self._tracer.start_span(_span_name(path), context=parent, kind=self._kind,
                                       attributes=_rpc_attributes(path))
        passed: dict[str, str] = {}
        _PROPAGATOR.inject(passed, context=trace.set_span_in_context(span))
        return CallSpan(span, passed or None)

    def close(self) -> None:
        """Export what is queued (bounded by the exporter's timeout) and stop."""
        self._provider.shutdown()


def _span_name(path: str) -> str:
    """OpenTelemetry's name for a gRPC span: `package.Service/Method`."""
    return path.lstrip("/")


def _rpc_attributes(path: str) -> dict[str, str]:
    service, _, method = path.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def otlp_tracer(endpoint: str, process: str, runtime: str = "") -> Tracer:
    """A Tracer exporting over OTLP/gRPC, in plain text, to `endpoint`."""
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=_EXPORT_TIMEOUT)
    return Tracer(exporter, process, runtime)
