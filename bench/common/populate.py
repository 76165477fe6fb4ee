"""Filling a runtime with pods and started containers, directly, as kubelet would make
them: labels and annotations as kubelet sets them, so messages have realistic sizes."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from bench.common.rig import target

UID_LABEL = "io.kubernetes.pod.uid"


@dataclass
class Pod:
    id: str
    uid: str
    containers: list[str]


def pod_config(name: str, uid: str, index: int, cgroup_root: str | None) -> pb.PodSandboxConfig:
    """Labels and annotations as kubelet sets them, so messages have a realistic size."""
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace="bench", attempt=0),
        hostname=name, log_directory=f"/var/log/pods/bench_{name}_{uid}",
        labels={UID_LABEL: uid, "io.kubernetes.pod.name": name,
                "io.kubernetes.pod.namespace": "bench", "app": f"app-{index % 7}"},
        annotations={"kubernetes.io/config.seen": "2024-01-01T00:00:00.000000000Z",
                     "kubernetes.io/config.source": "api"})
    if cgroup_root is not None:  # a real runtime: host network, a cgroup parent as kubelet's
        config.hostname = ""
        config.linux.cgroup_parent = f"{cgroup_root}/pod{uid}"
        config.linux.security_context.namespace_options.network = pb.NODE
    return config


def container_config(pod: pb.PodSandboxConfig, index: int, image: str,
                     command: list[str]) -> pb.ContainerConfig:
    name = f"c{index}"
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0), image=pb.ImageSpec(image=image),
        command=command, log_path=f"{name}/0.log",
        labels={"io.kubernetes.container.name": name, UID_LABEL: pod.metadata.uid,
                "io.kubernetes.pod.name": pod.metadata.name,
                "io.kubernetes.pod.namespace": "bench"},
        annotations={"io.kubernetes.container.hash": f"{index:08x}",
                     "io.kubernetes.container.restartCount": "0",
                     "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
                     "io.kubernetes.container.terminationMessagePolicy": "File",
                     "io.kubernetes.pod.terminationGracePeriod": "30"})


def populate(socket: Path | str, count: int, per_pod: int, first: int = 0,
             image: str = "docker.io/library/busybox:latest", cgroup_root: str | None = None,
             command: list[str] | None = None, timeout: float = 60,
             annotations: dict[str, str] | None = None) -> list[Pod]:
    """Run `count` pods of `per_pod` started containers each, directly on a runtime.
    `annotations`: added to each pod's (e.g. kubernetes.io/target-runtime, which a pod
    placed on a named runtime through criproxy carries)."""
    made = []
    with grpc.insecure_channel(target(socket)) as channel:
        stub = rpc.RuntimeServiceStub(channel)
        for index in range(first, first + count):
            uid = uuid.uuid4().hex
            config = pod_config(f"pod-{index}", uid, index, cgroup_root)
            config.annotations.update(annotations or {})
            pod_id = stub.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                        timeout=timeout).pod_sandbox_id
            pod = Pod(pod_id, uid, [])
            for c in range(per_pod):
                cid = stub.CreateContainer(pb.CreateContainerRequest(
                    pod_sandbox_id=pod_id, sandbox_config=config,
                    config=container_config(config, c, image, command or ["sleep", "100000"])),
                    timeout=timeout).container_id
                stub.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=timeout)
                pod.containers.append(cid)
            made.append(pod)
    return made
