"""Both CRI versions on both sides: v1 and v1alpha2 clients, v1 and v1alpha2 runtimes."""
from __future__ import annotations

import base64
import shutil
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as v1
from cri_api.v1 import api_pb2_grpc as v1_grpc
from cri_api.v1alpha2 import api_pb2 as v1alpha2
from cri_api.v1alpha2 import api_pb2_grpc as v1alpha2_grpc
from google.protobuf.descriptor import FieldDescriptor

from criproxy.front.naming import Names
from criproxy.front.rewrite import ID_FIELDS, IMAGE_FIELDS, IMAGE_ID_MESSAGES, strip_prefixes
from criproxy.front.routing import METHODS, Rule
from tests.support.fakeruntime import FakeRuntime, start_fake
from tests.support.harness import Proxy, short_dir, start_proxy

ANNOTATION = "kubernetes.io/target-runtime"


class Versions:
    def __init__(self, proxy: Proxy, fakes: dict[str, FakeRuntime]) -> None:
        self.proxy, self.fakes = proxy, fakes

    def journal_since(self, name: str, offset: int) -> list[dict]:
        return self.fakes[name].entries()[offset:]

    def offsets(self) -> dict[str, int]:
        return {name: len(fake.entries()) for name, fake in self.fakes.items()}


@pytest.fixture(scope="module")
def versions() -> Iterator[Versions]:
    base = short_dir("cpv-")
    fakes = {"primary": start_fake(base, "primary"),
             "old": start_fake(base, "old", "--cri-versions", "v1alpha2"),
             "both": start_fake(base, "both", "--cri-versions", "v1,v1alpha2")}
    connect = (f"{fakes['primary'].socket},old:{fakes['old'].socket},"
               f"both:{fakes['both'].socket}")
    proxy = start_proxy(connect, workdir=base, wait_for=list(fakes))
    yield Versions(proxy, fakes)
    proxy.stop()
    for fake in fakes.values():
        fake.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_each_runtime_reports_the_version_it_speaks(versions: Versions) -> None:
    detected = {r["label"]: r["cri_version"] for r in versions.proxy.status()["runtimes"]}
    assert detected == {"primary": "v1", "old": "v1alpha2", "both": "v1"}


def test_v1_client_reaches_a_v1alpha2_runtime(versions: Versions) -> None:
    before = versions.offsets()
    stub = versions.proxy.runtime_stub()
    config = v1.PodSandboxConfig(metadata=v1.PodSandboxMetadata(name="v1-to-old"),
                                 annotations={ANNOTATION: "old"})
    sandbox_id = stub.RunPodSandbox(v1.RunPodSandboxRequest(config=config)).pod_sandbox_id
    assert sandbox_id.startswith("old__old-sb-")
    status = stub.PodSandboxStatus(v1.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
    assert status.status.id == sandbox_id
    paths = [e["path"] for e in versions.journal_since("old", before["old"])]
    assert paths == ["/runtime.v1alpha2.RuntimeService/RunPodSandbox",
                     "/runtime.v1alpha2.RuntimeService/PodSandboxStatus"]


def test_v1alpha2_client_reaches_v1_runtimes(versions: Versions) -> None:
    before = versions.offsets()
    channel = versions.proxy.channel()
    stub = v1alpha2_grpc.RuntimeServiceStub(channel)
    assert stub.Version(v1alpha2.VersionRequest()).runtime_name == "primary"
    config = v1alpha2.PodSandboxConfig(metadata=v1alpha2.PodSandboxMetadata(name="old-client"),
                                       annotations={ANNOTATION: "both"})
    sandbox_id = stub.RunPodSandbox(v1alpha2.RunPodSandboxRequest(config=config)).pod_sandbox_id
    assert sandbox_id.startswith("both__both-sb-")
    listed = stub.ListPodSandbox(v1alpha2.ListPodSandboxRequest()).items
    assert sandbox_id in [s.id for s in listed]
    assert [e["path"] for e in versions.journal_since("primary", before["primary"])][0] == \
        "/runtime.v1.RuntimeService/Version"
    assert versions.journal_since("both", before["both"])[0]["path"] == \
        "/runtime.v1.RuntimeService/RunPodSandbox"


def test_v1_only_method_on_a_v1alpha2_runtime_is_unimplemented(versions: Versions) -> None:
    before = versions.offsets()
    stub = versions.proxy.runtime_stub()
    with pytest.raises(grpc.RpcError) as err:
        stub.CheckpointContainer(v1.CheckpointContainerRequest(container_id="old__c1"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "runtime old" in err.value.details() and "v1alpha2" in err.value.details()
    assert versions.journal_since("old", before["old"]) == []


def test_v1alpha2_clients_do_not_see_v1_only_methods(versions: Versions) -> None:
    with pytest.raises(grpc.RpcError) as err:
        versions.proxy.channel().unary_unary(
            "/runtime.v1alpha2.RuntimeService/CheckpointContainer")(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_lists_merge_runtimes_of_both_versions(versions: Versions) -> None:
    stub = v1_grpc.ImageServiceStub(versions.proxy.channel())
    tags = [t for image in stub.ListImages(v1.ListImagesRequest()).images for t in image.repo_tags]
    assert "docker.io/library/busybox:latest" in tags
    assert "old/docker.io/library/busybox:latest" in tags
    assert "both/docker.io/library/busybox:latest" in tags


# --- every method, fully populated, field by field -----------------------------

def _value(message_name: str, field: FieldDescriptor, runtime: str) -> object:
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name in ID_FIELDS and message_name not in IMAGE_ID_MESSAGES:
            return f"{runtime}__{field.name}"
        if field.name in IMAGE_FIELDS or field.name == "id":
            return f"{runtime}/{field.name}"
        return f"{field.name}-value"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x01bytes"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5
    return 7


def populate(message, runtime: str, depth: int = 0) -> None:
    """Set every field of a v1alpha2 message (recursively) to a non-default value."""
    for field in message.DESCRIPTOR.fields:
        target = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    populate(target["key"], runtime, depth + 1)
                else:
                    target["key"] = _value(field.message_type.name, value_field, runtime)
            elif depth < 6:
                populate(target.add() if field.is_repeated else target, runtime, depth + 1)
        elif field.is_repeated:
            target.append(_value(message.DESCRIPTOR.name, field, runtime))
        else:
            setattr(message, field.name, _value(message.DESCRIPTOR.name, field, runtime))


def _unary_v1alpha2_methods() -> list[str]:
    paths = []
    for path, method in sorted(METHODS.items()):
        if "v1alpha2" in path and method.route.rule not in (Rule.STREAM_MERGE, Rule.PRIMARY,
                                                            Rule.STATUS):
            paths.append(path)
    return paths


@pytest.mark.parametrize("path", _unary_v1alpha2_methods())
def test_fully_populated_requests_reach_a_v1alpha2_runtime_intact(
        versions: Versions, path: str) -> None:
    method = METHODS[path]
    request = getattr(v1alpha2, method.request.DESCRIPTOR.name)()
    populate(request, "old")
    if method.route.rule == Rule.BY_ANNOTATION:
        request.config.annotations[ANNOTATION] = "old"
    before = versions.offsets()
    try:
        versions.proxy.channel().unary_unary(path)(request.SerializeToString(), timeout=10)
    except grpc.RpcError as err:
        assert err.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED), \
            err.details()
    received = versions.journal_since("old", before["old"])
    assert [e["path"] for e in received] == [path]
    expected = v1.__dict__[method.request.DESCRIPTOR.name].FromString(request.SerializeToString())
    strip_prefixes(expected, "old", Names(["", "old", "both"]))
    got = method.request.FromString(base64.b64decode(received[0]["raw_b64"]))
    assert got == expected
    # and as a v1alpha2 runtime reads it, field by field
    as_old = type(request).FromString(base64.b64decode(received[0]["raw_b64"]))
    assert as_old == type(request).FromString(expected.SerializeToString())


def test_populate_prefixes_ids_and_images_for_routing() -> None:
    request = v1alpha2.CreateContainerRequest()
    populate(request, "old")
    assert request.pod_sandbox_id == "old__pod_sandbox_id"
    assert request.config.image.image == "old/image"
    assert request.config.linux.resources.cpu_shares == 7
