"""RunPodSandbox and CreateContainer as a stock kubelet sends them through criproxy on
the e2e node: the configs kubelet builds (labels, annotations, log paths, cgroup
parent), a pod for B named by its RuntimeClass handler or by the target-runtime
annotation, and the image name such a pod's spec carries (tests/e2e/test_e2e_kubelet_view.py,
test_e2e_tenants.py)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from tests.e2e.e2e_node import (B, CALL_TIMEOUT, PRIMARY, TARGET_RUNTIME, Node, Pod, bare_id,
                                direct_pod_ids)
from tests.support.relister import UID_LABEL

HANDLER = "althandler"  # criproxy maps it to B (-runtimeHandlers althandler=crun.test:)


def kubelet_pod_config(node: Node, name: str, target: str | None = None) -> pb.PodSandboxConfig:
    """A sandbox config as kubelet builds one: the pod's annotations (with the two kubelet
    adds to every pod), its name/namespace/uid labels, logs under <ns>_<name>_<uid>.
    `target` adds the target-runtime annotation (the older contract)."""
    uid = str(uuid.uuid4())
    pod_name = f"{name}-{uid[:6]}"
    logdir = node.logs / f"e2e_{pod_name}_{uid}"
    logdir.mkdir(parents=True)
    seen = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    annotations = {"kubernetes.io/config.seen": seen, "kubernetes.io/config.source": "api",
                   "e2e.criproxy.test/pod": pod_name}
    if target is not None:
        annotations[TARGET_RUNTIME] = target
    # Host network and no hostname: no CNI, quick to start and stop (see the other e2e).
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=pod_name, uid=uid, namespace="e2e"),
        labels={"io.kubernetes.pod.name": pod_name, "io.kubernetes.pod.namespace": "e2e",
                UID_LABEL: uid},
        log_directory=str(logdir), annotations=annotations,
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"{node.cgroup_root}/pod{uid}",
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE))))


def run_kubelet_pod(node: Node, made: list[Pod], runtime: str, name: str,
                    by_handler: bool = True) -> Pod:
    """RunPodSandbox as kubelet: a pod for B names B by its RuntimeClass handler, or,
    with by_handler=False, by the target-runtime annotation."""
    target = None if by_handler or runtime == PRIMARY else runtime
    config = kubelet_pod_config(node, name, target)
    handler = HANDLER if runtime == B and by_handler else ""
    answer = node.via.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=CALL_TIMEOUT)
    pod = Pod(runtime, answer.pod_sandbox_id, config)
    made.append(pod)
    assert pod.bare in direct_pod_ids(node, runtime), f"{pod.id} is not on {runtime or 'A'}"
    return pod


def kubelet_container_config(pod: Pod, name: str, image: pb.ImageSpec,
                             command: tuple[str, ...] = ("sleep", "1000")) -> pb.ContainerConfig:
    meta = pod.config.metadata
    Path(pod.config.log_directory, name).mkdir(exist_ok=True)  # kubelet makes it
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name), image=image, command=list(command),
        labels={"io.kubernetes.container.name": name, "io.kubernetes.pod.name": meta.name,
                "io.kubernetes.pod.namespace": meta.namespace, UID_LABEL: meta.uid},
        annotations={"io.kubernetes.container.restartCount": "0",
                     "io.kubernetes.container.terminationMessagePath": "/dev/termination-log"},
        log_path=f"{name}/0.log",
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE))))


def start_container(node: Node, pod: Pod, name: str, image: pb.ImageSpec,
                    command: tuple[str, ...] = ("sleep", "1000")) -> str:
    cid = node.via.runtime.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod.id, config=kubelet_container_config(pod, name, image, command),
        sandbox_config=pod.config), timeout=CALL_TIMEOUT).container_id
    bare_id(pod.runtime, cid)  # asserts the prefix
    node.via.runtime.StartContainer(pb.StartContainerRequest(container_id=cid),
                                    timeout=CALL_TIMEOUT)
    return cid


def busybox_for(node: Node, pod: Pod) -> pb.ImageSpec:
    """The imported busybox as such a pod's spec names it: a handler-placed pod's image is
    its runtime's with the plain name; an annotation-placed one carries the prefix."""
    name = node.info["images"]["busybox"]
    if TARGET_RUNTIME in pod.config.annotations and pod.runtime:
        name = f"{pod.runtime}/{name}"
    return pb.ImageSpec(image=name, user_specified_image=name)
