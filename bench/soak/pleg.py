"""The soak client's relist, as kubelet's generic PLEG: every second, unfiltered
ListPodSandbox and ListContainers through criproxy (and, in a loop of its own,
Status every 5 s).

Each successful relist is judged against the client's `Expect` (a snapshot before
the relist and one after; only what both require counts):
- missing: a sandbox or container the client created and has not begun to remove
  is absent (kubelet would see ContainerDied/Removed and restart the pod);
- shown gone: an id whose removal was answered OK before the relist began is listed;
- wrong state: a live sandbox not SANDBOX_READY, or a started container not
  CONTAINER_RUNNING (kubelet would restart it just the same).
A failed relist is harmless while short; the stretches of failures are measured.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

import grpc
from cri_api.v1 import api_pb2 as pb

from bench.soak.calls import Calls
from bench.soak.state import NAMESPACE, Expect, wall

PERIOD = 1.0
LIST_TIMEOUT = 15.0
STATUS_EVERY = 5


@dataclasses.dataclass
class Relist:
    at: float
    wall: str
    seconds: float
    error: str = ""
    sandboxes: int = 0
    containers: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)
    shown_gone: list[str] = dataclasses.field(default_factory=list)
    wrong_state: list[str] = dataclasses.field(default_factory=list)

    @property
    def bad(self) -> bool:
        return bool(self.missing or self.shown_gone or self.wrong_state)


class Pleg(threading.Thread):
    def __init__(self, calls: Calls, expect: Expect,
                 housekeep: Callable[[list[pb.PodSandbox]], None]) -> None:
        super().__init__(name="pleg", daemon=True)
        self.calls = calls
        self.expect = expect
        self.housekeep = housekeep
        self.relists: list[Relist] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        status = threading.Thread(target=self.status_loop, name="status", daemon=True)
        status.start()
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.relists.append(self.relist())
            self.stop_event.wait(max(0.0, PERIOD - (time.monotonic() - started)))
        status.join(LIST_TIMEOUT * 2)

    def status_loop(self) -> None:
        """kubelet's runtime status check: its own loop, so a hung primary does not
        hold up the relist."""
        while not self.stop_event.wait(STATUS_EVERY):
            try:
                self.calls.call("Status", pb.StatusRequest(), "primary", timeout=LIST_TIMEOUT)
            except grpc.RpcError:
                pass

    def stop(self) -> None:
        self.stop_event.set()
        self.join(LIST_TIMEOUT * 4)

    def relist(self) -> Relist:
        at, when = time.monotonic(), wall()
        before = self.expect.snapshot()
        try:
            sandboxes = self.calls.call("ListPodSandbox", pb.ListPodSandboxRequest(),
                                        timeout=LIST_TIMEOUT).items
            containers = self.calls.call("ListContainers", pb.ListContainersRequest(
                filter=pb.ContainerFilter()), timeout=LIST_TIMEOUT).containers
        except grpc.RpcError as err:
            return Relist(at, when, time.monotonic() - at,
                          error=f"{err.code().name}: {(err.details() or '')[:200]}")
        after = self.expect.snapshot()
        ours = [s for s in sandboxes if s.metadata.namespace == NAMESPACE]
        pods = {s.id: s.state for s in sandboxes}
        ctrs = {c.id: c.state for c in containers}
        need_pods = before.sandboxes & after.sandboxes
        need_ctrs = before.containers & after.containers
        need_running = before.running & after.running
        relist = Relist(at, when, time.monotonic() - at, sandboxes=len(pods),
                        containers=len(ctrs))
        relist.missing = sorted((need_pods - pods.keys()) | (need_ctrs - ctrs.keys()))
        relist.shown_gone = sorted(before.gone & (pods.keys() | ctrs.keys()))
        relist.wrong_state = sorted(
            [f"{i} {pb.PodSandboxState.Name(pods[i])}" for i in need_pods & pods.keys()
             if pods[i] != pb.SANDBOX_READY] +
            [f"{i} {pb.ContainerState.Name(ctrs[i])}" for i in need_running & ctrs.keys()
             if ctrs[i] != pb.CONTAINER_RUNNING])
        self.housekeep(ours)
        return relist


def failing_stretches(relists: list[Relist]) -> list[dict]:
    """Runs of failed relists: from the first failure to the next success."""
    stretches, since, first = [], None, ""
    for relist in relists:
        if relist.error and since is None:
            since, first = relist, relist.error
        elif not relist.error and since is not None:
            stretches.append({"at": since.at, "wall": since.wall,
                              "seconds": round(relist.at - since.at, 2), "first_error": first})
            since = None
    if since is not None and relists:
        stretches.append({"at": since.at, "wall": since.wall,
                          "seconds": round(relists[-1].at - since.at, 2), "first_error": first,
                          "unfinished": True})
    return stretches
