"""The soak client's connection to criproxy, and the messages it sends, as kubelet's.

One channel for the whole run with kubelet's CRI client backoff, as kubelet keeps
one (it redials by itself across criproxy restarts); every call fails fast and has
a deadline. A fault may arm cancellations: the next call of a method is then
cancelled by the client after a delay, its answer lost. Calls in flight are
visible, so a fault can strike while a state-changing call is under way.
"""
from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from bench.soak.node import ALT, HANDLER
from bench.soak.state import NAMESPACE, UID_LABEL, CallStats, SoakPod

TARGET_RUNTIME = "kubernetes.io/target-runtime"
BUSYBOX = "docker.io/library/busybox:latest"
CALL_TIMEOUT = 30.0     # kubelet's is 2 min; bounded lower so a stuck call ends the retry sooner
MUTATIONS = {"RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "CreateContainer",
             "StartContainer", "StopContainer", "RemoveContainer"}
# k8s.io/cri-client: 100 ms first reconnect backoff, at most 3 s.
KUBELET_CHANNEL = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 3000),
                   ("grpc.max_receive_message_length", 64 << 20)]


class Lost(Exception):
    """A call the client cancelled itself: its answer, if any, never arrived."""


class Calls:
    def __init__(self, listen: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{listen}", options=KUBELET_CHANNEL)
        self.rt = rpc.RuntimeServiceStub(self.channel)
        self.img = rpc.ImageServiceStub(self.channel)
        self.stats = CallStats()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.inflight: dict[int, tuple[str, str, float]] = {}   # id -> (method, runtime, since)
        self._cancels: list[tuple[str, float]] = []
        self.cancelled: list[dict] = []

    def close(self) -> None:
        self.channel.close()

    def arm_cancels(self, plan: list[tuple[str, float]]) -> None:
        with self._lock:
            self._cancels = list(plan)

    def cancels_left(self) -> int:
        with self._lock:
            return len(self._cancels)

    def _take_cancel(self, method: str) -> Optional[float]:
        with self._lock:
            for i, (name, delay) in enumerate(self._cancels):
                if name == method:
                    del self._cancels[i]
                    return delay
        return None

    def inflight_mutation(self, runtime: Optional[str], prefer: str = "") -> Optional[str]:
        """A state-changing call in flight to `runtime` (any, if None): `prefer` if one is."""
        with self._lock:
            methods = {m for m, rt, _ in self.inflight.values()
                       if m in MUTATIONS and (runtime is None or rt == runtime)}
        return prefer if prefer in methods else next(iter(sorted(methods)), None)

    def call(self, method: str, request: object, runtime: str = "*", pod: str = "",
             timeout: float = CALL_TIMEOUT) -> object:
        stub = self.img if method in ("ImageStatus", "PullImage") else self.rt
        func = getattr(stub, method)
        key = next(self._ids)
        started = time.monotonic()
        with self._lock:
            self.inflight[key] = (method, runtime, started)
        delay = self._take_cancel(method)
        try:
            if delay is None:
                answer = func(request, timeout=timeout)
            else:
                answer = self._cancelled_call(func, method, request, runtime, pod, delay)
        except grpc.RpcError as err:
            self.stats.failed(method, runtime, err.code().name, err.details() or "", pod)
            raise
        except Lost:
            self.stats.failed(method, runtime, "CANCELLED_BY_CLIENT", "", pod)
            raise
        finally:
            with self._lock:
                self.inflight.pop(key, None)
        self.stats.ok(method, time.monotonic() - started, runtime)
        return answer

    def _cancelled_call(self, func: object, method: str, request: object, runtime: str,
                        pod: str, delay: float) -> object:
        future = func.future(request, timeout=CALL_TIMEOUT)   # type: ignore[attr-defined]
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        done.wait(delay)
        cancelled = future.cancel()
        self.cancelled.append({"at": time.monotonic(), "method": method, "runtime": runtime,
                               "pod": pod, "delay": delay, "cancelled_in_flight": cancelled})
        if cancelled:
            raise Lost(f"{method} cancelled after {delay:.2f}s")
        return future.result()


# ---------------------------------------------------------------- kubelet's messages


def pod_config(logs: Path, cgroup_root: str, n: int, kind: str, uid: str) -> pb.PodSandboxConfig:
    """A sandbox config as kubelet builds one: its name/namespace/uid labels, the pod's
    annotations with the two kubelet adds, logs under <ns>_<name>_<uid>; host network
    (no CNI: quick to start and stop). An annotation pod names its runtime."""
    name = f"soak-{kind[:3]}-{n}"
    logdir = logs / f"{NAMESPACE}_{name}_{uid}"
    logdir.mkdir(parents=True, exist_ok=True)
    seen = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    annotations = {"kubernetes.io/config.seen": seen, "kubernetes.io/config.source": "api"}
    if kind == "annotation":
        annotations[TARGET_RUNTIME] = ALT
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=NAMESPACE, attempt=0),
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": NAMESPACE,
                UID_LABEL: uid},
        log_directory=str(logdir), annotations=annotations,
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"{cgroup_root}/pod{uid}",
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE))))


def with_attempt(config: pb.PodSandboxConfig, attempt: int) -> pb.PodSandboxConfig:
    again = pb.PodSandboxConfig()
    again.CopyFrom(config)
    again.metadata.attempt = attempt
    return again


def handler_of(kind: str) -> str:
    return HANDLER if kind == "handler" else ""


def image_name(kind: str) -> str:
    """As the pod's spec names it: an annotation pod's image carries the runtime's prefix;
    a handler pod's image is its runtime's under the plain name."""
    return f"{ALT}/{BUSYBOX}" if kind == "annotation" else BUSYBOX


def container_config(pod: SoakPod, image_ref: str, attempt: int) -> pb.ContainerConfig:
    meta = pod.config.metadata
    Path(pod.config.log_directory, "main").mkdir(exist_ok=True)   # kubelet makes it
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="main", attempt=attempt),
        image=pb.ImageSpec(image=image_ref, user_specified_image=image_name(pod.kind)),
        command=["sleep", "1000000"],
        labels={"io.kubernetes.container.name": "main", "io.kubernetes.pod.name": meta.name,
                "io.kubernetes.pod.namespace": meta.namespace, UID_LABEL: meta.uid},
        annotations={"io.kubernetes.container.restartCount": str(attempt),
                     "io.kubernetes.container.terminationMessagePath": "/dev/termination-log"},
        log_path=f"main/{attempt}.log",
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE))))


def uid_filter_pods(uid: str) -> pb.ListPodSandboxRequest:
    return pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector={UID_LABEL: uid}))


def uid_filter_containers(uid: str) -> pb.ListContainersRequest:
    return pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector={UID_LABEL: uid}))
