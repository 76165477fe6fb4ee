"""Prove the fake runtime behaves, by talking to its process over its socket."""

from __future__ import annotations

import base64
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

from tests.support.fakeruntime import CRI_METHODS, GRPC_OPTIONS, FakeRuntime, start_fake
from tests.support.fakestate import make_image

BUSYBOX = "docker.io/library/busybox:latest"


class Client:
    def __init__(self, fake: FakeRuntime) -> None:
        self.channel = grpc.insecure_channel(fake.address, options=GRPC_OPTIONS)
        self.runtime = cri_grpc.RuntimeServiceStub(self.channel)
        self.images = cri_grpc.ImageServiceStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close()


# Shared by the tests below that don't inspect the journal, to keep the suite fast.
@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRuntime]:
    runtime = start_fake(tmp_path_factory.mktemp("fake"), "alpha", "--url-base", "http://fake:1")
    yield runtime
    runtime.stop()


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[Callable[..., FakeRuntime]]:
    """Start private fakes (fresh journal, own flags) that are stopped even if the test fails."""
    started: list[FakeRuntime] = []

    def start(name: str, *extra_args: str) -> FakeRuntime:
        started.append(start_fake(tmp_path, name, *extra_args))
        return started[-1]

    yield start
    for runtime in started:
        runtime.stop()


@pytest.fixture
def own_fake(fakes: Callable[..., FakeRuntime]) -> FakeRuntime:
    return fakes("solo")


@pytest.fixture
def client(fake: FakeRuntime) -> Iterator[Client]:
    with Client(fake) as c:
        yield c


def run_pod(client: Client, name: str = "pod", labels: dict[str, str] | None = None) -> str:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=name + "-uid"), labels=labels or {}
    )
    return client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler="runc")).pod_sandbox_id


def create_container(client: Client, sandbox_id: str, image: str = BUSYBOX, name: str = "ctr") -> str:
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name),
        image=cri.ImageSpec(image=image),
        labels={"app": name},
        log_path=f"{name}.log",
    )
    request = cri.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config)
    return client.runtime.CreateContainer(request).container_id


def test_version_is_journaled_with_raw_bytes(own_fake: FakeRuntime) -> None:
    assert own_fake.entries() == [], "readiness probing must not show up in the journal"

    with Client(own_fake) as client:
        version = client.runtime.Version(cri.VersionRequest(version="v1"))

    assert (version.runtime_name, version.runtime_api_version) == ("solo", "v1")
    [entry] = own_fake.entries()
    assert entry["method"] == "Version"
    assert entry["request"] == {"version": "v1"}
    assert base64.b64decode(entry["raw_b64"]) == cri.VersionRequest(version="v1").SerializeToString()
    assert abs(entry["time"] - time.time()) < 5


def test_unknown_fields_and_methods_are_journaled(own_fake: FakeRuntime) -> None:
    unknown_field = b"\xa8\x1f\x07"  # field 500, varint 7: not in VersionRequest
    with Client(own_fake) as client:
        raw_call = client.channel.unary_unary("/runtime.v1.RuntimeService/Version")
        raw_call(cri.VersionRequest(version="v1").SerializeToString() + unknown_field)
        alpha_call = client.channel.unary_unary("/runtime.v1alpha2.RuntimeService/Version")
        with pytest.raises(grpc.RpcError) as error:
            alpha_call(b"")

    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    version, alpha = own_fake.entries()
    assert base64.b64decode(version["raw_b64"]).endswith(unknown_field)
    assert alpha["method"] == "/runtime.v1alpha2.RuntimeService/Version"
    assert alpha["request"] is None


def test_sandbox_and_container_lifecycle(client: Client) -> None:
    rt = client.runtime
    sandbox_id = run_pod(client, labels={"tier": "web"})
    run_pod(client, "other")
    container_id = create_container(client, sandbox_id)
    rt.StartContainer(cri.StartContainerRequest(container_id=container_id))

    assert sandbox_id.startswith("alpha-sb-") and container_id.startswith("alpha-ct-")
    by_label = rt.ListPodSandbox(cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector={"tier": "web"})))
    assert [s.id for s in by_label.items] == [sandbox_id]
    status = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id)).status
    assert status.state == cri.CONTAINER_RUNNING
    assert status.image.image == BUSYBOX
    assert status.image_ref == status.image_id == make_image(BUSYBOX).id
    exec_sync = rt.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=["echo", "hi"]))
    assert exec_sync.stdout == b"echo hi\n"
    assert rt.Exec(cri.ExecRequest(container_id=container_id)).url.startswith("http://fake:1/cri/exec/")

    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    exited = cri.ContainerFilter(pod_sandbox_id=sandbox_id, state=cri.ContainerStateValue(state=cri.CONTAINER_EXITED))
    assert [c.id for c in rt.ListContainers(cri.ListContainersRequest(filter=exited)).containers] == [container_id]

    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    in_sandbox = cri.ContainerFilter(pod_sandbox_id=sandbox_id)
    assert rt.ListContainers(cri.ListContainersRequest(filter=in_sandbox)).containers == []
    with pytest.raises(grpc.RpcError) as error:
        rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == f"pod sandbox {sandbox_id} not found"


def test_images(client: Client) -> None:
    images = client.images

    def image_ids() -> set[str]:
        return {image.id for image in images.ListImages(cri.ListImagesRequest()).images}

    preloaded = image_ids()
    assert {make_image(BUSYBOX).id, make_image("registry.k8s.io/pause:3.9").id} <= preloaded
    assert not images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image="nope:1"))).HasField("image")

    ref = images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="quay.io/x/y:2"))).image_ref
    pulled = images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))).image
    assert pulled.repo_tags == ["quay.io/x/y:2"]
    with pytest.raises(grpc.RpcError) as error:
        images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="missing/z:1")))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image="quay.io/x/y:2")))
    images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image="quay.io/x/y:2")))
    assert image_ids() == preloaded
    fs = images.ImageFsInfo(cri.ImageFsInfoRequest())
    assert fs.image_filesystems[0].fs_id.mountpoint == "/var/lib/alpha"


def test_every_cri_method_is_implemented(client: Client) -> None:
    for path, method in CRI_METHODS.items():
        if method.streaming:
            continue
        call = client.channel.unary_unary(path)
        try:
            call(b"", timeout=5)
        except grpc.RpcError as error:
            # Empty requests may legitimately be refused; UNIMPLEMENTED or UNKNOWN would be a gap.
            assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (
                method.name,
                error.details(),
            )


def test_events_stream_and_unsubscribe_on_cancel(client: Client) -> None:
    def subscribers() -> str:
        return client.runtime.Status(cri.StatusRequest(verbose=True)).info["event_subscribers"]

    stream = client.runtime.GetContainerEvents(cri.GetEventsRequest())
    deadline = time.monotonic() + 5
    while subscribers() != "1" and time.monotonic() < deadline:
        time.sleep(0.01)
    sandbox_id = run_pod(client)
    container_id = create_container(client, sandbox_id)

    event = next(stream)
    stream.cancel()

    assert event.container_event_type == cri.CONTAINER_CREATED_EVENT
    assert event.container_id == container_id
    assert event.pod_sandbox_status.id == sandbox_id
    assert [s.id for s in event.containers_statuses] == [container_id]
    while subscribers() != "0" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert subscribers() == "0"


def test_large_messages(client: Client) -> None:
    container_id = create_container(client, run_pod(client))
    big = "x" * (17 * 1024 * 1024)

    answer = client.runtime.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=[big]))

    assert len(answer.stdout) == len(big) + 1


def test_fail_and_delay_flags(fakes: Callable[..., FakeRuntime]) -> None:
    fake = fakes(
        "beta",
        "--fail", "UpdateRuntimeConfig=NOT_FOUND:gone: really",
        "--fail", "Status=14:down",
        "--delay", "Version=0.5",
    )
    with Client(fake) as client:
        with pytest.raises(grpc.RpcError) as error:
            client.runtime.UpdateRuntimeConfig(cri.UpdateRuntimeConfigRequest())
        assert (error.value.code(), error.value.details()) == (grpc.StatusCode.NOT_FOUND, "gone: really")
        with pytest.raises(grpc.RpcError) as error:
            client.runtime.Status(cri.StatusRequest())
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE

        started = time.monotonic()
        slow = client.runtime.Version.future(cri.VersionRequest())
        client.runtime.RuntimeConfig(cri.RuntimeConfigRequest())
        assert time.monotonic() - started < 0.4, "a delayed call must not block others"
        assert slow.result(timeout=5).runtime_name == "beta"
        assert time.monotonic() - started >= 0.5

    methods = [e["method"] for e in fake.entries()]
    assert methods[:2] == ["UpdateRuntimeConfig", "Status"], "failed calls are journaled too"
    assert sorted(methods[2:]) == ["RuntimeConfig", "Version"]


def test_restart_after_sigkill_and_clean_sigterm(fakes: Callable[..., FakeRuntime]) -> None:
    first = fakes("gamma")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    assert first.socket.exists(), "a killed runtime leaves its socket behind"

    second = fakes("gamma")
    with Client(second) as client:
        assert client.runtime.Version(cri.VersionRequest()).runtime_name == "gamma"

    assert second.stop() == 0
    assert not second.socket.exists()


def test_stop_works_on_a_sigstopped_runtime(fakes: Callable[..., FakeRuntime]) -> None:
    fake = fakes("delta")
    fake.proc.send_signal(signal.SIGSTOP)
    stopper = threading.Thread(target=fake.stop)
    stopper.start()
    stopper.join(timeout=5)
    assert fake.proc.returncode == 0


def test_stats_and_metrics(client: Client) -> None:
    rt = client.runtime
    sandbox_id = run_pod(client, "stats")
    container_id = create_container(client, sandbox_id, name="stats")

    by_sandbox = cri.ContainerStatsFilter(pod_sandbox_id=sandbox_id)
    [stats] = rt.ListContainerStats(cri.ListContainerStatsRequest(filter=by_sandbox)).stats
    assert stats.attributes.id == container_id and stats.cpu.usage_core_nano_seconds.value > 0
    pod_stats = rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id)).stats
    assert pod_stats.attributes.metadata.name == "stats" and pod_stats.linux.cpu.usage_core_nano_seconds.value > 0
    metrics = rt.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest()).pod_metrics
    [mine] = [m for m in metrics if m.pod_sandbox_id == sandbox_id]
    assert [c.container_id for c in mine.container_metrics] == [container_id]
    port_forward = rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=sandbox_id))
    assert port_forward.url.startswith("http://fake:1/cri/portforward/")
