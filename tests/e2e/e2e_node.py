"""The node of the end-to-end tests: criproxy in front of two real containerd
instances, and the steps the tests take through it (tests/e2e/test_e2e_*.py).

scripts/runtimes.py starts containerd A (runc), the primary, and containerd B (crun),
which the proxy serves as the named runtime `crun.test`. Every request goes through
the proxy's socket, as kubelet's would; what each runtime really holds is checked on
its own containerd socket, bypassing the proxy. `up` installs containerd with apt-get
when it is missing.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from tests.support.harness import Proxy, runtimes_script, start_proxy

runtimes = runtimes_script()

B = "crun.test"             # B's name in -connect; it has a dot, as kubelet's image names need
PRIMARY = ""
LABELS = {PRIMARY: "primary", B: B}
INSTANCE = {PRIMARY: "a", B: "b"}
TARGET_RUNTIME = "kubernetes.io/target-runtime"
STREAM_URL = "http://127.0.0.1:11250"
LIST_BUDGET = 2.0
CALL_TIMEOUT = 30           # seconds, for every gRPC call of these tests


def other(runtime: str) -> str:
    return B if runtime == PRIMARY else PRIMARY


def shown_image(runtime: str, image: str) -> str:
    return f"{runtime}/{image}" if runtime else image


def shown_ref(runtime: str, image: str) -> str:
    """How the proxy shows an image string of `runtime`: digests (image ids) stay as they are."""
    if not image or re.match(r"^[a-z0-9]+:[0-9a-f]{32,}$", image):
        return image
    return shown_image(runtime, image)


def bare_id(runtime: str, object_id: str) -> str:
    if not runtime:
        assert "__" not in object_id, f"primary id {object_id!r} carries a prefix"
        return object_id
    prefix = f"{runtime}__"
    assert object_id.startswith(prefix), f"{object_id!r} lacks the prefix {prefix!r}"
    return object_id[len(prefix):]


@dataclass
class Cri:
    """Runtime and image stubs on one socket (the proxy's or a containerd's)."""

    channel: grpc.Channel
    runtime: rpc.RuntimeServiceStub
    images: rpc.ImageServiceStub

    @classmethod
    def connect(cls, address: str) -> Cri:
        channel = grpc.insecure_channel(address)
        return cls(channel, rpc.RuntimeServiceStub(channel), rpc.ImageServiceStub(channel))


@dataclass
class Node:
    base: Path
    info: dict
    proxy: Proxy
    via: Cri                                  # the proxy's socket
    direct: dict[str, Cri]                    # PRIMARY / B -> that containerd's own socket
    logs: Path

    def close(self) -> None:
        """Close the channels and stop the criproxy that are current (a test may have
        restarted criproxy)."""
        for cri in (self.via, *self.direct.values()):
            cri.channel.close()
        self.proxy.stop()

    @property
    def cgroup_root(self) -> str:
        """Pods' cgroup parents go under this (as kubelet's go under /kubepods)."""
        return f"/criproxy-{self.base.name}"

    def instance(self, runtime: str) -> dict:
        return self.info["instances"][INSTANCE[runtime]]

    @property
    def rtdir(self) -> Path:
        return Path(self.info["dir"])


@contextlib.contextmanager
def two_containerds(prefix: str) -> Iterator[tuple[Path, dict]]:
    """A fresh directory (`px` in it for criproxy) with containerd A and B up under
    `rt` (scripts/runtimes.py); both taken down, their pods' cgroups removed and the
    directory too (unless CRIPROXY_E2E_KEEP is set), whatever happened."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    (base / "px").mkdir()
    try:
        yield base, runtimes.up(base / "rt")
    finally:
        runtimes.down(base / "rt")
        runtimes.remove_cgroup_tree(f"/criproxy-{base.name}")
        if not os.environ.get("CRIPROXY_E2E_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with two_containerds("e2e-") as (base, info):
        a, b = info["instances"]["a"], info["instances"]["b"]
        proxy = start_proxy(f"{a['socket']},{B}:unix://{b['socket']}",
                            "-streamUrl", STREAM_URL, "-listBudget", str(LIST_BUDGET),
                            workdir=base / "px", wait_for=list(LABELS.values()))
        started = Node(base, info, proxy, Cri.connect(f"unix://{proxy.listen}"),
                       {PRIMARY: Cri.connect(a["endpoint"]), B: Cri.connect(b["endpoint"])},
                       base / "logs")
        try:
            yield started
        finally:
            started.close()


# ---------------------------------------------------------------- helpers


@dataclass
class Pod:
    runtime: str
    id: str                                   # as the proxy shows it
    config: pb.PodSandboxConfig

    @property
    def bare(self) -> str:
        return bare_id(self.runtime, self.id)


def pod_config(node: Node, runtime: str, name: str) -> pb.PodSandboxConfig:
    uid = uuid.uuid4().hex
    logdir = node.logs / f"{name}-{uid[:8]}"
    logdir.mkdir(parents=True)
    annotations = {TARGET_RUNTIME: runtime} if runtime else {}
    # Host network, and so no hostname (runc: "unable to set hostname without a private
    # UTS namespace"): no CNI, quick to start and stop. A cgroup parent as kubelet sets
    # one: containerd 1.6 fails ListPodSandboxStats for a pod without.
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=f"{name}-{uid[:6]}", uid=uid, namespace="e2e"),
        log_directory=str(logdir), annotations=annotations,
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"{node.cgroup_root}/pod{uid}",
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE))))


def run_pod(node: Node, runtime: str, name: str) -> Pod:
    config = pod_config(node, runtime, name)
    answer = node.via.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                            timeout=CALL_TIMEOUT)
    pod = Pod(runtime, answer.pod_sandbox_id, config)
    bare_id(runtime, pod.id)  # asserts the prefix
    return pod


def add_container(node: Node, pod: Pod, name: str,
                  command: tuple[str, ...] = ("sleep", "1000")) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=shown_image(pod.runtime, node.info["images"]["busybox"])),
        command=list(command), log_path=f"{name}.log")
    cid = node.via.runtime.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config),
        timeout=CALL_TIMEOUT).container_id
    bare_id(pod.runtime, cid)
    node.via.runtime.StartContainer(pb.StartContainerRequest(container_id=cid),
                                    timeout=CALL_TIMEOUT)
    return cid


def remove_pod(node: Node, pod: Pod) -> None:
    """Stop and remove through the proxy (containerd removes the containers with it)."""
    node.via.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                    timeout=CALL_TIMEOUT)
    node.via.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                      timeout=CALL_TIMEOUT)


@contextlib.contextmanager
def pods(node: Node) -> Iterator[list[Pod]]:
    """Pods a test appends here are removed afterwards, whatever happened."""
    made: list[Pod] = []
    try:
        yield made
    finally:
        for pod in made:
            with contextlib.suppress(grpc.RpcError):
                remove_pod(node, pod)


def running_pod(node: Node, made: list[Pod], runtime: str, name: str,
                command: tuple[str, ...] = ("sleep", "1000")) -> tuple[Pod, str]:
    pod = run_pod(node, runtime, name)
    made.append(pod)
    return pod, add_container(node, pod, "main", command)


def code_of(call: Callable[[], object]) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return None


def direct_pod_ids(node: Node, runtime: str) -> set[str]:
    return {p.id for p in node.direct[runtime].runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT).items}


def direct_container_ids(node: Node, runtime: str) -> set[str]:
    return {c.id for c in node.direct[runtime].runtime.ListContainers(
        pb.ListContainersRequest(), timeout=CALL_TIMEOUT).containers}


def http_status(url: str) -> int:
    """The HTTP status of a plain GET (no upgrade) of a streaming URL."""
    parsed = urlparse(url)
    assert parsed.hostname == "127.0.0.1", url  # only ever loopback
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request("GET", parsed.path or "/")
        return conn.getresponse().status
    finally:
        conn.close()


def wait_for(what: str, check: Callable[[], object], timeout: float = 10.0,
             interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (grpc.RpcError, OSError, ValueError) as err:  # not there yet
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not after {timeout}s (last: {last!r})")


def image_tags(cri: Cri, **filter_args: str) -> list[str]:
    request = pb.ListImagesRequest()
    if filter_args:
        request.filter.image.image = filter_args["image"]
    return [tag for image in cri.images.ListImages(request, timeout=CALL_TIMEOUT).images
            for tag in image.repo_tags]


def has_image(cri: Cri, name: str) -> bool:
    return cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=name)),
                                  timeout=CALL_TIMEOUT).HasField("image")
