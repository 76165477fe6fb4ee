"""Helpers shared by the tests/process/test_routing*.py files.

The tests talk to the real proxy over its socket and prove where each request
went by reading the fake runtimes' journals: `Marks` remembers how long every
journal was before a call, so a test only looks at what its own call caused
(the module-scoped cluster is shared by many tests).
"""
from __future__ import annotations

import base64
import time
import uuid
from typing import Callable

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

from tests.process.cluster import ALT_URL_BASE, STREAM_URL, Cluster
from tests.support.fakeruntime import GRPC_OPTIONS, FakeRuntime
from tests.support.fakestate import make_image

BUSYBOX = "docker.io/library/busybox:latest"
PAUSE = "registry.k8s.io/pause:3.9"
TARGET = "kubernetes.io/target-runtime"
# -connect order: primary first, then the named runtimes as given.
RUNTIMES = ("primary", "alt", "vm.cloud")
NAMED = ("alt", "vm.cloud")

# An unknown protobuf field: number 999, wire type varint, value 42.
UNKNOWN_FIELD = bytes([0xB8, 0x3E, 0x2A])


def unique(stem: str = "pod") -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


def id_of(runtime: str, bare: str) -> str:
    """How kubelet sees id `bare` of `runtime`."""
    return bare if runtime == "primary" else f"{runtime}__{bare}"


def image_of(runtime: str, bare: str) -> str:
    """How kubelet sees image `bare` of `runtime` (digests are never prefixed)."""
    if runtime == "primary" or bare.startswith("sha256:"):
        return bare
    return f"{runtime}/{bare}"


def bare_id(runtime: str, shown: str) -> str:
    """The runtime's own id behind the id kubelet sees; checks the prefix too."""
    if runtime == "primary":
        assert "__" not in shown, shown
        return shown
    prefix = f"{runtime}__"
    assert shown.startswith(prefix), (runtime, shown)
    return shown[len(prefix):]


def owner_of_id(shown: str) -> str:
    """Which runtime an id shown to kubelet belongs to, by its prefix."""
    for name in NAMED:
        if shown.startswith(name + "__"):
            return name
    return "primary"


def owner_of_image(shown: str) -> str:
    for name in NAMED:
        if shown.startswith(name + "/"):
            return name
    return "primary"


def relative_base(runtime: str) -> str:
    """The base of streaming URLs kubelet gets from `runtime`'s answers."""
    return ALT_URL_BASE if runtime == "alt" else STREAM_URL


def raw_of(entry: dict) -> bytes:
    return base64.b64decode(entry["raw_b64"])


class Marks:
    """Journal lengths of every fake at one moment; `new` reads what came after."""

    def __init__(self, cluster: Cluster) -> None:
        self.fakes = cluster.fakes
        self.offsets = {name: len(fake.entries()) for name, fake in self.fakes.items()}

    def new(self, runtime: str, method: str | None = None) -> list[dict]:
        entries = self.fakes[runtime].entries()[self.offsets.get(runtime, 0):]
        return [e for e in entries if method is None or e["method"] == method]

    def receivers(self, method: str) -> list[str]:
        """The runtimes that received `method` since the marks, in -connect order."""
        return [name for name in RUNTIMES if name in self.fakes and self.new(name, method)]

    def only(self, runtime: str, method: str) -> dict:
        """Assert exactly one `method` call reached `runtime`, and none any other."""
        assert self.receivers(method) == [runtime], (method, {n: self.new(n) for n in self.fakes})
        [entry] = self.new(runtime, method)
        return entry


class Kubelet:
    """What kubelet does through the proxy socket, with the stubs it uses."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.channel = cluster.proxy.channel()
        self.rt = cri_grpc.RuntimeServiceStub(self.channel)
        self.img = cri_grpc.ImageServiceStub(self.channel)

    def raw(self, path: str) -> Callable:
        """A raw-bytes callable: requests and answers are not (de)serialized."""
        return self.channel.unary_unary(path)

    def run_pod(self, runtime: str, name: str | None = None,
                labels: dict[str, str] | None = None) -> str:
        name = name or unique()
        annotations = {} if runtime == "primary" else {TARGET: runtime}
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, namespace="routing", uid=name + "-uid"),
            labels=labels or {}, annotations=annotations)
        return self.rt.RunPodSandbox(
            cri.RunPodSandboxRequest(config=config), timeout=10).pod_sandbox_id

    def create_container(self, runtime: str, sandbox_id: str, image: str | None = None,
                         name: str | None = None, labels: dict[str, str] | None = None) -> str:
        name = name or unique("ctr")
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name),
            image=cri.ImageSpec(image=image or image_of(runtime, BUSYBOX)),
            labels=labels or {}, log_path=f"{name}.log")
        request = cri.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config)
        return self.rt.CreateContainer(request, timeout=10).container_id

    def pod_with_container(self, runtime: str) -> tuple[str, str]:
        sandbox_id = self.run_pod(runtime)
        return sandbox_id, self.create_container(runtime, sandbox_id)


def fake_status_info(fake: FakeRuntime) -> dict[str, str]:
    """Ask a fake directly (not through the proxy) for its verbose status info."""
    with grpc.insecure_channel(fake.address, options=GRPC_OPTIONS) as channel:
        stub = cri_grpc.RuntimeServiceStub(channel)
        return dict(stub.Status(cri.StatusRequest(verbose=True), timeout=5).info)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def digest_of(image: str) -> str:
    return make_image(image).id
