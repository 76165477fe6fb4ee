"""A stock kubelet's image calls for RuntimeClass pods: the images follow the pod.

kubelet names no handler in image calls (KUBELET.md): it sends the pod's
annotations (ImageStatus) and sandbox config (PullImage), then creates the
container from the image id with the plain name as `user_specified_image`.
Each test replays that sequence and reads on the fakes' journals where every
call landed.
"""
from __future__ import annotations

import dataclasses
import shutil
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from criproxy.record import recordfile
from tests.process.cluster import Cluster, start_cluster, stop_cluster
from tests.process.routing_util import TARGET, unique
from tests.support.harness import start_proxy

HANDLER = "althandler"
IMAGE = "registry.example/team/app:1"


@pytest.fixture(scope="module")
def mapped() -> Iterator[Cluster]:
    cluster = start_cluster("-runtimeHandlers", f"{HANDLER}=alt:")
    yield cluster
    stop_cluster(cluster)


@dataclasses.dataclass
class Pod:
    config: cri.PodSandboxConfig
    handler: str = ""
    sandbox_id: str = ""


def kubelet_pod(handler: str = "", annotations: dict[str, str] | None = None) -> Pod:
    """A pod config as kubelet makes it: its annotations identify it."""
    name = unique()
    every_pod = {"kubernetes.io/config.seen": f"2026-11-29T20:00:00.{name[-6:]}Z",
                 "kubernetes.io/config.source": "api"}
    return Pod(cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="img", uid=name + "-uid"),
        annotations={**every_pod, **(annotations or {})}), handler)


class Kubelet:
    def __init__(self, cluster: Cluster) -> None:
        channel = cluster.proxy.channel()
        self.rt = api_pb2_grpc.RuntimeServiceStub(channel)
        self.img = api_pb2_grpc.ImageServiceStub(channel)

    def run(self, pod: Pod) -> None:
        pod.sandbox_id = self.rt.RunPodSandbox(cri.RunPodSandboxRequest(
            config=pod.config, runtime_handler=pod.handler), timeout=10).pod_sandbox_id

    def ensure_image(self, pod: Pod, image: str) -> str:
        """kubelet's image manager: ImageStatus with the pod's annotations, then PullImage."""
        spec = cri.ImageSpec(image=image, annotations=pod.config.annotations)
        status = self.img.ImageStatus(cri.ImageStatusRequest(image=spec), timeout=10)
        if status.HasField("image"):
            return status.image.id
        return self.img.PullImage(cri.PullImageRequest(image=spec, sandbox_config=pod.config),
                                  timeout=10).image_ref

    def create(self, pod: Pod, image_id: str, name: str) -> str:
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=unique("c")),
            image=cri.ImageSpec(image=image_id, user_specified_image=name))
        return self.rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod.sandbox_id, config=config, sandbox_config=pod.config),
            timeout=10).container_id


def landed(cluster: Cluster, method: str, since: dict[str, int]) -> list[str]:
    """The runtimes that got `method` since the journal offsets `since`."""
    return [name for name, fake in cluster.fakes.items()
            for _entry in fake.entries(method)[since.get(f"{name}/{method}", 0):]]


def offsets(cluster: Cluster) -> dict[str, int]:
    return {f"{name}/{method}": len(fake.entries(method)) for name, fake in cluster.fakes.items()
            for method in ("ImageStatus", "PullImage", "CreateContainer")}


def kubelets_sequence(cluster: Cluster, pod: Pod, image: str) -> dict[str, list[str]]:
    kubelet = Kubelet(cluster)
    kubelet.run(pod)
    marks = offsets(cluster)
    image_id = kubelet.ensure_image(pod, image)
    kubelet.create(pod, image_id, image)
    return {m: landed(cluster, m, marks) for m in ("ImageStatus", "PullImage", "CreateContainer")}


def test_a_handler_placed_pods_images_go_to_its_runtime(mapped: Cluster) -> None:
    pod = kubelet_pod(HANDLER)
    image = unique("registry.example/app") + ":1"

    where = kubelets_sequence(mapped, pod, image)

    assert where == {"ImageStatus": ["alt"], "PullImage": ["alt"], "CreateContainer": ["alt"]}
    pulled = mapped.fakes["alt"].entries("PullImage")[-1]["request"]
    assert pulled["image"]["image"] == image, "a plain name passes unchanged"
    created = mapped.fakes["alt"].entries("CreateContainer")[-1]["request"]
    assert created["config"]["image"]["user_specified_image"] == image


def test_an_annotation_placed_pod_keeps_the_image_prefix_rule(mapped: Cluster) -> None:
    pod = kubelet_pod(annotations={TARGET: "alt"})
    image = unique("registry.example/app") + ":1"

    where = kubelets_sequence(mapped, pod, "alt/" + image)

    assert where == {"ImageStatus": ["alt"], "PullImage": ["alt"], "CreateContainer": ["alt"]}
    kubelet = Kubelet(mapped)
    with pytest.raises(grpc.RpcError) as refused:
        kubelet.create(pod, "sha256:" + "0" * 64, image)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "belongs to runtime primary" in refused.value.details()


def test_a_primary_pods_images_stay_on_the_primary(mapped: Cluster) -> None:
    where = kubelets_sequence(mapped, kubelet_pod(), unique("registry.example/app") + ":1")

    assert where == {"ImageStatus": ["primary"], "PullImage": ["primary"],
                     "CreateContainer": ["primary"]}


def test_a_name_with_another_runtimes_prefix_is_still_refused_in_a_handler_pod(
        mapped: Cluster) -> None:
    pod = kubelet_pod(HANDLER)
    Kubelet(mapped).run(pod)
    with pytest.raises(grpc.RpcError) as refused:
        Kubelet(mapped).create(pod, "vm.cloud/" + IMAGE, "vm.cloud/" + IMAGE)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "belongs to runtime vm.cloud" in refused.value.details()


def test_image_calls_without_pod_context_keep_the_prefix_rule(mapped: Cluster) -> None:
    kubelet = Kubelet(mapped)
    marks = offsets(mapped)
    stranger = {"kubernetes.io/config.seen": "never", "kubernetes.io/config.source": "api"}

    kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=IMAGE)), timeout=10)
    kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(
        image=IMAGE, annotations=stranger)), timeout=10)
    kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(
        image=IMAGE, runtime_handler=HANDLER)), timeout=10)

    assert landed(mapped, "ImageStatus", marks) == ["primary", "primary", "alt"]


def test_image_gc_by_id_removes_it_where_it_is(mapped: Cluster) -> None:
    pod = kubelet_pod(HANDLER)
    image = unique("registry.example/gc") + ":1"
    kubelet = Kubelet(mapped)
    kubelet.run(pod)
    image_id = kubelet.ensure_image(pod, image)
    listed = kubelet.img.ListImages(cri.ListImagesRequest(), timeout=10).images
    assert [i.repo_tags for i in listed if i.id == image_id] == [["alt/" + image]]

    kubelet.img.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=image_id)),
                            timeout=10)

    listed = kubelet.img.ListImages(cri.ListImagesRequest(), timeout=10).images
    assert image_id not in {i.id for i in listed}


@pytest.mark.parametrize("keep_record_files", [True, False])
def test_a_restart_between_run_and_pull_keeps_the_pods_runtime(keep_record_files: bool) -> None:
    """The pod's runtime comes from the record file, or, when the runtime dir was
    lost, from the runtimes' own answers."""
    cluster = start_cluster("-runtimeHandlers", f"{HANDLER}=alt:")
    try:
        pod = kubelet_pod(HANDLER)
        Kubelet(cluster).run(pod)
        cluster.proxy.stop()
        if not keep_record_files:
            for name in ("", "alt", "vm.cloud"):
                recordfile.record_path(str(cluster.proxy.rundir), name).unlink(missing_ok=True)
        cluster.proxy = start_proxy(
            f"{cluster.fakes['primary'].socket},alt:{cluster.fakes['alt'].socket},"
            f"vm.cloud:{cluster.fakes['vm.cloud'].socket}", "-runtimeHandlers", f"{HANDLER}=alt:",
            workdir=cluster.base, wait_for=list(cluster.fakes))
        marks = offsets(cluster)
        kubelet = Kubelet(cluster)
        image = unique("registry.example/app") + ":1"

        kubelet.create(pod, kubelet.ensure_image(pod, image), image)

        assert {m: landed(cluster, m, marks) for m in ("ImageStatus", "PullImage",
                                                      "CreateContainer")} == {
            "ImageStatus": ["alt"], "PullImage": ["alt"], "CreateContainer": ["alt"]}
    finally:
        stop_cluster(cluster)
