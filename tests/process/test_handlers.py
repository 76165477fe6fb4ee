"""RuntimeClass handlers: -runtimeHandlers routes pods and images by handler name."""
from __future__ import annotations

import subprocess
import sys
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import Cluster, start_cluster, stop_cluster

HANDLERS = "vm=vm.cloud:,kata=alt:kata-fc,gvisor=:runsc"
TARGET = "kubernetes.io/target-runtime"


@pytest.fixture(scope="module")
def mapped() -> Iterator[Cluster]:
    started = start_cluster("-runtimeHandlers", HANDLERS)
    yield started
    stop_cluster(started)


def _calls(cluster: Cluster, method: str) -> dict[str, list[dict]]:
    return {name: fake.entries(method) for name, fake in cluster.fakes.items()}


def _run_pod(cluster: Cluster, name: str, handler: str, annotations: dict | None = None) -> str:
    config = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name=name, uid=name),
                                  annotations=annotations or {})
    request = cri.RunPodSandboxRequest(config=config, runtime_handler=handler)
    return cluster.proxy.runtime_stub().RunPodSandbox(request).pod_sandbox_id


def _received(cluster: Cluster, runtime: str, method: str, pod: str) -> list[dict]:
    return [e["request"] for e in cluster.fakes[runtime].entries(method)
            if e["request"]["config"]["metadata"]["name"] == pod]


@pytest.mark.parametrize("handler, runtime, runtime_handler", [
    ("vm", "vm.cloud", None),          # renamed to the empty (default) handler
    ("kata", "alt", "kata-fc"),
    ("gvisor", "primary", "runsc"),    # the primary may be mapped too
    ("runc", "primary", "runc"),       # not in the map: primary, unchanged
])
def test_pods_follow_their_runtime_class_handler(mapped: Cluster, handler: str, runtime: str,
                                                 runtime_handler: str | None) -> None:
    pod = f"pod-{handler}"
    sandbox_id = _run_pod(mapped, pod, handler)
    assert sandbox_id.startswith(f"{runtime}__") == (runtime != "primary")
    received = _received(mapped, runtime, "RunPodSandbox", pod)
    assert [r.get("runtime_handler") for r in received] == [runtime_handler]
    others = [n for n in mapped.fakes if n != runtime]
    assert all(not _received(mapped, n, "RunPodSandbox", pod) for n in others)


def test_the_annotation_wins_over_the_handler(mapped: Cluster) -> None:
    sandbox_id = _run_pod(mapped, "pod-both", "vm", {TARGET: "alt"})
    assert sandbox_id.startswith("alt__")
    received = _received(mapped, "alt", "RunPodSandbox", "pod-both")
    assert [r.get("runtime_handler") for r in received] == ["vm"]
    assert not _received(mapped, "vm.cloud", "RunPodSandbox", "pod-both")


def test_images_follow_the_image_spec_handler(mapped: Cluster) -> None:
    images = mapped.proxy.image_stub()
    spec = cri.ImageSpec(image="example.org/app:1", runtime_handler="kata")
    pulled = images.PullImage(cri.PullImageRequest(image=spec))
    assert pulled.image_ref.startswith("sha256:")
    pulls = _calls(mapped, "PullImage")
    assert [e["request"]["image"] for e in pulls["alt"]][-1] == {
        "image": "example.org/app:1", "runtime_handler": "kata-fc"}
    assert not [e for e in pulls["primary"] + pulls["vm.cloud"]
                if e["request"]["image"]["image"] == "example.org/app:1"]
    status = images.ImageStatus(cri.ImageStatusRequest(image=spec))
    assert list(status.image.repo_tags) == ["alt/example.org/app:1"]
    images.RemoveImage(cri.RemoveImageRequest(image=spec))
    assert _calls(mapped, "RemoveImage")["alt"][-1]["request"]["image"]["image"] == \
        "example.org/app:1"


def test_container_image_of_the_pods_handler_needs_no_prefix(mapped: Cluster) -> None:
    sandbox_id = _run_pod(mapped, "pod-kata-ct", "kata")
    config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(
        image="docker.io/library/busybox:latest", runtime_handler="kata"))
    created = mapped.proxy.runtime_stub().CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sandbox_id, config=config))
    assert created.container_id.startswith("alt__")
    request = mapped.fakes["alt"].entries("CreateContainer")[-1]["request"]
    assert request["config"]["image"] == {"image": "docker.io/library/busybox:latest",
                                          "runtime_handler": "kata-fc"}


def test_container_image_of_another_handler_is_refused(mapped: Cluster) -> None:
    sandbox_id = _run_pod(mapped, "pod-kata-wrong", "kata")
    config = cri.ContainerConfig(image=cri.ImageSpec(image="busybox", runtime_handler="vm"))
    with pytest.raises(grpc.RpcError) as err:
        mapped.proxy.runtime_stub().CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "vm.cloud" in err.value.details()


def test_status_offers_every_mapped_handler(mapped: Cluster) -> None:
    status = mapped.proxy.runtime_stub().Status(cri.StatusRequest())
    assert {"vm", "kata", "gvisor"} <= {h.name for h in status.runtime_handlers}
    assert {c.type for c in status.status.conditions} == {"RuntimeReady", "NetworkReady"}


def test_a_handler_of_an_unknown_runtime_is_refused_at_start() -> None:
    proc = subprocess.run([sys.executable, "-m", "criproxy", "-connect", "/a,alt:/b",
                           "-runtimeHandlers", "vm=nowhere:"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "'vm=nowhere:'" in proc.stderr and "'nowhere'" in proc.stderr
