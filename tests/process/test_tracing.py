"""kubelet's trace context through the real proxy, and criproxy's own spans.

The proxy runs in front of three fake runtimes, whose journals show the
metadata each runtime received; with spans on, it exports them to an OTLP
receiver of the test's own (tests/support/otlpreceiver.py). Unit tests of the parsing
and of the spans: tests/unit/test_tracecontext.py.
"""
from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import Cluster, start_cluster, stop_cluster
from tests.process.routing_util import RUNTIMES, Kubelet, Marks, unique, wait_until
from tests.support.harness import REPO, short_dir
from tests.support.otlpreceiver import CLIENT, SERVER, STATUS_ERROR, OtlpReceiver, ReceivedSpan
from tests.support.traceparents import PARENT, TRACEPARENT, TRACESTATE


def new_traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def parts(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, parent_id, flags = traceparent.split("-")
    return version, trace_id, parent_id, flags

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


def test_spans_off_never_import_opentelemetry() -> None:
    """Off, tracing must cost the front and the workers no memory or start-up time."""
    probe = ("import sys, criproxy.front.front, workers.worker; "
             "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
