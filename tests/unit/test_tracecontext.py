"""Unit tests of the trace context (criproxy/wire/tracecontext.py) and of criproxy's
spans (criproxy/ops/tracing.py); tests/process/test_tracing.py runs them in the real proxy.
"""
from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace import StatusCode as SpanStatus

from criproxy.ops import spans
from criproxy.ops.tracing import Tracer
from criproxy.settings import ConfigError, config_from_args
from criproxy.wire import protocol, tracecontext
from tests.support.traceparents import PARENT, TRACE, TRACEPARENT, TRACESTATE

VERSION = "/runtime.v1.RuntimeService/Version"

# --- W3C parsing ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    TRACEPARENT,
    f"00-{TRACE}-{PARENT}-00",                       # not sampled: still passed on
    f"cc-{TRACE}-{PARENT}-01-what-the-future-holds",  # a later version may add fields
])
def test_valid_traceparents_pass_as_version_00(value: str) -> None:
    assert tracecontext.parse_traceparent(value) == f"00-{TRACE}-{PARENT}-{value[53:55]}"


@pytest.mark.parametrize("value", [
    "", "00", TRACEPARENT.upper(), TRACEPARENT + "-extra", " " + TRACEPARENT,
    TRACEPARENT + "\n", f"ff-{TRACE}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01",
    f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE[:-1]}-{PARENT}-01", f"00-{TRACE}-{PARENT}-1",
    f"00_{TRACE}_{PARENT}_01", f"cc-{TRACE}-{PARENT}-01x", b"bytes", None,
])
def test_malformed_traceparents_are_refused(value: object) -> None:
    assert tracecontext.parse_traceparent(value) is None


def test_tracestate_entries_are_joined_and_checked() -> None:
    assert tracecontext.parse_tracestate(["rojo=1 , congo=2", "", "t@vendor=x y"]) == \
        "rojo=1,congo=2,t@vendor=x y"
    for bad in ["Upper=1", "a=1,a=2", "a", "a=", "a=b=c", "a=\x7f", "=1", "a=1;b=2"]:
        assert tracecontext.parse_tracestate([bad]) == "", bad
    assert tracecontext.parse_tracestate([",".join(f"k{i}=v" for i in range(33))]) == ""


def test_a_long_tracestate_is_cut_as_w3c_says() -> None:
    big = "big=" + "x" * 200
    members = [f"k{i:02}=" + "v" * 40 for i in range(15)]
    cut = tracecontext.parse_tracestate([",".join([members[0], big, *members[1:]])])
    assert "big=" not in cut, "members over 128 characters go first"
    assert len(cut) <= 512 and cut.startswith(members[0])
    assert cut.split(",") == members[:len(cut.split(","))], "then members from the end"


def test_from_metadata_takes_only_the_trace_context() -> None:
    metadata = [("user-agent", "kubelet"), ("traceparent", TRACEPARENT),
                ("tracestate", TRACESTATE), ("x-secret", "do-not-pass"), ("b-bin", b"\0")]
    assert tracecontext.from_metadata(metadata) == {"traceparent": TRACEPARENT,
                                                    "tracestate": TRACESTATE}


def test_from_metadata_drops_what_breaks_the_format() -> None:
    assert tracecontext.from_metadata([]) is None
    assert tracecontext.from_metadata(None) is None
    assert tracecontext.from_metadata([("tracestate", TRACESTATE)]) is None
    assert tracecontext.from_metadata([("traceparent", "junk"), ("tracestate", TRACESTATE)]) \
        is None
    assert tracecontext.from_metadata([("traceparent", TRACEPARENT)] * 2) is None
    assert tracecontext.from_metadata([("traceparent", TRACEPARENT), ("tracestate", "B=1")]) \
        == {"traceparent": TRACEPARENT}, "a bad tracestate is dropped alone"


def test_envelope_carries_the_context_and_the_worker_checks_it_again() -> None:
    token = tracecontext.carried.set({"traceparent": TRACEPARENT})
    try:
        message = tracecontext.attach({"t": protocol.CALL, "id": 1, "m": VERSION, "b": b"",
                                       "d": None})
    finally:
        tracecontext.carried.reset(token)
    unpacked = protocol.unpack(protocol.pack(message))
    assert tracecontext.from_envelope(unpacked) == {"traceparent": TRACEPARENT}
    assert "tc" not in tracecontext.attach({"t": protocol.CALL}), "no context, no key"
    assert tracecontext.from_envelope({"tc": {"traceparent": "junk", "x": "y"}}) is None
    with pytest.raises(protocol.ProtocolError, match="ill-typed tc"):
        protocol.unpack(protocol.pack({**message, "tc": "00-x"}))


def test_without_spans_the_context_passes_unchanged() -> None:
    span = tracecontext.begin(None, VERSION, {"traceparent": TRACEPARENT})
    assert span.carried == {"traceparent": TRACEPARENT}
    assert span.metadata == (("traceparent", TRACEPARENT),)
    assert tracecontext.begin(None, VERSION, None).metadata is None
    assert spans.load_tracer("", "front") is None


# --- spans, unit ---------------------------------------------------------------------


def test_front_and_worker_spans_chain_under_kubelets() -> None:
    front_spans, worker_spans = InMemorySpanExporter(), InMemorySpanExporter()
    front, worker = Tracer(front_spans, "front"), Tracer(worker_spans, "worker", "alt")

    front_span = front.span(VERSION, {"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    with worker.span(VERSION, front_span.carried) as worker_span:
        pass
    front_span.finish(grpc.StatusCode.OK, runtimes=["alt"])
    front.close()
    worker.close()

    [made_front] = front_spans.get_finished_spans()
    [made_worker] = worker_spans.get_finished_spans()
    assert made_front.context.trace_id == made_worker.context.trace_id == int(TRACE, 16)
    assert made_front.parent.span_id == int(PARENT, 16)
    assert made_worker.parent.span_id == made_front.context.span_id
    assert worker_span.carried == {
        "traceparent": f"00-{TRACE}-{made_worker.context.span_id:016x}-01",
        "tracestate": TRACESTATE}
    assert (made_front.kind, made_worker.kind) == (SpanKind.SERVER, SpanKind.CLIENT)
    assert made_front.name == "runtime.v1.RuntimeService/Version"
    assert made_front.attributes["rpc.method"] == "Version"
    assert made_front.attributes["rpc.grpc.status_code"] == 0
    assert list(made_front.attributes["criproxy.runtimes"]) == ["alt"]
    assert made_worker.resource.attributes["criproxy.process"] == "worker"
    assert made_worker.resource.attributes["criproxy.runtime"] == "alt"
    assert made_front.resource.attributes["service.name"] == "criproxy"


class _Failed(Exception):
    def __init__(self) -> None:
        super().__init__("gone")
        self.code, self.message = grpc.StatusCode.NOT_FOUND, "container x not found"


def test_a_span_records_the_grpc_code_of_the_error_that_ended_it() -> None:
    exporter = InMemorySpanExporter()
    tracer = Tracer(exporter, "worker", "primary")
    with pytest.raises(_Failed):
        with tracer.span(VERSION, None):
            raise _Failed()
    tracer.close()
    [span] = exporter.get_finished_spans()
    assert span.parent is None, "no context came: a trace of its own"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status.status_code == SpanStatus.ERROR
    assert "container x not found" in span.status.description



@pytest.mark.parametrize("value, expected", [
    ("", ""), ("off", ""), ("localhost:4317", "localhost:4317"),
    ("http://127.0.0.1:4317/", "127.0.0.1:4317"), ("unix:///run/otel.sock", "unix:/run/otel.sock"),
])
def test_otlp_endpoint_forms(value: str, expected: str) -> None:
    assert config_from_args(["-connect", "/a", "-otlpEndpoint", value]).otlp_endpoint == expected


@pytest.mark.parametrize("value", ["https://collector:4317", "collector", "collector:0",
                                   "unix:relative.sock"])
def test_bad_otlp_endpoints_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="-otlpEndpoint"):
        config_from_args(["-connect", "/a", "-otlpEndpoint", value])
