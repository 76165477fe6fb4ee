"""A replay of the CRI calls kubelet makes for a quiet node, against one socket.

    python bench/common/kubelet.py --target unix:///path --seconds 60 [--changed 2] > summary.json

Every second (kubelet's PLEG relist): ListPodSandbox and ListContainers, no
filter; then, for `--changed` pods picked at random from that list, what
kubelet's GetPodStatus asks for a pod whose containers changed: ListPodSandbox
and ListContainers filtered by the pod's uid label, PodSandboxStatus, and
ContainerStatus for each of its containers. Every 5 s: Status (kubelet's
runtime health check). Every 10 s: ListPodSandboxStats, ListContainerStats
and ImageFsInfo (the stats provider and eviction manager).

Each second's calls run as a task of their own, sequentially inside it (as
kubelet's relist does), so a runtime that hangs holds up that second's calls
only, not the replay. Prints per-method call counts, errors and latencies.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import grpc.aio
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc
from cri_api.v1alpha2 import api_pb2_grpc as rpc_v1alpha2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common.loadgen import percentile  # noqa: E402

UID_LABEL = "io.kubernetes.pod.uid"


class CriCalls:
    """A kubelet-like client: its channel and stubs, and each call's latency or error
    code by method (the replays here and in kubelet_mix.py)."""

    def __init__(self, target: str, timeout: float, api: str = "v1",
                 skip: frozenset[str] = frozenset()) -> None:
        self.channel = grpc.aio.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 << 20)])
        # v1alpha2's messages are wire-identical to v1's: only the service names differ.
        stubs = rpc if api == "v1" else rpc_v1alpha2
        self.runtime = stubs.RuntimeServiceStub(self.channel)
        self.images = stubs.ImageServiceStub(self.channel)
        self.skip = skip
        self.timeout = timeout
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, Counter] = defaultdict(Counter)

    async def call(self, name: str, stub: object, request: object) -> object | None:
        if name in self.skip:
            return None
        started = time.perf_counter()
        try:
            answer = await getattr(stub, name)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as err:
            self.errors[name][err.code().name] += 1
            return None
        self.latencies[name].append(time.perf_counter() - started)
        return answer

    async def pod_status(self, pod: pb.PodSandbox) -> None:
        """kubelet's GetPodStatus for one pod (kuberuntime_manager.go)."""
        selector = {UID_LABEL: pod.labels.get(UID_LABEL, "")}
        await self.call("ListPodSandbox", self.runtime, pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(label_selector=selector)))
        await self.call("PodSandboxStatus", self.runtime,
                        pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id))
        containers = await self.call("ListContainers", self.runtime, pb.ListContainersRequest(
            filter=pb.ContainerFilter(label_selector=selector)))
        for container in (containers.containers if containers is not None else []):
            await self.call("ContainerStatus", self.runtime,
                            pb.ContainerStatusRequest(container_id=container.id))


class Replay(CriCalls):
    def __init__(self, target: str, timeout: float, changed: int, api: str = "v1",
                 skip: frozenset[str] = frozenset()) -> None:
        super().__init__(target, timeout, api, skip)
        self.changed = changed
        self.random = random.Random(1)

    async def tick(self, second: int) -> None:
        pods = await self.call("ListPodSandbox", self.runtime, pb.ListPodSandboxRequest())
        await self.call("ListContainers", self.runtime,
                        pb.ListContainersRequest(filter=pb.ContainerFilter()))
        items = list(pods.items) if pods is not None else []
        for pod in self.random.sample(items, min(self.changed, len(items))):
            await self.pod_status(pod)
        if second % 5 == 0:
            await self.call("Status", self.runtime, pb.StatusRequest())
        if second % 10 == 0:
            await self.call("ListPodSandboxStats", self.runtime,
                            pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter()))
            await self.call("ListContainerStats", self.runtime,
                            pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter()))
            await self.call("ImageFsInfo", self.images, pb.ImageFsInfoRequest())

    async def run(self, seconds: float) -> None:
        tasks = []
        print("started", flush=True)  # bench/suite/run.py starts its CPU clock here
        started = time.monotonic()
        second = 0
        while second < seconds:
            tasks.append(asyncio.create_task(self.tick(second)))
            second += 1
            await asyncio.sleep(max(0.0, started + second - time.monotonic()))
        await asyncio.gather(*tasks)
        await self.channel.close()

    def summary(self) -> dict:
        out = {}
        for name in sorted(set(self.latencies) | set(self.errors)):
            ordered = sorted(self.latencies[name])
            out[name] = {"calls": len(ordered), "errors": sum(self.errors[name].values()),
                         "error_codes": dict(self.errors[name]),
                         "p50_ms": percentile(ordered, 50) * 1000,
                         "p99_ms": percentile(ordered, 99) * 1000}
        return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--changed", type=int, default=2, help="pods whose status is read each second")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--api", choices=("v1", "v1alpha2"), default="v1",
                        help="the CRI service names to call (the Go original speaks v1alpha2)")
    parser.add_argument("--skip", action="append", default=[], metavar="METHOD",
                        help="never make this call (e.g. ListPodSandboxStats, not in v1alpha2)")
    args = parser.parse_args()
    replay = Replay(args.target, args.timeout, args.changed, args.api, frozenset(args.skip))
    await replay.run(args.seconds)
    json.dump(replay.summary(), sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
