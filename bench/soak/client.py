"""The kubelet-like client: pods churned through criproxy, synced as kubelet syncs them.

A new pod every `interval` seconds, in turn on the primary, on `alt.soak` by the
target-runtime annotation and on `alt.soak` by the RuntimeClass handler; when more
than `live` pods are wanted, the oldest is deleted. Pod workers (a few threads, one
sync per pod at a time, as kubelet's per-pod workers) sync each pod from what the
runtime says, as kuberuntime's SyncPod does (KUBELET.md):

- a live pod: GetPodStatus (ListPodSandbox and ListContainers filtered by its uid
  label). One ready sandbox: it is the pod's, even if the client never got the
  RunPodSandbox answer that made it (a lost answer is recovered this way). None
  ready: kill what is there and RunPodSandbox with attempt + 1. Two ready: kill the
  pod and create it once more. Then its container: running, done; else dead ones are
  garbage-collected and ImageStatus (with the pod's annotations), CreateContainer
  (by image id), StartContainer.
- a deleted pod: kill it from the same status (StopContainer, RemoveContainer,
  StopPodSandbox, RemovePodSandbox for everything its uid label finds), then check
  that the uid finds nothing.

A sync that fails anywhere is retried after a backoff (2-4 s: kubelet's pod worker
backs off 10 s; shorter here so that a short run still sees retries through every
fault). Housekeeping, as kubelet's HandlePodCleanups and garbage collector: a
sandbox a relist shows for a pod already removed reopens that pod's deletion.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import grpc
from cri_api.v1 import api_pb2 as pb

from bench.soak.calls import (Calls, Lost, container_config, handler_of, image_name, pod_config,
                              uid_filter_containers, uid_filter_pods, with_attempt)
from bench.soak.node import ALT
from bench.soak.state import Expect, SoakPod

KINDS = ("primary", "annotation", "handler")
WORKERS = 4
BACKOFF = (2.0, 4.0)


class Churn:
    def __init__(self, calls: Calls, expect: Expect, logs: Path, cgroup_root: str,
                 live: int, interval: float) -> None:
        self.calls = calls
        self.expect = expect
        self.logs = logs
        self.cgroup_root = cgroup_root
        self.live = live
        self.interval = interval
        self.pods: list[SoakPod] = []
        self.by_uid: dict[str, SoakPod] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="podworker")
        self.adopted: list[dict] = []       # sandboxes/containers recovered from a List
        self.killed_extra: list[dict] = []  # pods killed and recreated (none or two ready)
        self.reopened: list[dict] = []      # removed pods whose sandbox showed up again
        self.scheduling = True

    # ------------------------------------------------------------ the schedule

    def run(self, stop: threading.Event) -> None:
        """Schedule pods until `stop`; meanwhile hand due syncs to the pod workers."""
        next_pod = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if self.scheduling and now >= next_pod:
                self.new_pod()
                next_pod += self.interval
            self.dispatch()
            stop.wait(0.05)

    def new_pod(self) -> None:
        n = len(self.pods)
        kind = KINDS[n % len(KINDS)]
        uid = str(uuid.uuid4())
        config = pod_config(self.logs, self.cgroup_root, n, kind, uid)
        pod = SoakPod(n, kind, "primary" if kind == "primary" else ALT, uid,
                      config.metadata.name, config, handler_of(kind),
                      scheduled_at=time.monotonic())
        with self.lock:
            self.pods.append(pod)
            self.by_uid[uid] = pod
            wanted = [p for p in self.pods if p.want == "live"]
            for old in wanted[:max(0, len(wanted) - self.live)]:
                old.want = "gone"
                old.next_try = 0.0

    def delete_all(self) -> None:
        with self.lock:
            self.scheduling = False
            for pod in self.pods:
                if pod.want == "live":
                    pod.want = "gone"
                    pod.next_try = 0.0

    def pending(self) -> list[SoakPod]:
        with self.lock:
            return [p for p in self.pods if p.want == "gone" and p.state != "done"]

    def dispatch(self) -> None:
        now = time.monotonic()
        with self.lock:
            due = [p for p in self.pods if not p.busy and p.next_try <= now and
                   ((p.want == "live" and p.state != "running") or
                    (p.want == "gone" and p.state != "done"))]
            for pod in due:
                pod.busy = True
        for pod in due:
            self.pool.submit(self.sync, pod)

    def housekeep(self, listed: list[pb.PodSandbox]) -> None:
        """A relist showed these sandboxes: one the client never removed, of a pod already
        removed, reopens that pod (a removed one shown is the relist's failure, not this)."""
        gone = self.expect.snapshot().gone
        with self.lock:
            for sandbox in listed:
                if sandbox.id in gone:
                    continue
                pod = self.by_uid.get(sandbox.labels.get("io.kubernetes.pod.uid", ""))
                if pod is not None and pod.state == "done" and not pod.busy:
                    pod.state, pod.next_try = "pending", 0.0
                    pod.reopened += 1
                    self.reopened.append({"at": time.monotonic(), "pod": pod.name,
                                          "sandbox": sandbox.id, "state": sandbox.state})

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------ syncs

    def sync(self, pod: SoakPod) -> None:
        try:
            if pod.want == "live":
                self.sync_live(pod)
            else:
                self.sync_gone(pod)
            pod.failures = 0
        except (grpc.RpcError, Lost, SyncAgain):
            pod.failures += 1
            pod.next_try = time.monotonic() + random.uniform(*BACKOFF)
        except Exception as err:   # a harness bug must not kill the pod worker silently
            pod.failures += 1
            pod.next_try = time.monotonic() + BACKOFF[1]
            self.calls.stats.failed("sync", pod.runtime, "HARNESS", repr(err), pod.name)
        finally:
            pod.busy = False

    def _status(self, pod: SoakPod) -> tuple[list[pb.PodSandbox], list[pb.Container]]:
        sandboxes = self.calls.call("ListPodSandbox", uid_filter_pods(pod.uid), "*", pod.name).items
        containers = self.calls.call("ListContainers", uid_filter_containers(pod.uid), "*",
                                     pod.name).containers
        self.expect.saw(*(s.id for s in sandboxes), *(c.id for c in containers))
        return list(sandboxes), list(containers)

    def sync_live(self, pod: SoakPod) -> None:
        call = self.calls.call
        sandboxes, containers = self._status(pod)
        ready = [s for s in sandboxes if s.state == pb.SANDBOX_READY]
        if len(ready) == 1 and pod.sandbox in (None, ready[0].id):
            if pod.sandbox is None:
                self.adopted.append({"at": time.monotonic(), "pod": pod.name, "what": "sandbox",
                                     "id": ready[0].id})
            pod.sandbox = ready[0].id
            self.expect.add_sandbox(pod.sandbox)
        else:
            if sandboxes:   # none ready, or two: kill the pod, create it once more
                self.killed_extra.append({"at": time.monotonic(), "pod": pod.name,
                                          "sandboxes": [(s.id, s.state) for s in sandboxes]})
                self.kill(pod, sandboxes, containers)
            attempt = max((s.metadata.attempt + 1 for s in sandboxes), default=0)
            pod.sandbox = None
            answer = call("RunPodSandbox", pb.RunPodSandboxRequest(
                config=with_attempt(pod.config, attempt), runtime_handler=pod.handler),
                pod.runtime, pod.name)
            pod.sandbox = answer.pod_sandbox_id
            self.expect.add_sandbox(pod.sandbox)
            containers = []
        mains = [c for c in containers if c.pod_sandbox_id == pod.sandbox]
        running = [c for c in mains if c.state == pb.CONTAINER_RUNNING]
        if running:
            if pod.container != running[0].id:
                self.adopted.append({"at": time.monotonic(), "pod": pod.name,
                                     "what": "container", "id": running[0].id})
            pod.container = running[0].id
        else:
            for dead in containers:     # garbage collection of the pod's dead containers
                self.expect.forget(dead.id)
                if dead.state == pb.CONTAINER_RUNNING:   # left in a sandbox killed before
                    call("StopContainer", pb.StopContainerRequest(container_id=dead.id,
                                                                  timeout=0),
                         pod.runtime, pod.name)
                call("RemoveContainer", pb.RemoveContainerRequest(container_id=dead.id),
                     pod.runtime, pod.name)
                self.expect.removed(dead.id)
            attempt = max((c.metadata.attempt + 1 for c in mains), default=0)
            name = image_name(pod.kind)
            image = call("ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(
                image=name, annotations=dict(pod.config.annotations))), pod.runtime,
                pod.name).image
            if not image.id:
                raise SyncAgain(f"{name} not on {pod.runtime}")
            pod.container = None
            cid = call("CreateContainer", pb.CreateContainerRequest(
                pod_sandbox_id=pod.sandbox, config=container_config(pod, image.id, attempt),
                sandbox_config=with_attempt(pod.config, 0)), pod.runtime,
                pod.name).container_id
            pod.container = cid
            self.expect.add_container(cid, running=False)
            call("StartContainer", pb.StartContainerRequest(container_id=cid), pod.runtime,
                 pod.name)
        self.expect.add_container(pod.container, running=True)
        pod.state, pod.ever_running = "running", True
        pod.running_at = pod.running_at or time.monotonic()

    def sync_gone(self, pod: SoakPod) -> None:
        self.expect.forget(pod.sandbox, pod.container)
        sandboxes, containers = self._status(pod)
        self.kill(pod, sandboxes, containers)
        sandboxes, containers = self._status(pod)
        if sandboxes or containers:
            raise SyncAgain(f"{pod.name}: still {len(sandboxes)} sandboxes, "
                            f"{len(containers)} containers")
        with self.lock:
            pod.state, pod.done_at = "done", time.monotonic()
            if pod.ever_running and not pod.counted:
                pod.counted = True

    def kill(self, pod: SoakPod, sandboxes: list[pb.PodSandbox],
             containers: list[pb.Container]) -> None:
        """killPod from the pod's status, and what kubelet's garbage collector does after
        it (here at once): a recreated pod's old sandboxes are removed as well."""
        call = self.calls.call
        for c in containers:
            self.expect.forget(c.id)
            if c.state in (pb.CONTAINER_RUNNING, pb.CONTAINER_UNKNOWN):
                call("StopContainer", pb.StopContainerRequest(container_id=c.id, timeout=0),
                     pod.runtime, pod.name)
            call("RemoveContainer", pb.RemoveContainerRequest(container_id=c.id),
                 pod.runtime, pod.name)
            self.expect.removed(c.id)
        for s in sandboxes:
            self.expect.forget(s.id)
            call("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=s.id),
                 pod.runtime, pod.name)
            call("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=s.id),
                 pod.runtime, pod.name)
            self.expect.removed(s.id)

    # ------------------------------------------------------------ figures

    def figures(self) -> dict:
        with self.lock:
            pods = list(self.pods)
        return {
            "scheduled": len(pods),
            "completed": sum(p.counted for p in pods),
            "never_running": [p.name for p in pods if not p.ever_running],
            "not_removed": [p.name for p in pods if p.state != "done"],
            "adopted": self.adopted,
            "killed_and_recreated": self.killed_extra,
            "reopened_by_housekeeping": self.reopened,
            "time_to_running_s": sorted(round(p.running_at - p.scheduled_at, 2) for p in pods
                                        if p.running_at is not None),
        }


class SyncAgain(Exception):
    """The pod is not where it should be yet: try again later."""
