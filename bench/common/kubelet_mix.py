"""A replay of the CRI calls a real kubelet 1.32 makes on a quiet node, at the rates
measured through criproxy (../shared/KUBELET.md, "The call mix of a real kubelet";
issue 31), against one socket.

    python bench/common/kubelet_mix.py --target unix:///path --seconds 40 [--get-pod-status 0]

Steady state, default periods, one container a pod. Where each call comes from in
kubelet (and so how it scales with the pods), and the rate it gives at 60 pods:

| source (kubelet) | period | calls | at 60 pods, /s |
|---|---|---|---|
| PLEG relist (`GetPods(all)`) | 1 s | ListPodSandbox, ListContainers{} (unfiltered) | 1 + 1 |
| housekeeping, HandlePodCleanups (`runtimeCache`, `GetPods(!all)`) | 2 s | ListPodSandbox(state READY), ListContainers(state RUNNING) | 0.5 + 0.5 |
| CRI stats provider (`getPodAndContainerMaps`, `ListContainerStats`) | 1/0.12 s | ListContainers{}, ListPodSandbox{}, ListContainerStats{} | 0.12 x 3 |
| container log manager (`rotateLogs`) | 10 s | ListContainers{}; ContainerStatus per running container | 0.1; N/10 = 6.0 |
| runtime version | 1/0.82 s | Version | 0.82 |
| runtime health (`updateRuntimeUp`) | 5 s | Status | 0.2 |
| image fs (eviction, image GC) | 10 s | ImageFsInfo | 0.1 |
| image manager | ~33 s | ListImages | 0.03 |

Totals at 60 pods: ListPodSandbox 1.62/s and ListContainers 1.72/s, as measured
(1.62 and 1.73). Only the log manager's ContainerStatus grows with the pods. The
measured mix has no PodSandboxStatus at all, so a quiet node makes no
GetPodStatus; `--get-pod-status R` adds R a second (for a node with churn): the
uid-filtered ListPodSandbox, PodSandboxStatus, the uid-filtered ListContainers
and ContainerStatus per container, as kuberuntime_manager's GetPodStatus asks.

The log manager's ContainerStatus calls are spread evenly over its 10 s
(`--log-manager bunched`: one after another right after its ListContainers, as
kubelet 1.32 makes them). Every job's calls run as a task of their own, sequentially
inside it, as kubelet's goroutines do. The schedule is fixed by the seconds and
the containers listed at the start, so every target gets the same sequence.

Prints "started" when the schedule starts and "done" when its last call has
ended, then a JSON summary (per method: calls, errors, p50/p99 ms).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common.kubelet import CriCalls  # noqa: E402
from bench.common.loadgen import percentile  # noqa: E402

KUBE_RUNTIME_API_VERSION = "0.1.0"  # what kubelet's Version call sends


@dataclass(frozen=True)
class Periodic:
    """A kubelet loop: `job` every `period` s, the first at `phase` s. Phases are
    spread so that the loops do not all fire at the same instant."""
    job: str
    period: float
    phase: float


# The loops of a quiet kubelet, by the rates measured (see the table above).
PERIODIC = (
    Periodic("relist", 1.0, 0.0),
    Periodic("housekeeping", 2.0, 0.5),
    Periodic("stats", 1 / 0.12, 1.1),
    Periodic("log_manager_list", 10.0, 0.2),
    Periodic("version", 1 / 0.82, 0.3),
    Periodic("status", 5.0, 0.7),
    Periodic("image_fs_info", 10.0, 3.3),
    Periodic("list_images", 1 / 0.03, 20.0),
)
LOG_MANAGER_PERIOD = 10.0


def schedule(seconds: float, containers: list[str], pods: list[pb.PodSandbox],
             get_pod_status: float, bunched: bool = False) -> list[tuple[float, str, object]]:
    """(time from the start, job, its argument), sorted by time. `bunched`: the log
    manager's ContainerStatus calls right after its ListContainers, one after another
    (kubelet 1.32's way), instead of spread evenly over its period."""
    events: list[tuple[float, str, object]] = []
    for loop in PERIODIC:
        at = loop.phase
        while at < seconds:
            bunch = sorted(containers) if bunched and loop.job == "log_manager_list" else None
            events.append((at, loop.job, bunch))
            at += loop.period
    # The log manager asks about every running container once per period, evenly spread.
    for index, container in enumerate([] if bunched else sorted(containers)):
        at = 0.05 + index * LOG_MANAGER_PERIOD / max(1, len(containers))
        while at < seconds:
            events.append((at, "container_status", container))
            at += LOG_MANAGER_PERIOD
    if get_pod_status > 0 and pods:
        pick = random.Random(1)
        at = 0.4
        while at < seconds:
            events.append((at, "get_pod_status", pick.choice(pods)))
            at += 1 / get_pod_status
    return sorted(events, key=lambda event: event[0])


class Replay(CriCalls):
    def __init__(self, target: str, timeout: float) -> None:
        super().__init__(target, timeout)
        self.jobs: dict[str, Callable[[object], Awaitable[None]]] = {
            "relist": self.relist, "housekeeping": self.housekeeping, "stats": self.stats,
            "log_manager_list": self.log_manager_list, "version": self.version,
            "status": self.status, "image_fs_info": self.image_fs_info,
            "list_images": self.list_images, "container_status": self.container_status,
            "get_pod_status": self.get_pod_status}

    # ---- kubelet's loops, each one's calls in kubelet's order

    async def relist(self, _: object) -> None:
        """GenericPLEG.Relist -> GetPods(all=true): no sandbox filter, an empty container one."""
        await self.call("ListPodSandbox", self.runtime, pb.ListPodSandboxRequest())
        await self.call("ListContainers", self.runtime,
                        pb.ListContainersRequest(filter=pb.ContainerFilter()))

    async def housekeeping(self, _: object) -> None:
        """HandlePodCleanups -> runtimeCache -> GetPods(all=false): ready and running only."""
        await self.call("ListPodSandbox", self.runtime, pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))))
        await self.call("ListContainers", self.runtime, pb.ListContainersRequest(
            filter=pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))))

    async def stats(self, _: object) -> None:
        """The CRI stats provider: getPodAndContainerMaps, then ListContainerStats."""
        await self.call("ListContainers", self.runtime,
                        pb.ListContainersRequest(filter=pb.ContainerFilter()))
        await self.call("ListPodSandbox", self.runtime,
                        pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter()))
        await self.call("ListContainerStats", self.runtime,
                        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter()))

    async def log_manager_list(self, bunched: object) -> None:
        await self.call("ListContainers", self.runtime,
                        pb.ListContainersRequest(filter=pb.ContainerFilter()))
        for container_id in bunched or ():  # type: ignore[attr-defined]
            await self.container_status(container_id)

    async def container_status(self, container_id: object) -> None:
        await self.call("ContainerStatus", self.runtime,
                        pb.ContainerStatusRequest(container_id=str(container_id)))

    async def version(self, _: object) -> None:
        await self.call("Version", self.runtime,
                        pb.VersionRequest(version=KUBE_RUNTIME_API_VERSION))

    async def status(self, _: object) -> None:
        await self.call("Status", self.runtime, pb.StatusRequest())

    async def image_fs_info(self, _: object) -> None:
        await self.call("ImageFsInfo", self.images, pb.ImageFsInfoRequest())

    async def list_images(self, _: object) -> None:
        await self.call("ListImages", self.images, pb.ListImagesRequest())

    async def get_pod_status(self, pod: object) -> None:
        """kuberuntime_manager's GetPodStatus for one pod (only with --get-pod-status)."""
        assert isinstance(pod, pb.PodSandbox)
        await self.pod_status(pod)

    # ---- the run

    async def node(self) -> tuple[list[str], list[pb.PodSandbox]]:
        """The running containers and ready pods, as kubelet knows them before the loops
        (not counted: the channel's first call)."""
        containers = await self.runtime.ListContainers(pb.ListContainersRequest(
            filter=pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))),
            timeout=self.timeout)
        pods = await self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))),
            timeout=self.timeout)
        return [c.id for c in containers.containers], list(pods.items)

    async def run(self, seconds: float, get_pod_status: float, bunched: bool) -> None:
        containers, pods = await self.node()
        events = schedule(seconds, containers, pods, get_pod_status, bunched)
        tasks = []
        print("started", flush=True)  # the driver starts its CPU clock here
        started = time.monotonic()
        for at, job, argument in events:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            tasks.append(asyncio.create_task(self.jobs[job](argument)))
        await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
        await asyncio.gather(*tasks)
        print("done", flush=True)  # ... and stops it here
        await self.channel.close()

    def summary(self) -> dict:
        out = {}
        for name in sorted(set(self.latencies) | set(self.errors)):
            ordered = sorted(self.latencies[name])
            out[name] = {"calls": len(ordered) + sum(self.errors[name].values()),
                         "errors": sum(self.errors[name].values()),
                         "error_codes": dict(self.errors[name]),
                         "p50_ms": percentile(ordered, 50) * 1000 if ordered else 0.0,
                         "p99_ms": percentile(ordered, 99) * 1000 if ordered else 0.0}
        return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--get-pod-status", type=float, default=0.0, metavar="PER_S",
                        help="GetPodStatus of so many pods a second (0: a quiet node, as measured)")
    parser.add_argument("--log-manager", choices=("spread", "bunched"), default="spread",
                        help="its ContainerStatus calls spread over 10 s, or one after another "
                             "after its ListContainers (kubelet 1.32)")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    replay = Replay(args.target, args.timeout)
    await replay.run(args.seconds, args.get_pod_status, args.log_manager == "bunched")
    json.dump(replay.summary(), sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
