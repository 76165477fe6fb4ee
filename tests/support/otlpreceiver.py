"""An OTLP/gRPC trace receiver for tests: it keeps every span exported to it.

    with OtlpReceiver(path) as receiver:   # serves unix:<path>
        ... criproxy -otlpEndpoint unix:<path> ...
        spans = receiver.wait_for(lambda spans: ..., timeout=20)
"""
from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


@dataclass(frozen=True)
class ReceivedSpan:
    span: trace_pb2.Span
    resource: dict[str, Any]

    @property
    def attributes(self) -> dict[str, Any]:
        return _attributes(self.span.attributes)

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def process(self) -> str:
        return str(self.resource.get("criproxy.process"))


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, socket: Path, keep: bool = True) -> None:
        """`keep`: keep the spans; else only count them (a benchmark's load)."""
        self.socket = socket
        self.keep = keep
        self.count = 0
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        # Cleared, Export answers nothing until it is set again: a collector that hangs.
        self.open = threading.Event()
        self.open.set()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix:{socket}")

    @property
    def endpoint(self) -> str:
        return f"unix:{self.socket}"

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        self.open.wait(30)
        received = [ReceivedSpan(span, _attributes(resource_spans.resource.attributes))
                    for resource_spans in request.resource_spans
                    for scope_spans in resource_spans.scope_spans
                    for span in scope_spans.spans]
        with self._lock:
            self.count += len(received)
            if self.keep:
                self._spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], timeout: float,
                 what: str) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while not found(spans := self.spans()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout}s; received: "
                                     f"{[(s.process, s.span.name, s.trace_id) for s in spans]}")
            time.sleep(0.05)
        return spans

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.open.set()
        self._server.stop(grace=None)
