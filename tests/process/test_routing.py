"""ROUTING.md, row by row: which runtime gets each request, and how it is rewritten.

Every test talks to the real proxy (supervisord, front, workers) over its
socket and reads the fake runtimes' journals to prove where a request went,
that it went nowhere else, and with which (unprefixed) ids and images.
Lists and images: test_routing_lists.py; down, slow, failing runtimes,
events and big answers: test_routing_faults.py.
"""
from __future__ import annotations

import re
from typing import Callable

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from google.protobuf.message import Message

from fuzz.builder import length_delimited
from tests.process.cluster import Cluster
from tests.process.routing_util import (BUSYBOX, NAMED, RUNTIMES, TARGET, UNKNOWN_FIELD, Kubelet,
                                Marks, bare_id, digest_of, id_of, image_of, raw_of,
                                relative_base, unique)

RUNTIME_SERVICE = "/runtime.v1.RuntimeService/"


@pytest.fixture
def kubelet(cluster: Cluster) -> Kubelet:
    return Kubelet(cluster)


# --- Version, Status, RuntimeConfig: the primary only -------------------------------


@pytest.mark.parametrize("method, request_message", [
    ("Version", cri.VersionRequest(version="v1")),
    ("Status", cri.StatusRequest(verbose=True)),
    ("RuntimeConfig", cri.RuntimeConfigRequest()),
])
def test_runtime_info_goes_to_the_primary_only(cluster: Cluster, kubelet: Kubelet,
                                               method: str, request_message: Message) -> None:
    marks = Marks(cluster)

    answer = getattr(kubelet.rt, method)(request_message, timeout=10)

    entry = marks.only("primary", method)
    assert raw_of(entry) == request_message.SerializeToString()
    if method == "Version":
        assert answer.runtime_name == "primary"
    elif method == "Status":
        assert answer.info["name"] == "primary"
    else:
        assert answer.linux.cgroup_driver == cri.SYSTEMD


def test_update_runtime_config_goes_to_every_runtime(cluster: Cluster, kubelet: Kubelet) -> None:
    request = cri.UpdateRuntimeConfigRequest(
        runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr="10.9.0.0/16")))
    marks = Marks(cluster)

    kubelet.rt.UpdateRuntimeConfig(request, timeout=10)

    assert marks.receivers("UpdateRuntimeConfig") == list(RUNTIMES)
    for runtime in RUNTIMES:
        [entry] = marks.new(runtime, "UpdateRuntimeConfig")
        assert entry["request"]["runtime_config"]["network_config"]["pod_cidr"] == "10.9.0.0/16"


# --- RunPodSandbox: by annotation ----------------------------------------------------


def test_run_pod_sandbox_without_annotation_goes_to_the_primary(cluster: Cluster,
                                                                kubelet: Kubelet) -> None:
    marks = Marks(cluster)

    sandbox_id = kubelet.run_pod("primary")

    entry = marks.only("primary", "RunPodSandbox")
    assert sandbox_id.startswith("primary-sb-"), "primary ids are not prefixed"
    assert TARGET not in entry["request"]["config"].get("annotations", {})


@pytest.mark.parametrize("runtime", NAMED)
def test_run_pod_sandbox_with_annotation_goes_to_the_named_runtime(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    name = unique()
    marks = Marks(cluster)

    sandbox_id = kubelet.run_pod(runtime, name)

    entry = marks.only(runtime, "RunPodSandbox")
    assert entry["request"]["config"]["metadata"]["name"] == name
    assert entry["request"]["config"]["annotations"][TARGET] == runtime
    assert re.fullmatch(rf"{re.escape(runtime)}__{re.escape(runtime)}-sb-[0-9a-f]+", sandbox_id)


def test_run_pod_sandbox_for_an_unknown_runtime_is_refused_and_not_forwarded(
        cluster: Cluster, kubelet: Kubelet) -> None:
    marks = Marks(cluster)

    with pytest.raises(grpc.RpcError) as error:
        kubelet.run_pod("no-such-runtime")

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-runtime" in error.value.details()
    assert marks.receivers("RunPodSandbox") == []


# --- by sandbox id -------------------------------------------------------------------

SandboxCall = Callable[[str], Message]
SANDBOX_METHODS: dict[str, SandboxCall] = {
    "StopPodSandbox": lambda sb: cri.StopPodSandboxRequest(pod_sandbox_id=sb),
    "RemovePodSandbox": lambda sb: cri.RemovePodSandboxRequest(pod_sandbox_id=sb),
    "PodSandboxStatus": lambda sb: cri.PodSandboxStatusRequest(pod_sandbox_id=sb, verbose=True),
    "PodSandboxStats": lambda sb: cri.PodSandboxStatsRequest(pod_sandbox_id=sb),
    "PortForward": lambda sb: cri.PortForwardRequest(pod_sandbox_id=sb, port=[8080]),
    "UpdatePodSandboxResources": lambda sb: cri.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=sb, overhead=cri.LinuxContainerResources(cpu_shares=512)),
}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("method", list(SANDBOX_METHODS))
def test_sandbox_methods_go_to_the_runtime_owning_the_sandbox(
        cluster: Cluster, kubelet: Kubelet, method: str, runtime: str) -> None:
    sandbox_id, container_id = kubelet.pod_with_container(runtime)
    marks = Marks(cluster)

    answer = getattr(kubelet.rt, method)(SANDBOX_METHODS[method](sandbox_id), timeout=10)

    entry = marks.only(runtime, method)
    assert entry["request"]["pod_sandbox_id"] == bare_id(runtime, sandbox_id)
    if method == "PodSandboxStatus":
        assert answer.status.id == sandbox_id
        assert answer.info["name"] == runtime
        assert answer.status.state == cri.SANDBOX_READY
    elif method == "PodSandboxStats":
        assert answer.stats.attributes.id == sandbox_id
        assert [c.attributes.id for c in answer.stats.linux.containers] == [container_id]
    elif method == "PortForward":
        assert re.fullmatch(rf"{re.escape(relative_base(runtime))}/cri/portforward/[0-9a-f]+",
                            answer.url)
    elif method == "StopPodSandbox":
        status = kubelet.rt.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10).status
        assert status.state == cri.SANDBOX_NOTREADY
    elif method == "RemovePodSandbox":
        with pytest.raises(grpc.RpcError) as error:
            kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                                        timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    elif method == "UpdatePodSandboxResources":
        assert entry["request"]["overhead"]["cpu_shares"] == "512"


# --- by container id -----------------------------------------------------------------

ContainerCall = Callable[[str], Message]
CONTAINER_METHODS: dict[str, ContainerCall] = {
    "StartContainer": lambda ct: cri.StartContainerRequest(container_id=ct),
    "StopContainer": lambda ct: cri.StopContainerRequest(container_id=ct, timeout=3),
    "RemoveContainer": lambda ct: cri.RemoveContainerRequest(container_id=ct),
    "ContainerStatus": lambda ct: cri.ContainerStatusRequest(container_id=ct, verbose=True),
    "ContainerStats": lambda ct: cri.ContainerStatsRequest(container_id=ct),
    "UpdateContainerResources": lambda ct: cri.UpdateContainerResourcesRequest(
        container_id=ct, linux=cri.LinuxContainerResources(memory_limit_in_bytes=1 << 28)),
    "ReopenContainerLog": lambda ct: cri.ReopenContainerLogRequest(container_id=ct),
    "ExecSync": lambda ct: cri.ExecSyncRequest(container_id=ct, cmd=["echo", "hi"], timeout=5),
    "Exec": lambda ct: cri.ExecRequest(container_id=ct, cmd=["sh"], stdout=True),
    "Attach": lambda ct: cri.AttachRequest(container_id=ct, stdout=True),
    "CheckpointContainer": lambda ct: cri.CheckpointContainerRequest(
        container_id=ct, location="/tmp/checkpoint.tar"),
}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("method", list(CONTAINER_METHODS))
def test_container_methods_go_to_the_runtime_owning_the_container(
        cluster: Cluster, kubelet: Kubelet, method: str, runtime: str) -> None:
    sandbox_id, container_id = kubelet.pod_with_container(runtime)
    marks = Marks(cluster)

    answer = getattr(kubelet.rt, method)(CONTAINER_METHODS[method](container_id), timeout=10)

    entry = marks.only(runtime, method)
    assert entry["request"]["container_id"] == bare_id(runtime, container_id)
    if method == "ContainerStatus":
        status = answer.status
        assert status.id == container_id
        assert status.image.image == image_of(runtime, BUSYBOX)
        assert status.image_ref == status.image_id == digest_of(BUSYBOX), "digests stay"
        assert answer.info["name"] == runtime
    elif method == "ContainerStats":
        assert answer.stats.attributes.id == container_id
    elif method == "ExecSync":
        assert answer.stdout == b"echo hi\n"
    elif method in ("Exec", "Attach"):
        kind = method.lower()
        assert re.fullmatch(rf"{re.escape(relative_base(runtime))}/cri/{kind}/[0-9a-f]+",
                            answer.url)
    elif method == "StartContainer":
        assert _container_state(kubelet, container_id) == cri.CONTAINER_RUNNING
    elif method == "StopContainer":
        assert _container_state(kubelet, container_id) == cri.CONTAINER_EXITED
    elif method == "RemoveContainer":
        listed = kubelet.rt.ListContainers(cri.ListContainersRequest(
            filter=cri.ContainerFilter(pod_sandbox_id=sandbox_id)), timeout=10)
        assert list(listed.containers) == []
    elif method == "UpdateContainerResources":
        assert entry["request"]["linux"]["memory_limit_in_bytes"] == str(1 << 28)


def _container_state(kubelet: Kubelet, container_id: str) -> int:
    return kubelet.rt.ContainerStatus(
        cri.ContainerStatusRequest(container_id=container_id), timeout=10).status.state


# --- CreateContainer: by sandbox id, image of the same runtime -----------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_create_container_goes_to_the_sandbox_runtime_with_prefixes_stripped(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    sandbox_id = kubelet.run_pod(runtime)
    marks = Marks(cluster)

    container_id = kubelet.create_container(runtime, sandbox_id, image_of(runtime, BUSYBOX))

    entry = marks.only(runtime, "CreateContainer")
    assert entry["request"]["pod_sandbox_id"] == bare_id(runtime, sandbox_id)
    assert entry["request"]["config"]["image"]["image"] == BUSYBOX
    assert bare_id(runtime, container_id).startswith(f"{runtime}-ct-")
    listed = kubelet.rt.ListContainers(cri.ListContainersRequest(
        filter=cri.ContainerFilter(id=container_id)), timeout=10).containers
    assert [(c.id, c.pod_sandbox_id, c.image.image) for c in listed] == [
        (container_id, sandbox_id, image_of(runtime, BUSYBOX))]


@pytest.mark.parametrize("runtime, image_runtime", [
    ("alt", "primary"), ("alt", "vm.cloud"), ("primary", "alt"), ("vm.cloud", "alt")])
def test_create_container_with_an_image_of_another_runtime_is_refused(
        cluster: Cluster, kubelet: Kubelet, runtime: str, image_runtime: str) -> None:
    sandbox_id = kubelet.run_pod(runtime)
    foreign = image_of(image_runtime, BUSYBOX)
    marks = Marks(cluster)

    with pytest.raises(grpc.RpcError) as error:
        kubelet.create_container(runtime, sandbox_id, foreign)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert foreign in error.value.details()
    assert marks.receivers("CreateContainer") == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_create_container_accepts_a_bare_digest_on_any_runtime(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    sandbox_id = kubelet.run_pod(runtime)
    digest = digest_of(BUSYBOX)
    marks = Marks(cluster)

    container_id = kubelet.create_container(runtime, sandbox_id, digest)

    entry = marks.only(runtime, "CreateContainer")
    assert entry["request"]["config"]["image"]["image"] == digest
    status = kubelet.rt.ContainerStatus(
        cri.ContainerStatusRequest(container_id=container_id), timeout=10).status
    assert status.image.image == digest, "a digest is never prefixed"
    assert status.image_ref == digest


def test_create_container_in_an_unknown_prefixed_sandbox_reaches_its_runtime_as_not_found(
        cluster: Cluster, kubelet: Kubelet) -> None:
    marks = Marks(cluster)

    with pytest.raises(grpc.RpcError) as error:
        kubelet.create_container("alt", "alt__alt-sb-000000000000", image_of("alt", BUSYBOX))

    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert marks.only("alt", "CreateContainer")["request"]["pod_sandbox_id"] == \
        "alt-sb-000000000000"


# --- status codes --------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_not_found_keeps_its_code_and_the_runtimes_message(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    missing = id_of(runtime, f"{runtime}-ct-{unique('gone')}")
    marks = Marks(cluster)

    with pytest.raises(grpc.RpcError) as error:
        kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=missing), timeout=10)

    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == f"container {bare_id(runtime, missing)} not found"
    marks.only(runtime, "ContainerStatus")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_failed_precondition_keeps_its_code(cluster: Cluster, kubelet: Kubelet,
                                            runtime: str) -> None:
    _, container_id = kubelet.pod_with_container(runtime)
    kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=10)

    with pytest.raises(grpc.RpcError) as error:
        kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=container_id),
                                  timeout=10)

    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details() == \
        f"container {bare_id(runtime, container_id)} is not in created state"


# --- methods the table does not know; bytes that are not a request --------------------


@pytest.mark.parametrize("path", [
    RUNTIME_SERVICE + "NoSuchMethod",
    "/runtime.v1alpha2.RuntimeService/GetContainerEvents",  # v1-only
    "/runtime.v1alpha3.RuntimeService/Version",
    "/runtime.v1.ImageService/NoSuchMethod",
])
def test_unknown_methods_are_unimplemented_and_reach_no_runtime(
        cluster: Cluster, kubelet: Kubelet, path: str) -> None:
    marks = Marks(cluster)

    with pytest.raises(grpc.RpcError) as error:
        kubelet.raw(path)(b"", timeout=10)

    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert all(marks.new(name) == [] for name in RUNTIMES)


@pytest.mark.parametrize("method", ["Version", "PodSandboxStatus", "ListContainers",
                                    "RunPodSandbox"])
def test_garbage_request_bytes_are_invalid_argument_and_the_proxy_keeps_serving(
        cluster: Cluster, kubelet: Kubelet, method: str) -> None:
    marks = Marks(cluster)
    garbage = b"\x0a\xff\xff\x07not a protobuf"  # field 1, length far past the end

    with pytest.raises(grpc.RpcError) as error:
        kubelet.raw(RUNTIME_SERVICE + method)(garbage, timeout=10)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert marks.receivers(method) == []
    assert kubelet.rt.Version(cri.VersionRequest(), timeout=10).runtime_name == "primary"


def test_garbage_event_subscription_is_invalid_argument(cluster: Cluster,
                                                        kubelet: Kubelet) -> None:
    marks = Marks(cluster)
    subscribe = kubelet.channel.unary_stream(RUNTIME_SERVICE + "GetContainerEvents")

    with pytest.raises(grpc.RpcError) as error:
        list(subscribe(b"\x0a\xff\xff\x07not a protobuf", timeout=10))

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert marks.receivers("GetContainerEvents") == []


# --- unknown protobuf fields survive ---------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_unknown_fields_survive_the_trip_to_the_runtime(cluster: Cluster, kubelet: Kubelet,
                                                        runtime: str) -> None:
    sandbox_id = kubelet.run_pod(runtime)
    sent = cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id).SerializeToString() + \
        UNKNOWN_FIELD
    marks = Marks(cluster)

    answer = cri.PodSandboxStatusResponse.FromString(
        kubelet.raw(RUNTIME_SERVICE + "PodSandboxStatus")(sent, timeout=10))

    assert answer.status.id == sandbox_id
    received = raw_of(marks.only(runtime, "PodSandboxStatus"))
    expected = cri.PodSandboxStatusRequest(
        pod_sandbox_id=bare_id(runtime, sandbox_id)).SerializeToString() + UNKNOWN_FIELD
    assert received == expected
    if runtime == "primary":
        assert received == sent, "primary requests travel as the bytes kubelet sent"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_unknown_fields_in_nested_messages_survive(cluster: Cluster, kubelet: Kubelet,
                                                   runtime: str) -> None:
    _, container_id = kubelet.pod_with_container(runtime)
    nested = cri.ContainerFilter(id=container_id).SerializeToString() + UNKNOWN_FIELD
    sent = length_delimited(1, nested)  # ListContainersRequest.filter
    marks = Marks(cluster)

    answer = cri.ListContainersResponse.FromString(
        kubelet.raw(RUNTIME_SERVICE + "ListContainers")(sent, timeout=10))

    assert [c.id for c in answer.containers] == [container_id]
    received = raw_of(marks.only(runtime, "ListContainers"))
    bare = cri.ContainerFilter(id=bare_id(runtime, container_id)).SerializeToString()
    assert received == length_delimited(1, bare + UNKNOWN_FIELD)
