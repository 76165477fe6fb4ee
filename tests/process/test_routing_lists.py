"""ROUTING.md, List calls and image calls.

Lists go to every runtime and are merged in -connect order, each item
prefixed by its runtime; a filter naming one runtime's object goes to that
runtime only, unprefixed. Image calls go by the image prefix; digests are
never prefixed.
"""
from __future__ import annotations

from typing import Callable

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from google.protobuf.message import Message

from tests.process.cluster import Cluster
from tests.process.routing_util import (BUSYBOX, NAMED, PAUSE, RUNTIMES, Kubelet, Marks, bare_id,
                                digest_of, image_of, owner_of_id, owner_of_image, raw_of,
                                unique)
from tests.support.fakestate import make_image

ORDER = {name: index for index, name in enumerate(RUNTIMES)}


@pytest.fixture
def kubelet(cluster: Cluster) -> Kubelet:
    return Kubelet(cluster)


@pytest.fixture
def pods(kubelet: Kubelet) -> dict[str, tuple[str, str]]:
    """A fresh (sandbox id, container id) on every runtime, as kubelet sees them."""
    return {runtime: kubelet.pod_with_container(runtime) for runtime in RUNTIMES}


def assert_merged_in_connect_order(ids: list[str], kind: str) -> None:
    """Every id is prefixed by the runtime that made it; runtimes come in -connect order."""
    owners = [owner_of_id(i) for i in ids]
    for shown, owner in zip(ids, owners):
        assert bare_id(owner, shown).startswith(f"{owner}-{kind}-"), shown
    assert owners == sorted(owners, key=ORDER.__getitem__), owners


def assert_fanned_out(marks: Marks, method: str, request: Message) -> None:
    assert marks.receivers(method) == list(RUNTIMES)
    for runtime in RUNTIMES:
        [entry] = marks.new(runtime, method)
        assert raw_of(entry) == request.SerializeToString()


# --- unfiltered lists: every runtime, merged -------------------------------------------


def test_list_pod_sandbox_merges_every_runtime(cluster: Cluster, kubelet: Kubelet,
                                               pods: dict[str, tuple[str, str]]) -> None:
    request = cri.ListPodSandboxRequest()
    marks = Marks(cluster)

    items = kubelet.rt.ListPodSandbox(request, timeout=10).items

    assert_fanned_out(marks, "ListPodSandbox", request)
    ids = [item.id for item in items]
    assert {sandbox for sandbox, _ in pods.values()} <= set(ids)
    assert_merged_in_connect_order(ids, "sb")


def test_list_containers_merges_every_runtime(cluster: Cluster, kubelet: Kubelet,
                                              pods: dict[str, tuple[str, str]]) -> None:
    request = cri.ListContainersRequest()
    marks = Marks(cluster)

    containers = kubelet.rt.ListContainers(request, timeout=10).containers

    assert_fanned_out(marks, "ListContainers", request)
    assert_merged_in_connect_order([c.id for c in containers], "ct")
    by_id = {c.id: c for c in containers}
    for runtime, (sandbox_id, container_id) in pods.items():
        container = by_id[container_id]
        assert container.pod_sandbox_id == sandbox_id
        assert container.image.image == image_of(runtime, BUSYBOX)
        assert container.image_ref == container.image_id == digest_of(BUSYBOX)


def test_list_container_stats_merges_every_runtime(cluster: Cluster, kubelet: Kubelet,
                                                   pods: dict[str, tuple[str, str]]) -> None:
    request = cri.ListContainerStatsRequest()
    marks = Marks(cluster)

    stats = kubelet.rt.ListContainerStats(request, timeout=10).stats

    assert_fanned_out(marks, "ListContainerStats", request)
    ids = [s.attributes.id for s in stats]
    assert {container for _, container in pods.values()} <= set(ids)
    assert_merged_in_connect_order(ids, "ct")


def test_list_pod_sandbox_stats_merges_every_runtime(cluster: Cluster, kubelet: Kubelet,
                                                     pods: dict[str, tuple[str, str]]) -> None:
    request = cri.ListPodSandboxStatsRequest()
    marks = Marks(cluster)

    stats = kubelet.rt.ListPodSandboxStats(request, timeout=10).stats

    assert_fanned_out(marks, "ListPodSandboxStats", request)
    ids = [s.attributes.id for s in stats]
    assert_merged_in_connect_order(ids, "sb")
    by_id = {s.attributes.id: s for s in stats}
    for sandbox_id, container_id in pods.values():
        assert [c.attributes.id for c in by_id[sandbox_id].linux.containers] == [container_id]


def test_list_pod_sandbox_metrics_merges_every_runtime(cluster: Cluster, kubelet: Kubelet,
                                                       pods: dict[str, tuple[str, str]]) -> None:
    request = cri.ListPodSandboxMetricsRequest()
    marks = Marks(cluster)

    metrics = kubelet.rt.ListPodSandboxMetrics(request, timeout=10).pod_metrics

    assert_fanned_out(marks, "ListPodSandboxMetrics", request)
    ids = [m.pod_sandbox_id for m in metrics]
    assert_merged_in_connect_order(ids, "sb")
    by_id = {m.pod_sandbox_id: m for m in metrics}
    for sandbox_id, container_id in pods.values():
        assert [c.container_id for c in by_id[sandbox_id].container_metrics] == [container_id]


def test_list_metric_descriptors_merges_every_runtime(cluster: Cluster,
                                                      kubelet: Kubelet) -> None:
    request = cri.ListMetricDescriptorsRequest()
    marks = Marks(cluster)

    descriptors = kubelet.rt.ListMetricDescriptors(request, timeout=10).descriptors

    assert_fanned_out(marks, "ListMetricDescriptors", request)
    assert [d.name for d in descriptors] == ["container_cpu_usage_seconds_total"] * 3


def test_image_fs_info_merges_every_runtime_in_connect_order(cluster: Cluster,
                                                             kubelet: Kubelet) -> None:
    request = cri.ImageFsInfoRequest()
    marks = Marks(cluster)

    answer = kubelet.img.ImageFsInfo(request, timeout=10)

    assert_fanned_out(marks, "ImageFsInfo", request)
    expected = [f"/var/lib/{runtime}" for runtime in RUNTIMES]
    assert [fs.fs_id.mountpoint for fs in answer.image_filesystems] == expected
    assert [fs.fs_id.mountpoint for fs in answer.container_filesystems] == expected


def test_list_images_merges_every_runtime_with_prefixed_names(cluster: Cluster,
                                                              kubelet: Kubelet) -> None:
    request = cri.ListImagesRequest()
    marks = Marks(cluster)

    images = kubelet.img.ListImages(request, timeout=10).images

    assert_fanned_out(marks, "ListImages", request)
    owners = [owner_of_image((list(image.repo_tags) + list(image.repo_digests))[0])
              for image in images]
    assert owners == sorted(owners, key=ORDER.__getitem__), owners
    for runtime in RUNTIMES:
        [busybox] = [i for i in images if i.repo_tags == [image_of(runtime, BUSYBOX)]]
        assert busybox.id == digest_of(BUSYBOX), "image ids are digests: never prefixed"
        [repo_digest] = busybox.repo_digests
        repo, _, digest = repo_digest.partition("@")
        assert repo == image_of(runtime, "docker.io/library/busybox"), "repo part prefixed"
        assert digest.startswith("sha256:") and "/" not in digest
        assert any(i.repo_tags == [image_of(runtime, PAUSE)] for i in images)


# --- filtered lists: the runtime the filter names, unprefixed -------------------------

FilterCall = Callable[[str, str], Message]  # (sandbox id, container id) -> request
FILTERS: dict[str, tuple[str, FilterCall]] = {
    "ListPodSandbox by id": ("ListPodSandbox", lambda sb, ct: cri.ListPodSandboxRequest(
        filter=cri.PodSandboxFilter(id=sb))),
    "ListContainers by id": ("ListContainers", lambda sb, ct: cri.ListContainersRequest(
        filter=cri.ContainerFilter(id=ct))),
    "ListContainers by sandbox": ("ListContainers", lambda sb, ct: cri.ListContainersRequest(
        filter=cri.ContainerFilter(pod_sandbox_id=sb))),
    "ListContainerStats by id": ("ListContainerStats",
                                 lambda sb, ct: cri.ListContainerStatsRequest(
                                     filter=cri.ContainerStatsFilter(id=ct))),
    "ListContainerStats by sandbox": ("ListContainerStats",
                                      lambda sb, ct: cri.ListContainerStatsRequest(
                                          filter=cri.ContainerStatsFilter(pod_sandbox_id=sb))),
    "ListPodSandboxStats by id": ("ListPodSandboxStats",
                                  lambda sb, ct: cri.ListPodSandboxStatsRequest(
                                      filter=cri.PodSandboxStatsFilter(id=sb))),
}


def _listed_ids(method: str, answer: Message) -> list[str]:
    if method == "ListPodSandbox":
        return [i.id for i in answer.items]
    if method == "ListContainers":
        return [c.id for c in answer.containers]
    return [s.attributes.id for s in answer.stats]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", list(FILTERS))
def test_a_filter_naming_one_runtimes_object_goes_to_that_runtime_only(
        cluster: Cluster, kubelet: Kubelet, case: str, runtime: str) -> None:
    method, build = FILTERS[case]
    sandbox_id, container_id = kubelet.pod_with_container(runtime)
    marks = Marks(cluster)

    answer = getattr(kubelet.rt, method)(build(sandbox_id, container_id), timeout=10)

    entry = marks.only(runtime, method)
    assert raw_of(entry) == build(bare_id(runtime, sandbox_id),
                                  bare_id(runtime, container_id)).SerializeToString()
    expected = sandbox_id if method in ("ListPodSandbox", "ListPodSandboxStats") else container_id
    assert _listed_ids(method, answer) == [expected]


def test_a_label_selector_alone_goes_to_every_runtime(cluster: Cluster, kubelet: Kubelet) -> None:
    label = {"routing-test": unique("label")}
    sandboxes = [kubelet.run_pod(runtime, labels=label) for runtime in RUNTIMES]
    request = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector=label))
    marks = Marks(cluster)

    items = kubelet.rt.ListPodSandbox(request, timeout=10).items

    assert_fanned_out(marks, "ListPodSandbox", request)
    assert [i.id for i in items] == sandboxes


def test_a_filter_naming_objects_of_two_runtimes_matches_nothing(
        cluster: Cluster, kubelet: Kubelet, pods: dict[str, tuple[str, str]]) -> None:
    alt_sandbox, _ = pods["alt"]
    _, primary_container = pods["primary"]
    request = cri.ListContainersRequest(
        filter=cri.ContainerFilter(id=primary_container, pod_sandbox_id=alt_sandbox))
    marks = Marks(cluster)

    assert list(kubelet.rt.ListContainers(request, timeout=10).containers) == []
    assert marks.receivers("ListContainers") == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_list_images_filtered_by_image_goes_to_its_runtime_only(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    bare = f"quay.io/routing/{unique('img')}:1"
    kubelet.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image_of(runtime, bare))),
                          timeout=10)
    marks = Marks(cluster)

    images = kubelet.img.ListImages(cri.ListImagesRequest(
        filter=cri.ImageFilter(image=cri.ImageSpec(image=image_of(runtime, bare)))),
        timeout=10).images

    entry = marks.only(runtime, "ListImages")
    assert entry["request"]["filter"]["image"]["image"] == bare
    assert [(i.id, list(i.repo_tags)) for i in images] == [(digest_of(bare),
                                                            [image_of(runtime, bare)])]


# --- ImageStatus, PullImage, RemoveImage: by image prefix -----------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pull_image_goes_to_the_runtime_of_the_image_prefix(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    bare = f"quay.io/routing/{unique('pull')}:2"
    marks = Marks(cluster)

    answer = kubelet.img.PullImage(cri.PullImageRequest(
        image=cri.ImageSpec(image=image_of(runtime, bare))), timeout=10)

    entry = marks.only(runtime, "PullImage")
    assert entry["request"]["image"]["image"] == bare
    assert answer.image_ref == digest_of(bare), "the digest answered is never prefixed"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_image_status_goes_to_the_runtime_of_the_image_prefix(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    bare = f"quay.io/routing/{unique('status')}:3"
    kubelet.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image_of(runtime, bare))),
                          timeout=10)
    marks = Marks(cluster)

    answer = kubelet.img.ImageStatus(cri.ImageStatusRequest(
        image=cri.ImageSpec(image=image_of(runtime, bare)), verbose=True), timeout=10)

    entry = marks.only(runtime, "ImageStatus")
    assert entry["request"]["image"]["image"] == bare
    image = answer.image
    assert image.id == digest_of(bare)
    assert list(image.repo_tags) == [image_of(runtime, bare)]
    [repo_digest] = image.repo_digests
    assert repo_digest == image_of(runtime, bare.rsplit(":", 1)[0]) + "@" + \
        repo_digest.partition("@")[2]
    assert repo_digest.partition("@")[2].startswith("sha256:")
    assert answer.info["name"] == runtime


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_image_status_by_prefixed_repo_digest_goes_to_its_runtime(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    [repo_digest] = make_image(BUSYBOX).repo_digests
    marks = Marks(cluster)

    image = kubelet.img.ImageStatus(cri.ImageStatusRequest(
        image=cri.ImageSpec(image=image_of(runtime, repo_digest))), timeout=10).image

    assert marks.only(runtime, "ImageStatus")["request"]["image"]["image"] == repo_digest
    assert list(image.repo_digests) == [image_of(runtime, repo_digest)]
    assert image.id == digest_of(BUSYBOX)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_remove_image_goes_to_the_runtime_of_the_image_prefix(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    bare = f"quay.io/routing/{unique('rm')}:4"
    shown = image_of(runtime, bare)
    kubelet.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=shown)), timeout=10)
    marks = Marks(cluster)

    kubelet.img.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=shown)), timeout=10)

    assert marks.only(runtime, "RemoveImage")["request"]["image"]["image"] == bare
    after = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=shown)),
                                    timeout=10)
    assert not after.HasField("image")


@pytest.mark.parametrize("runtime", NAMED)
def test_image_status_of_a_bare_digest_finds_the_runtime_that_has_it(
        cluster: Cluster, kubelet: Kubelet, runtime: str) -> None:
    bare = f"quay.io/routing/{unique('digest')}:5"
    kubelet.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image_of(runtime, bare))),
                          timeout=10)
    digest = digest_of(bare)
    marks = Marks(cluster)

    image = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=digest)),
                                    timeout=10).image

    assert image.id == digest
    assert list(image.repo_tags) == [image_of(runtime, bare)]
    entries = marks.new(runtime, "ImageStatus")
    assert [e["request"]["image"]["image"] for e in entries] == [digest], "digest unprefixed"


def test_image_status_of_a_digest_no_runtime_has_is_empty(cluster: Cluster,
                                                          kubelet: Kubelet) -> None:
    digest = digest_of(unique("nowhere"))

    answer = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=digest)),
                                     timeout=10)

    assert not answer.HasField("image")


def test_remove_image_by_digest_removes_it_where_it_is(cluster: Cluster,
                                                       kubelet: Kubelet) -> None:
    bare = f"quay.io/routing/{unique('rmdigest')}:6"
    shown = image_of("vm.cloud", bare)
    kubelet.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=shown)), timeout=10)
    marks = Marks(cluster)

    kubelet.img.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=digest_of(bare))),
                            timeout=10)

    assert [e["request"]["image"]["image"] for e in marks.new("vm.cloud", "RemoveImage")] == \
        [digest_of(bare)]
    after = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=shown)),
                                    timeout=10)
    assert not after.HasField("image")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pull_image_errors_keep_their_code_and_message(cluster: Cluster, kubelet: Kubelet,
                                                       runtime: str) -> None:
    marks = Marks(cluster)

    with pytest.raises(grpc.RpcError) as error:
        kubelet.img.PullImage(cri.PullImageRequest(
            image=cri.ImageSpec(image=image_of(runtime, "missing/nothing:1"))), timeout=10)

    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "image not found in registry"
    assert marks.only(runtime, "PullImage")["request"]["image"]["image"] == "missing/nothing:1"
