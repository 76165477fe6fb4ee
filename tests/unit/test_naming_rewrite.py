"""Unit tests: prefixes on ids and images, and rewriting whole CRI messages."""
from __future__ import annotations

import pytest
from cri_api.v1 import api_pb2 as cri

from criproxy.front.naming import Names, is_digest, prefix_id, prefix_image
from criproxy.front.rewrite import ForeignObject, add_prefixes, owners, strip_prefixes

DIGEST = "sha256:" + "ab" * 32
NAMES = Names(["", "alt", "virtlet.cloud"])


@pytest.mark.parametrize("value, expected", [
    ("alt__abc", ("alt", "abc")),
    ("abc", ("", "abc")),
    ("other__abc", ("", "other__abc")),
    ("alt__", ("alt", "")),
    ("alt__alt__x", ("alt", "alt__x")),
    ("", ("", "")),
])
def test_split_id(value: str, expected: tuple[str, str]) -> None:
    assert NAMES.split_id(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("virtlet.cloud/image-service/cirros", ("virtlet.cloud", "image-service/cirros")),
    ("docker.io/library/busybox", ("", "docker.io/library/busybox")),
    ("busybox", ("", "busybox")),
    (DIGEST, (None, DIGEST)),
    ("alt/repo@" + DIGEST, ("alt", "repo@" + DIGEST)),
])
def test_split_image(value: str, expected: tuple) -> None:
    assert NAMES.split_image(value) == expected


def test_digests_are_never_prefixed() -> None:
    assert is_digest(DIGEST) and not is_digest("busybox:latest")
    assert prefix_image("alt", DIGEST) == DIGEST
    assert prefix_image("alt", "repo@" + DIGEST) == "alt/repo@" + DIGEST


def test_primary_objects_are_not_prefixed() -> None:
    assert prefix_id("", "x") == "x" and prefix_image("", "busybox") == "busybox"
    assert prefix_id("alt", "") == ""


def _container_status() -> cri.ContainerStatusResponse:
    return cri.ContainerStatusResponse(status=cri.ContainerStatus(
        id="c1", image=cri.ImageSpec(image="busybox", user_specified_image="busybox"),
        image_ref="docker.io/library/busybox@" + DIGEST, image_id=DIGEST,
        labels={"id": "keep-me"}))


def test_add_prefixes_rewrites_ids_and_images_but_not_digests_or_labels() -> None:
    response = _container_status()
    add_prefixes(response, "alt")
    status = response.status
    assert status.id == "alt__c1"
    assert status.image.image == "alt/busybox"
    assert status.image.user_specified_image == "alt/busybox"
    assert status.image_ref == "alt/docker.io/library/busybox@" + DIGEST
    assert status.image_id == DIGEST
    assert status.labels["id"] == "keep-me"


def test_add_prefixes_for_primary_changes_nothing() -> None:
    response = _container_status()
    add_prefixes(response, "")
    assert response == _container_status()


def test_image_ids_and_tags_in_image_lists() -> None:
    response = cri.ListImagesResponse(images=[cri.Image(
        id=DIGEST, repo_tags=["busybox:1"], repo_digests=["busybox@" + DIGEST])])
    add_prefixes(response, "alt")
    image = response.images[0]
    assert (image.id, list(image.repo_tags), list(image.repo_digests)) == (
        DIGEST, ["alt/busybox:1"], ["alt/busybox@" + DIGEST])


def test_nested_ids_in_events_are_prefixed() -> None:
    event = cri.ContainerEventResponse(
        container_id="c1", pod_sandbox_status=cri.PodSandboxStatus(id="s1"),
        containers_statuses=[cri.ContainerStatus(id="c1")])
    add_prefixes(event, "alt")
    assert event.container_id == "alt__c1"
    assert event.pod_sandbox_status.id == "alt__s1"
    assert event.containers_statuses[0].id == "alt__c1"


def test_strip_prefixes_of_a_create_request() -> None:
    request = cri.CreateContainerRequest(
        pod_sandbox_id="alt__s1", config=cri.ContainerConfig(image=cri.ImageSpec(image="alt/busybox")))
    strip_prefixes(request, "alt", NAMES)
    assert request.pod_sandbox_id == "s1" and request.config.image.image == "busybox"


def test_strip_prefixes_refuses_another_runtimes_image() -> None:
    request = cri.CreateContainerRequest(
        pod_sandbox_id="alt__s1", config=cri.ContainerConfig(image=cri.ImageSpec(image="busybox")))
    with pytest.raises(ForeignObject) as err:
        strip_prefixes(request, "alt", NAMES)
    assert (err.value.field, err.value.value, err.value.owner) == ("image", "busybox", "")


def test_strip_prefixes_accepts_a_digest_anywhere() -> None:
    request = cri.CreateContainerRequest(
        pod_sandbox_id="alt__s1", config=cri.ContainerConfig(image=cri.ImageSpec(image=DIGEST)))
    strip_prefixes(request, "alt", NAMES)
    assert request.config.image.image == DIGEST


def test_namespace_target_ids_are_ids_too() -> None:
    request = cri.CreateContainerRequest(pod_sandbox_id="alt__s1", config=cri.ContainerConfig(
        linux=cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
            namespace_options=cri.NamespaceOption(target_id="alt__c0")))))
    strip_prefixes(request, "alt", NAMES)
    assert request.config.linux.security_context.namespace_options.target_id == "c0"


def test_owners_of_list_filters() -> None:
    assert owners(cri.ListContainersRequest(), NAMES) == set()
    assert owners(cri.ListContainersRequest(filter=cri.ContainerFilter(id="alt__c")), NAMES) == {"alt"}
    assert owners(cri.ListContainersRequest(filter=cri.ContainerFilter(
        id="alt__c", pod_sandbox_id="s")), NAMES) == {"alt", ""}
    assert owners(cri.ListImagesRequest(filter=cri.ImageFilter(
        image=cri.ImageSpec(image=DIGEST))), NAMES) == set()


def test_a_name_ending_in_an_underscore_owns_its_ids() -> None:
    """`x_` shows id `abc` as `x___abc` (found by fuzz/target_requests.py: every
    call by id of such a runtime went to the primary)."""
    names = Names(["", "x_", "_y"])
    for runtime in ("x_", "_y"):
        for bare in ("abc", "_abc", "a__b", ""):
            assert names.split_id(prefix_id(runtime, bare) if bare else runtime + "__") == \
                (runtime, bare)
    assert names.split_id("x__abc") == ("", "x__abc")  # no runtime `x`


def test_empty_strings_in_repeated_fields_are_left_alone() -> None:
    """As in singular fields: an empty repo tag is nobody's (found by
    fuzz/target_answers.py: stripping a prefixed Image refused its empty tag as
    the primary's, so strip did not undo add)."""
    image = cri.Image(id="sha256:" + "a" * 64, repo_tags=["", "busybox:1"], repo_digests=[""])
    add_prefixes(image, "alt")
    assert list(image.repo_tags) == ["", "alt/busybox:1"] and list(image.repo_digests) == [""]
    assert strip_prefixes(image, "alt", Names(["", "alt"]))
    assert list(image.repo_tags) == ["", "busybox:1"]
    assert owners(cri.Image(repo_tags=[""]), Names(["", "alt"])) == set()
