"""A kubelet-like client for process-level tests of what kubelet sees during faults.

kubelet's PLEG relists every second (KUBELET.md); this one relists every 0.25 s
to catch short gaps: unfiltered ListPodSandbox and ListContainers, and a
ListPodSandbox filtered by one pod's uid label (GetPodStatus). Like kubelet, it
first waits for Version to answer, then works. A relist that succeeds but lacks
a pod or container that exists is *partial*: kubelet would restart that pod.
A failed relist is harmless while short.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

UID_LABEL = "io.kubernetes.pod.uid"
PERIOD = 0.25


@dataclasses.dataclass
class Relist:
    at: float
    error: str = ""
    missing: list[str] = dataclasses.field(default_factory=list)


class Relister:
    def __init__(self, socket: str, sandboxes: set[str], containers: set[str],
                 watched_uid: str, timeout: float = 30.0) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.expected = (set(sandboxes), set(containers))
        self.watched_uid = watched_uid
        self.timeout = timeout
        self.relists: list[Relist] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def expect(self, sandboxes: set[str], containers: set[str]) -> None:
        """What must be there from now on (after kubelet's own changes)."""
        with self._lock:
            self.expected = (set(sandboxes), set(containers))

    def start(self) -> "Relister":
        self._thread.start()
        return self

    def stop(self) -> list[Relist]:
        self._stop.set()
        self._thread.join(60)
        self.channel.close()
        return self.relists

    def _run(self) -> None:
        self._wait_for_version()
        while not self._stop.is_set():
            started = time.monotonic()
            self.relists.append(self._relist())
            self._stop.wait(max(0.0, PERIOD - (time.monotonic() - started)))

    def _wait_for_version(self) -> None:
        while not self._stop.is_set():
            try:
                self.rt.Version(cri.VersionRequest(), timeout=2)
                return
            except grpc.RpcError:
                time.sleep(0.05)

    def _expected(self) -> tuple[set[str], set[str]]:
        with self._lock:
            return self.expected

    def _relist(self) -> Relist:
        at = time.monotonic()
        before = self._expected()
        try:
            listed = {s.id for s in self.rt.ListPodSandbox(
                cri.ListPodSandboxRequest(), timeout=self.timeout).items}
            listed_containers = {c.id for c in self.rt.ListContainers(
                cri.ListContainersRequest(filter=cri.ContainerFilter()),
                timeout=self.timeout).containers}
            by_uid = self.rt.ListPodSandbox(cri.ListPodSandboxRequest(
                filter=cri.PodSandboxFilter(label_selector={UID_LABEL: self.watched_uid})),
                timeout=self.timeout).items
        except grpc.RpcError as err:
            return Relist(at, error=f"{err.code().name}: {err.details()}")
        # What had to be there all along: a change made while the relist ran may
        # rightly show or not.
        after = self._expected()
        sandboxes, containers = before[0] & after[0], before[1] & after[1]
        missing = sorted((sandboxes - listed) | (containers - listed_containers))
        if not by_uid:
            missing.append(f"uid {self.watched_uid}")
        return Relist(at, missing=missing)


def partial(relists: list[Relist]) -> list[Relist]:
    return [r for r in relists if not r.error and r.missing]


def longest_failure(relists: list[Relist]) -> float:
    """Seconds of the longest run of failed relists (from its first to the next success)."""
    longest, since = 0.0, None
    for relist in relists:
        if relist.error and since is None:
            since = relist.at
        elif not relist.error and since is not None:
            longest, since = max(longest, relist.at - since), None
    if since is not None:
        longest = max(longest, relists[-1].at - since)
    return longest


def summary(relists: list[Relist]) -> str:
    failed = [r for r in relists if r.error]
    bad = partial(relists)
    return (f"{len(relists)} relists, {len(failed)} failed (longest {longest_failure(relists):.1f}s"
            f"{', first: ' + failed[0].error if failed else ''}), {len(bad)} partial"
            f"{' (first lacked ' + ', '.join(bad[0].missing[:4]) + ')' if bad else ''}")
