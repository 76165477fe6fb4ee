"""ROUTING.md under stress: failing, slow, stopped and late runtimes; streaming URLs;
the merged event stream; deadlines; answers up to kubelet's 16 MiB.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import time
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import ALT_URL_BASE, STREAM_URL, Cluster, stop_cluster
from tests.process.routing_util import (BUSYBOX, RUNTIMES, Kubelet, Marks, bare_id, fake_status_info,
                                id_of, image_of, owner_of_id, unique, wait_until)
from tests.support.fakeruntime import FakeRuntime, _socket_path, start_fake
from tests.support.harness import short_dir, start_proxy

MIB = 1 << 20
FAST = 1.0  # "promptly": a routed call to a down runtime must fail within this


def _named(runtime: str, text: str) -> bool:
    return re.search(rf"\bruntime {re.escape(runtime)}\b", text) is not None


@contextlib.contextmanager
def own_cluster(flags: dict[str, tuple[str, ...]],
                absent: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """primary, alt, vm.cloud with extra fake flags; `absent` runtimes are not started."""
    base = short_dir("cpr-")
    fakes: dict[str, FakeRuntime] = {}
    cluster = None
    try:
        for name in RUNTIMES:
            if name not in absent:
                extra = ("--url-base", ALT_URL_BASE) if name == "alt" else ()
                fakes[name] = start_fake(base, name, *extra, *flags.get(name, ()))
        sockets = {name: _socket_path(base, name) for name in RUNTIMES}
        connect = f"{sockets['primary']},alt:{sockets['alt']},vm.cloud:{sockets['vm.cloud']}"
        proxy = start_proxy(connect, "-streamUrl", STREAM_URL, workdir=base,
                            wait_for=[n for n in fakes])
        cluster = Cluster(proxy, fakes, base)
        yield cluster
    finally:
        if cluster is not None:
            stop_cluster(cluster)
        else:
            for fake in fakes.values():
                fake.stop()
            shutil.rmtree(base, ignore_errors=True)


def start_again(cluster: Cluster, name: str, *flags: str) -> FakeRuntime:
    extra = ("--url-base", ALT_URL_BASE) if name == "alt" else ()
    cluster.fakes[name] = start_fake(cluster.base, name, *extra, *flags)
    return cluster.fakes[name]


@pytest.fixture(scope="module")
def flagged() -> Iterator[Cluster]:
    """Fakes that fail or dawdle on purpose (see each test)."""
    with own_cluster({
        "primary": ("--delay", "ContainerStatus=5", "--delay", "ContainerStats=2.5"),
        "alt": ("--fail", "UpdateRuntimeConfig=INTERNAL:boom",
                "--delay", "ContainerStatus=5", "--delay", "ContainerStats=2.5"),
        "vm.cloud": ("--delay", "ListContainers=5",
                     "--fail", "ReopenContainerLog=UNAVAILABLE:log rotation busy"),
    }) as cluster:
        yield cluster


@pytest.fixture
def kubelet(cluster: Cluster) -> Kubelet:
    return Kubelet(cluster)


# --- UpdateRuntimeConfig: errors of all runtimes joined --------------------------------


def test_update_runtime_config_error_names_the_failing_runtime_and_keeps_its_code(
        flagged: Cluster) -> None:
    kubelet = Kubelet(flagged)
    marks = Marks(flagged)

    with pytest.raises(grpc.RpcError) as error:
        kubelet.rt.UpdateRuntimeConfig(cri.UpdateRuntimeConfigRequest(), timeout=10)

    assert error.value.code() == grpc.StatusCode.INTERNAL
    details = error.value.details()
    assert _named("alt", details) and "boom" in details, details
    assert not _named("primary", details) and not _named("vm.cloud", details), details
    assert marks.receivers("UpdateRuntimeConfig") == list(RUNTIMES), "the others still got it"


def test_a_runtimes_own_unavailable_keeps_its_message(flagged: Cluster) -> None:
    kubelet = Kubelet(flagged)
    _, container_id = kubelet.pod_with_container("vm.cloud")

    with pytest.raises(grpc.RpcError) as error:
        kubelet.rt.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=container_id),
                                      timeout=10)

    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error.value.details() == "log rotation busy"


# --- deadlines -------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["primary", "alt"])
def test_the_callers_deadline_travels_to_the_runtime(flagged: Cluster, runtime: str) -> None:
    kubelet = Kubelet(flagged)
    _, container_id = kubelet.pod_with_container(runtime)
    marks = Marks(flagged)

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id),
                                   timeout=2)
    took = time.monotonic() - started

    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.8 < took < 3.5, took
    marks.only(runtime, "ContainerStatus")
    # The proxy is free again at once: the abandoned call holds nothing up.
    version = kubelet.rt.Version(cri.VersionRequest(), timeout=2)
    assert version.runtime_name == "primary"


@pytest.mark.parametrize("runtime", ["primary", "alt"])
def test_a_slow_answer_within_the_callers_deadline_is_not_cut_short(
        flagged: Cluster, runtime: str) -> None:
    kubelet = Kubelet(flagged)
    _, container_id = kubelet.pod_with_container(runtime)

    answer = kubelet.rt.ContainerStats(cri.ContainerStatsRequest(container_id=container_id),
                                       timeout=10)

    assert answer.stats.attributes.id == container_id


def test_a_slow_runtime_does_not_stall_a_list(flagged: Cluster) -> None:
    kubelet = Kubelet(flagged)
    pods = {runtime: kubelet.pod_with_container(runtime) for runtime in RUNTIMES}

    started = time.monotonic()
    containers = kubelet.rt.ListContainers(cri.ListContainersRequest(), timeout=30).containers
    took = time.monotonic() - started

    ids = [c.id for c in containers]
    assert pods["primary"][1] in ids and pods["alt"][1] in ids
    # It never answered a List: its container is known from kubelet's changes.
    assert pods["vm.cloud"][1] in ids
    assert took < 4.5, f"the list waited {took:.1f}s for the slow runtime"


def test_a_slow_runtime_does_not_fail_a_list_with_a_short_deadline(flagged: Cluster) -> None:
    kubelet = Kubelet(flagged)
    _, container_id = kubelet.pod_with_container("alt")

    containers = kubelet.rt.ListContainers(cri.ListContainersRequest(), timeout=1.5).containers

    assert container_id in [c.id for c in containers]


# --- streaming URLs --------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_streaming_urls_are_absolute(cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    sandbox_id, container_id = kubelet.pod_with_container(runtime)

    urls = {
        "exec": kubelet.rt.Exec(cri.ExecRequest(container_id=container_id, cmd=["sh"],
                                                stdout=True), timeout=10).url,
        "attach": kubelet.rt.Attach(cri.AttachRequest(container_id=container_id, stdout=True),
                                    timeout=10).url,
        "portforward": kubelet.rt.PortForward(cri.PortForwardRequest(
            pod_sandbox_id=sandbox_id, port=[80]), timeout=10).url,
    }

    # primary and vm.cloud answer relative URLs; alt answers absolute ones.
    base = ALT_URL_BASE if runtime == "alt" else STREAM_URL
    for kind, url in urls.items():
        assert re.fullmatch(rf"{re.escape(base)}/cri/{kind}/[0-9a-f]{{16}}", url), url


# --- GetContainerEvents: one merged stream ---------------------------------------------


def test_container_events_of_every_runtime_are_merged_and_prefixed(cluster: Cluster,
                                                                   kubelet: Kubelet) -> None:
    before = {name: int(fake_status_info(fake)["event_subscribers"])
              for name, fake in cluster.fakes.items()}
    stream = kubelet.rt.GetContainerEvents(cri.GetEventsRequest(), timeout=60)
    try:
        wait_until(lambda: all(
            int(fake_status_info(fake)["event_subscribers"]) == before[name] + 1
            for name, fake in cluster.fakes.items()), 10, "every runtime to get a subscriber")
        sandboxes = {runtime: kubelet.run_pod(runtime) for runtime in RUNTIMES}
        containers = {runtime: kubelet.create_container(runtime, sandboxes[runtime])
                      for runtime in RUNTIMES}
        wanted = {containers[runtime]: runtime for runtime in RUNTIMES}
        seen: dict[str, cri.ContainerEventResponse] = {}
        while set(seen) != set(wanted):
            event = next(stream)
            if event.container_id in wanted:
                seen[event.container_id] = event
    finally:
        stream.cancel()

    for container_id, runtime in wanted.items():
        event = seen[container_id]
        assert event.container_event_type == cri.CONTAINER_CREATED_EVENT
        assert bare_id(runtime, event.container_id).startswith(f"{runtime}-ct-")
        assert event.pod_sandbox_status.id == sandboxes[runtime]
        [status] = event.containers_statuses
        assert status.id == container_id
        assert status.image.image == image_of(runtime, BUSYBOX)
    # Cancelling kubelet's stream cancels the runtimes' streams.
    wait_until(lambda: all(int(fake_status_info(fake)["event_subscribers"]) == before[name]
                           for name, fake in cluster.fakes.items()), 10,
               "every runtime's event stream to be cancelled")


# --- big answers -------------------------------------------------------------------------


def test_list_answers_up_to_16_mib_pass(private_cluster: Cluster) -> None:
    kubelet = Kubelet(private_cluster)
    created = []
    for runtime in ("alt", "primary"):
        sandbox_id = kubelet.run_pod(runtime)
        for index in range(7):
            created.append(kubelet.create_container(
                runtime, sandbox_id, labels={"big": f"{runtime}{index}".ljust(MIB, "x")}))

    answer = kubelet.rt.ListContainers(cri.ListContainersRequest(), timeout=30)

    size = answer.ByteSize()
    assert 14 * MIB < size < 16 * MIB, size
    assert sorted(c.id for c in answer.containers) == sorted(created)
    assert [owner_of_id(c.id) for c in answer.containers] == ["primary"] * 7 + ["alt"] * 7
    for container in answer.containers:
        owner = owner_of_id(container.id)
        assert container.labels["big"].startswith(owner)
        assert container.image.image == image_of(owner, BUSYBOX)


# --- a runtime that goes away, or is not there yet ---------------------------------------


def _assert_fails_fast(call, request, runtime: str) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=30)
    took = time.monotonic() - started
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value
    assert _named(runtime, error.value.details()), error.value.details()
    assert took < FAST, f"took {took:.2f}s"


def _run_pod_when_back(kubelet: Kubelet, runtime: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return kubelet.run_pod(runtime)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_stopped_runtime_is_listed_from_the_record_and_used_again_once_restarted(
        private_cluster: Cluster) -> None:
    cluster = private_cluster
    kubelet = Kubelet(cluster)
    pods = {runtime: kubelet.pod_with_container(runtime) for runtime in RUNTIMES}
    alt_sandbox, alt_container = pods["alt"]

    cluster.fakes["alt"].stop()

    _assert_fails_fast(kubelet.rt.PodSandboxStatus,
                       cri.PodSandboxStatusRequest(pod_sandbox_id=alt_sandbox), "alt")
    _assert_fails_fast(kubelet.rt.ContainerStatus,
                       cri.ContainerStatusRequest(container_id=alt_container), "alt")
    _assert_fails_fast(kubelet.img.ImageStatus, cri.ImageStatusRequest(
        image=cri.ImageSpec(image=image_of("alt", BUSYBOX))), "alt")
    with pytest.raises(grpc.RpcError) as error:
        kubelet.run_pod("alt")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and _named("alt",
                                                                       error.value.details())
    started = time.monotonic()
    sandboxes = [i.id for i in kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(),
                                                         timeout=30).items]
    containers = [c.id for c in kubelet.rt.ListContainers(cri.ListContainersRequest(),
                                                          timeout=30).containers]
    images = [i.repo_tags[0] for i in kubelet.img.ListImages(cri.ListImagesRequest(),
                                                             timeout=30).images]
    assert time.monotonic() - started < 3 * FAST, "lists do not wait for a down runtime"
    # alt never answered a List: its pod and container come from kubelet's changes;
    # its images are not in the record, so they are left out.
    assert sorted(sandboxes) == sorted(p[0] for p in pods.values())
    assert sorted(containers) == sorted(p[1] for p in pods.values())
    assert images and all(not i.startswith("alt/") for i in images)
    cluster.proxy.wait_state("alt", "down")
    marks = Marks(cluster)
    kubelet.rt.UpdateRuntimeConfig(cri.UpdateRuntimeConfigRequest(), timeout=10)
    assert marks.receivers("UpdateRuntimeConfig") == ["primary", "vm.cloud"], \
        "UpdateRuntimeConfig goes to every runtime that is up"

    marks = Marks(cluster)
    start_again(cluster, "alt")
    new_sandbox = _run_pod_when_back(kubelet, "alt")

    assert marks.new("alt", "RunPodSandbox"), "the restarted runtime got the pod"
    assert marks.receivers("RunPodSandbox") == ["alt"]
    listed = [i.id for i in kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(),
                                                      timeout=30).items]
    assert listed == [pods["primary"][0], new_sandbox, pods["vm.cloud"][0]]


def test_a_call_in_flight_when_its_runtime_dies_fails_at_once_naming_it() -> None:
    slow = ("--delay", "PodSandboxStats=30")
    with own_cluster({"alt": slow}) as cluster:
        kubelet = Kubelet(cluster)
        for _ in range(3):  # the connection may notice the death a few ms after the call
            sandbox_id = _run_pod_when_back(kubelet, "alt")
            marks = Marks(cluster)
            pending = kubelet.rt.PodSandboxStats.future(
                cri.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id), timeout=30)
            wait_until(lambda: bool(marks.new("alt", "PodSandboxStats")), 10,
                       "the call to reach alt")

            started = time.monotonic()
            cluster.fakes["alt"].proc.kill()
            with pytest.raises(grpc.RpcError) as error:
                pending.result(timeout=10)
            took = time.monotonic() - started

            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert _named("alt", error.value.details()), error.value.details()
            assert took < FAST, f"took {took:.2f}s"
            cluster.fakes["alt"].proc.wait()
            start_again(cluster, "alt", *slow)


def test_a_runtime_missing_at_start_is_used_once_it_appears() -> None:
    with own_cluster({}, absent=("alt",)) as cluster:
        kubelet = Kubelet(cluster)
        primary_sandbox = kubelet.run_pod("primary")
        marks = Marks(cluster)

        _assert_fails_fast(kubelet.rt.PodSandboxStatus, cri.PodSandboxStatusRequest(
            pod_sandbox_id=id_of("alt", "alt-sb-000000000000")), "alt")
        _assert_fails_fast(kubelet.rt.RunPodSandbox, cri.RunPodSandboxRequest(
            config=cri.PodSandboxConfig(
                metadata=cri.PodSandboxMetadata(name=unique(), namespace="n", uid=unique()),
                annotations={"kubernetes.io/target-runtime": "alt"})), "alt")
        assert marks.receivers("RunPodSandbox") == []
        listed = [i.id for i in kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(),
                                                          timeout=30).items]
        assert listed == [primary_sandbox]

        start_again(cluster, "alt")
        alt_sandbox = _run_pod_when_back(kubelet, "alt")

        assert bare_id("alt", alt_sandbox).startswith("alt-sb-")
        [entry] = cluster.fakes["alt"].entries("RunPodSandbox")
        assert "kubernetes.io/target-runtime" in entry["request"]["config"]["annotations"]
        listed = [i.id for i in kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(),
                                                          timeout=30).items]
        assert listed == [primary_sandbox, alt_sandbox]
