"""Trace context from kubelet to the runtimes, and criproxy's own spans.

Unit tests check the W3C parsing and the spans; process-level tests run the
real proxy in front of three fake runtimes, whose journals show the metadata
each runtime received, and (spans on) an OTLP receiver of the test's own.
"""
from __future__ import annotations

import secrets
import shutil
import threading
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace import StatusCode as SpanStatus

from criproxy import protocol, tracecontext
from criproxy.tracing import Tracer
from tests.conftest import Cluster, start_cluster, stop_cluster
from tests.harness import short_dir
from tests.otlpreceiver import CLIENT, SERVER, STATUS_ERROR, OtlpReceiver, ReceivedSpan
from tests.routing_util import RUNTIMES, Kubelet, Marks, unique, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
VERSION = "/runtime.v1.RuntimeService/Version"


def new_traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def parts(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, parent_id, flags = traceparent.split("-")
    return version, trace_id, parent_id, flags


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
    assert tracecontext.load_tracer("", "front") is None


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


# --- propagation through the real proxy -----------------------------------------------


@pytest.fixture
def kubelet(cluster: Cluster) -> Kubelet:
    return Kubelet(cluster)


def test_traceparent_reaches_the_runtime_unchanged(cluster: Cluster, kubelet: Kubelet) -> None:
    marks = Marks(cluster)
    kubelet.rt.Version(cri.VersionRequest(), timeout=10, metadata=(
        ("traceparent", TRACEPARENT), ("tracestate", TRACESTATE), ("x-kubelet-secret", "s")))
    received = marks.only("primary", "Version")["metadata"]
    assert received["traceparent"] == TRACEPARENT
    assert received["tracestate"] == TRACESTATE
    assert "x-kubelet-secret" not in received, "no other metadata is passed on"


def test_every_runtime_of_a_fan_out_gets_it(cluster: Cluster, kubelet: Kubelet) -> None:
    for runtime in RUNTIMES:
        kubelet.run_pod(runtime)
    _, _, traceparent = new_traceparent()
    marks = Marks(cluster)
    answer = kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10,
                                       metadata=(("traceparent", traceparent),))
    assert len(answer.items) >= 3
    assert marks.receivers("ListPodSandbox") == list(RUNTIMES)
    for runtime in RUNTIMES:
        [entry] = marks.new(runtime, "ListPodSandbox")
        assert entry["metadata"]["traceparent"] == traceparent, runtime


def test_a_broadcast_carries_it_to_every_runtime(cluster: Cluster, kubelet: Kubelet) -> None:
    _, _, traceparent = new_traceparent()
    marks = Marks(cluster)
    kubelet.rt.UpdateRuntimeConfig(cri.UpdateRuntimeConfigRequest(), timeout=10,
                                   metadata=(("traceparent", traceparent),))
    for runtime in RUNTIMES:
        [entry] = marks.new(runtime, "UpdateRuntimeConfig")
        assert entry["metadata"]["traceparent"] == traceparent, runtime


@pytest.mark.parametrize("metadata", [
    (("traceparent", "00-not-a-trace-01"), ("tracestate", TRACESTATE)),
    (("traceparent", TRACEPARENT.upper()),),
    (("traceparent", f"00-{'0' * 32}-{PARENT}-01"), ("tracestate", TRACESTATE)),
])
def test_a_malformed_context_is_dropped_and_the_call_succeeds(
        cluster: Cluster, kubelet: Kubelet, metadata: tuple) -> None:
    marks = Marks(cluster)
    answer = kubelet.rt.Version(cri.VersionRequest(), timeout=10, metadata=metadata)
    assert answer.runtime_name == "primary"
    received = marks.only("primary", "Version")["metadata"]
    assert "traceparent" not in received and "tracestate" not in received


def test_a_malformed_tracestate_alone_is_dropped(cluster: Cluster, kubelet: Kubelet) -> None:
    marks = Marks(cluster)
    kubelet.rt.Version(cri.VersionRequest(), timeout=10, metadata=(
        ("traceparent", TRACEPARENT), ("tracestate", "Not Valid")))
    received = marks.only("primary", "Version")["metadata"]
    assert received["traceparent"] == TRACEPARENT
    assert "tracestate" not in received


def test_calls_without_a_context_send_none(cluster: Cluster, kubelet: Kubelet) -> None:
    marks = Marks(cluster)
    kubelet.rt.Version(cri.VersionRequest(), timeout=10)
    assert "traceparent" not in marks.only("primary", "Version")["metadata"]


def test_event_streams_carry_it_to_every_runtime(cluster: Cluster, kubelet: Kubelet) -> None:
    _, _, traceparent = new_traceparent()
    marks = Marks(cluster)
    stream = kubelet.rt.GetContainerEvents(cri.GetEventsRequest(), timeout=30,
                                           metadata=(("traceparent", traceparent),))
    try:
        def subscribed() -> bool:
            return all(any(e["metadata"].get("traceparent") == traceparent
                           for e in marks.new(runtime, "GetContainerEvents"))
                       for runtime in RUNTIMES)
        wait_until(subscribed, 20, "every runtime's GetContainerEvents with the traceparent")
    finally:
        stream.cancel()


# --- spans through the real proxy -----------------------------------------------------


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Cluster, OtlpReceiver]]:
    """A cluster exporting spans to a receiver of the test's; spans are sent every 0.1 s."""
    base = short_dir("otlp-")
    with OtlpReceiver(base / "otlp.sock") as receiver, pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        cluster = start_cluster("-otlpEndpoint", receiver.endpoint)
        try:
            yield cluster, receiver
        finally:
            stop_cluster(cluster)
            shutil.rmtree(base, ignore_errors=True)


def _of_trace(receiver: OtlpReceiver, trace_id: str, workers: int) -> tuple[
        ReceivedSpan, list[ReceivedSpan]]:
    """The front's span of a trace and its `workers` worker spans, once all arrived."""
    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return ([s.process for s in mine].count("front") == 1
                and [s.process for s in mine].count("worker") == workers)
    spans = receiver.wait_for(complete, 30, f"front span and {workers} worker spans of {trace_id}")
    mine = [s for s in spans if s.trace_id == trace_id]
    [front] = [s for s in mine if s.process == "front"]
    return front, [s for s in mine if s.process == "worker"]


def test_spans_chain_from_kubelet_through_criproxy_to_the_runtime(
        traced: tuple[Cluster, OtlpReceiver]) -> None:
    cluster, receiver = traced
    trace_id, parent_id, traceparent = new_traceparent()
    marks = Marks(cluster)
    Kubelet(cluster).rt.Version(cri.VersionRequest(), timeout=10, metadata=(
        ("traceparent", traceparent), ("tracestate", TRACESTATE)))

    front, [worker] = _of_trace(receiver, trace_id, workers=1)
    assert front.parent_id == parent_id, "the front's span is a child of kubelet's"
    assert worker.parent_id == front.span_id, "the worker's span is a child of the front's"
    assert (front.span.kind, worker.span.kind) == (SERVER, CLIENT)
    for span in (front, worker):
        assert span.span.name == "runtime.v1.RuntimeService/Version"
        assert span.attributes["rpc.method"] == "Version"
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert span.resource["service.name"] == "criproxy"
    assert front.attributes["criproxy.runtimes"] == ["primary"]
    assert worker.resource["criproxy.runtime"] == "primary"
    received = marks.only("primary", "Version")["metadata"]
    assert received["traceparent"] == f"00-{trace_id}-{worker.span_id}-01", \
        "the runtime's parent is criproxy's worker span"
    assert received["tracestate"] == TRACESTATE


def test_a_fan_out_has_one_worker_span_per_runtime(traced: tuple[Cluster, OtlpReceiver]) -> None:
    cluster, receiver = traced
    trace_id, _, traceparent = new_traceparent()
    marks = Marks(cluster)
    Kubelet(cluster).rt.ListContainers(cri.ListContainersRequest(), timeout=10,
                                       metadata=(("traceparent", traceparent),))

    front, workers = _of_trace(receiver, trace_id, workers=3)
    assert sorted(front.attributes["criproxy.runtimes"]) == sorted(RUNTIMES)
    by_runtime = {w.resource["criproxy.runtime"]: w for w in workers}
    assert sorted(by_runtime) == sorted(RUNTIMES)
    for runtime, worker in by_runtime.items():
        assert worker.parent_id == front.span_id
        [entry] = marks.new(runtime, "ListContainers")
        assert parts(entry["metadata"]["traceparent"])[2] == worker.span_id, runtime


def test_spans_carry_the_failure_code(traced: tuple[Cluster, OtlpReceiver]) -> None:
    cluster, receiver = traced
    trace_id, _, traceparent = new_traceparent()
    with pytest.raises(grpc.RpcError) as failed:
        Kubelet(cluster).rt.ContainerStatus(
            cri.ContainerStatusRequest(container_id=unique("missing")), timeout=10,
            metadata=(("traceparent", traceparent),))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND

    front, [worker] = _of_trace(receiver, trace_id, workers=1)
    for span in (front, worker):
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert span.span.status.code == STATUS_ERROR
        assert "not found" in span.span.status.message


def test_a_call_without_context_starts_a_trace_of_its_own(
        traced: tuple[Cluster, OtlpReceiver]) -> None:
    cluster, receiver = traced
    marks = Marks(cluster)
    Kubelet(cluster).rt.Version(cri.VersionRequest(), timeout=10)
    _, trace_id, parent_id, _ = parts(marks.only("primary", "Version")["metadata"]["traceparent"])

    front, [worker] = _of_trace(receiver, trace_id, workers=1)
    assert front.parent_id == "", "a root span"
    assert worker.span_id == parent_id


def test_a_hung_collector_delays_no_call(traced: tuple[Cluster, OtlpReceiver]) -> None:
    cluster, receiver = traced
    stub = Kubelet(cluster).rt
    receiver.open.clear()
    try:
        for _ in range(30):
            # Below the exporter's 3 s timeout: a call that waited for an export would fail.
            stub.Version(cri.VersionRequest(), timeout=2.5)
    finally:
        receiver.open.set()
    trace_id, _, traceparent = new_traceparent()
    stub.Version(cri.VersionRequest(), timeout=10, metadata=(("traceparent", traceparent),))
    _of_trace(receiver, trace_id, workers=1)
