"""The fake runtime's in-memory world: sandboxes, containers, images, stats.

One method per unary CRI RPC, named like the RPC, taking and returning v1
messages; tests/support/fakeruntime.py serves it over gRPC in a process of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import grpc
from cri_api.v1 import api_pb2 as cri

PRELOADED_IMAGES = ("docker.io/library/busybox:latest", "registry.k8s.io/pause:3.9")
CPU_METRIC = "container_cpu_usage_seconds_total"


class CriError(Exception):
    """A failed CRI call, delivered to the client as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now_ns() -> int:
    return time.time_ns()


def _u64(value: int) -> cri.UInt64Value:
    return cri.UInt64Value(value=value)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _repository(image_name: str) -> str:
    """Strip the tag, but not a registry port, from an image name."""
    head, _, last = image_name.rpartition("/")
    repo = last.split(":", 1)[0]
    return f"{head}/{repo}" if head else repo


def make_image(name: str) -> cri.Image:
    """Build a deterministic image record, so ids are predictable in tests."""
    if "@" in name:
        tags, digests = [], [name]
    else:
        tags = [name]
        digests = [f"{_repository(name)}@sha256:{sha256_hex('digest:' + name)}"]
    return cri.Image(
        id="sha256:" + sha256_hex(name),
        repo_tags=tags,
        repo_digests=digests,
        size=1_000_000 + len(name),
    )


def _labels_match(labels: Any, selector: Any) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass
class FakeContainer:
    # ContainerStatus has no sandbox field, so the owning sandbox is kept alongside.
    pod_sandbox_id: str
    status: cri.ContainerStatus


class RuntimeState:
    """The fake's in-memory world: one method per unary CRI RPC, named like the RPC."""

    def __init__(self, name: str, url_base: str) -> None:
        self.name = name
        self.url_base = url_base
        self.sandboxes: dict[str, cri.PodSandboxStatus] = {}
        self.containers: dict[str, FakeContainer] = {}
        self.images: dict[str, cri.Image] = {}
        self.subscribers: set[asyncio.Queue[cri.ContainerEventResponse]] = set()
        self._sandboxes_created = 0
        for image_name in PRELOADED_IMAGES:
            self._add_image(image_name)

    # --- helpers -------------------------------------------------------

    def _new_id(self, kind: str) -> str:
        # The runtime name is embedded so tests can tell which runtime made an object.
        return f"{self.name}-{kind}-{secrets.token_hex(6)}"

    def _info(self, verbose: bool) -> dict[str, str]:
        return {"name": self.name} if verbose else {}

    def _stream_url(self, kind: str) -> str:
        return f"{self.url_base}/cri/{kind}/{secrets.token_hex(8)}"

    def _sandbox(self, sandbox_id: str) -> cri.PodSandboxStatus:
        try:
            return self.sandboxes[sandbox_id]
        except KeyError:
            raise CriError(grpc.StatusCode.NOT_FOUND, f"pod sandbox {sandbox_id} not found") from None

    def _container(self, container_id: str) -> FakeContainer:
        try:
            return self.containers[container_id]
        except KeyError:
            raise CriError(grpc.StatusCode.NOT_FOUND, f"container {container_id} not found") from None

    def _containers_of(self, sandbox_id: str) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.pod_sandbox_id == sandbox_id]

    def _find_image(self, ref: str) -> cri.Image | None:
        for image in self.images.values():
            if ref == image.id or ref in image.repo_tags or ref in image.repo_digests:
                return image
        return None

    def _add_image(self, name: str) -> cri.Image:
        image = make_image(name)
        self.images[image.id] = image
        return image

    def _emit(self, container: FakeContainer, event_type: int) -> None:
        # Messages are copied into the event, so later state changes don't leak into it.
        event = cri.ContainerEventResponse(
            container_id=container.status.id,
            container_event_type=event_type,
            created_at=_now_ns(),
            containers_statuses=[container.status],
        )
        sandbox = self.sandboxes.get(container.pod_sandbox_id)
        if sandbox is not None:
            event.pod_sandbox_status.CopyFrom(sandbox)
        for queue in self.subscribers:
            queue.put_nowait(event)

    def _stop_container(self, container: FakeContainer) -> None:
        status = container.status
        if status.state == cri.CONTAINER_EXITED:
            return
        status.state = cri.CONTAINER_EXITED
        status.finished_at = _now_ns()
        status.exit_code = 0
        status.reason = "Completed"
        self._emit(container, cri.CONTAINER_STOPPED_EVENT)

    def _remove_container(self, container: FakeContainer) -> None:
        del self.containers[container.status.id]
        self._emit(container, cri.CONTAINER_DELETED_EVENT)

    async def events(self) -> AsyncIterator[cri.ContainerEventResponse]:
        """Yield container events until the consumer goes away."""
        queue: asyncio.Queue[cri.ContainerEventResponse] = asyncio.Queue()
        self.subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            # A cancelled stream lands here; without this every subscriber would leak.
            self.subscribers.discard(queue)

    # --- runtime info --------------------------------------------------

    def Version(self, req: cri.VersionRequest) -> cri.VersionResponse:
        return cri.VersionResponse(
            version="0.1.0", runtime_name=self.name, runtime_version="1.0.0", runtime_api_version="v1"
        )

    def Status(self, req: cri.StatusRequest) -> cri.StatusResponse:
        conditions = [
            cri.RuntimeCondition(type="RuntimeReady", status=True),
            cri.RuntimeCondition(type="NetworkReady", status=True),
        ]
        info = self._info(req.verbose)
        if req.verbose:
            # Lets tests check that cancelled event streams really went away.
            info["event_subscribers"] = str(len(self.subscribers))
        return cri.StatusResponse(status=cri.RuntimeStatus(conditions=conditions), info=info)

    def RuntimeConfig(self, req: cri.RuntimeConfigRequest) -> cri.RuntimeConfigResponse:
        return cri.RuntimeConfigResponse(linux=cri.LinuxRuntimeConfiguration(cgroup_driver=cri.SYSTEMD))

    def UpdateRuntimeConfig(self, req: cri.UpdateRuntimeConfigRequest) -> cri.UpdateRuntimeConfigResponse:
        return cri.UpdateRuntimeConfigResponse()

    # --- pod sandboxes -------------------------------------------------

    def RunPodSandbox(self, req: cri.RunPodSandboxRequest) -> cri.RunPodSandboxResponse:
        self._sandboxes_created += 1
        sandbox_id = self._new_id("sb")
        config = req.config
        self.sandboxes[sandbox_id] = cri.PodSandboxStatus(
            id=sandbox_id,
            metadata=config.metadata,
            state=cri.SANDBOX_READY,
            created_at=_now_ns(),
            network=cri.PodSandboxNetworkStatus(ip=f"10.0.0.{(self._sandboxes_created - 1) % 254 + 1}"),
            labels=config.labels,
            annotations=config.annotations,
            runtime_handler=req.runtime_handler,
        )
        return cri.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    def StopPodSandbox(self, req: cri.StopPodSandboxRequest) -> cri.StopPodSandboxResponse:
        sandbox = self._sandbox(req.pod_sandbox_id)
        for container in self._containers_of(sandbox.id):
            self._stop_container(container)
        sandbox.state = cri.SANDBOX_NOTREADY
        return cri.StopPodSandboxResponse()

    def RemovePodSandbox(self, req: cri.RemovePodSandboxRequest) -> cri.RemovePodSandboxResponse:
        # CRI requires removal to be idempotent, so an unknown id is not an error.
        if req.pod_sandbox_id in self.sandboxes:
            for container in self._containers_of(req.pod_sandbox_id):
                self._remove_container(container)
            del self.sandboxes[req.pod_sandbox_id]
        return cri.RemovePodSandboxResponse()

    def PodSandboxStatus(self, req: cri.PodSandboxStatusRequest) -> cri.PodSandboxStatusResponse:
        return cri.PodSandboxStatusResponse(
            status=self._sandbox(req.pod_sandbox_id), info=self._info(req.verbose), timestamp=_now_ns()
        )

    def ListPodSandbox(self, req: cri.ListPodSandboxRequest) -> cri.ListPodSandboxResponse:
        wanted = req.filter
        items = [
            cri.PodSandbox(
                id=s.id,
                metadata=s.metadata,
                state=s.state,
                created_at=s.created_at,
                labels=s.labels,
                annotations=s.annotations,
                runtime_handler=s.runtime_handler,
            )
            for s in self.sandboxes.values()
            if (not wanted.id or s.id == wanted.id)
            and (not wanted.HasField("state") or s.state == wanted.state.state)
            and _labels_match(s.labels, wanted.label_selector)
        ]
        return cri.ListPodSandboxResponse(items=items)

    def _sandbox_stats(self, sandbox: cri.PodSandboxStatus) -> cri.PodSandboxStats:
        now = _now_ns()
        return cri.PodSandboxStats(
            attributes=cri.PodSandboxAttributes(
                id=sandbox.id, metadata=sandbox.metadata, labels=sandbox.labels, annotations=sandbox.annotations
            ),
            linux=cri.LinuxPodSandboxStats(
                cpu=cri.CpuUsage(timestamp=now, usage_core_nano_seconds=_u64(2_000_000), usage_nano_cores=_u64(2_000)),
                memory=cri.MemoryUsage(timestamp=now, working_set_bytes=_u64(8 << 20), usage_bytes=_u64(8 << 20)),
                containers=[self._container_stats(c) for c in self._containers_of(sandbox.id)],
            ),
        )

    def PodSandboxStats(self, req: cri.PodSandboxStatsRequest) -> cri.PodSandboxStatsResponse:
        return cri.PodSandboxStatsResponse(stats=self._sandbox_stats(self._sandbox(req.pod_sandbox_id)))

    def ListPodSandboxStats(self, req: cri.ListPodSandboxStatsRequest) -> cri.ListPodSandboxStatsResponse:
        wanted = req.filter
        stats = [
            self._sandbox_stats(s)
            for s in self.sandboxes.values()
            if (not wanted.id or s.id == wanted.id) and _labels_match(s.labels, wanted.label_selector)
        ]
        return cri.ListPodSandboxStatsResponse(stats=stats)

    def UpdatePodSandboxResources(
        self, req: cri.UpdatePodSandboxResourcesRequest
    ) -> cri.UpdatePodSandboxResourcesResponse:
        self._sandbox(req.pod_sandbox_id)
        return cri.UpdatePodSandboxResourcesResponse()

    def PortForward(self, req: cri.PortForwardRequest) -> cri.PortForwardResponse:
        self._sandbox(req.pod_sandbox_id)
        return cri.PortForwardResponse(url=self._stream_url("portforward"))

    # --- containers ----------------------------------------------------

    def CreateContainer(self, req: cri.CreateContainerRequest) -> cri.CreateContainerResponse:
        self._sandbox(req.pod_sandbox_id)
        config = req.config
        image = self._find_image(config.image.image)
        container_id = self._new_id("ct")
        container = FakeContainer(
            req.pod_sandbox_id,
            cri.ContainerStatus(
                id=container_id,
                metadata=config.metadata,
                state=cri.CONTAINER_CREATED,
                created_at=_now_ns(),
                image=config.image,
                image_ref=image.id if image else config.image.image,
                image_id=image.id if image else "",
                labels=config.labels,
                annotations=config.annotations,
                log_path=config.log_path,
            ),
        )
        self.containers[container_id] = container
        self._emit(container, cri.CONTAINER_CREATED_EVENT)
        return cri.CreateContainerResponse(container_id=container_id)

    def StartContainer(self, req: cri.StartContainerRequest) -> cri.StartContainerResponse:
        container = self._container(req.container_id)
        if container.status.state != cri.CONTAINER_CREATED:
            raise CriError(
                grpc.StatusCode.FAILED_PRECONDITION, f"container {req.container_id} is not in created state"
            )
        container.status.state = cri.CONTAINER_RUNNING
        container.status.started_at = _now_ns()
        self._emit(container, cri.CONTAINER_STARTED_EVENT)
        return cri.StartContainerResponse()

    def StopContainer(self, req: cri.StopContainerRequest) -> cri.StopContainerResponse:
        self._stop_container(self._container(req.container_id))
        return cri.StopContainerResponse()

    def RemoveContainer(self, req: cri.RemoveContainerRequest) -> cri.RemoveContainerResponse:
        # CRI requires removal to be idempotent, so an unknown id is not an error.
        container = self.containers.get(req.container_id)
        if container is not None:
            self._remove_container(container)
        return cri.RemoveContainerResponse()

    def ContainerStatus(self, req: cri.ContainerStatusRequest) -> cri.ContainerStatusResponse:
        container = self._container(req.container_id)
        return cri.ContainerStatusResponse(status=container.status, info=self._info(req.verbose))

    def ListContainers(self, req: cri.ListContainersRequest) -> cri.ListContainersResponse:
        wanted = req.filter
        containers = [
            cri.Container(
                id=c.status.id,
                pod_sandbox_id=c.pod_sandbox_id,
                metadata=c.status.metadata,
                image=c.status.image,
                image_ref=c.status.image_ref,
                image_id=c.status.image_id,
                state=c.status.state,
                created_at=c.status.created_at,
                labels=c.status.labels,
                annotations=c.status.annotations,
            )
            for c in self.containers.values()
            if (not wanted.id or c.status.id == wanted.id)
            and (not wanted.pod_sandbox_id or c.pod_sandbox_id == wanted.pod_sandbox_id)
            and (not wanted.HasField("state") or c.status.state == wanted.state.state)
            and _labels_match(c.status.labels, wanted.label_selector)
        ]
        return cri.ListContainersResponse(containers=containers)

    def UpdateContainerResources(
        self, req: cri.UpdateContainerResourcesRequest
    ) -> cri.UpdateContainerResourcesResponse:
        self._container(req.container_id)
        return cri.UpdateContainerResourcesResponse()

    def ReopenContainerLog(self, req: cri.ReopenContainerLogRequest) -> cri.ReopenContainerLogResponse:
        self._container(req.container_id)
        return cri.ReopenContainerLogResponse()

    def CheckpointContainer(self, req: cri.CheckpointContainerRequest) -> cri.CheckpointContainerResponse:
        self._container(req.container_id)
        return cri.CheckpointContainerResponse()

    def ExecSync(self, req: cri.ExecSyncRequest) -> cri.ExecSyncResponse:
        self._container(req.container_id)
        # Echoing the command lets tests produce answers of any size they like.
        stdout = b" ".join(arg.encode() for arg in req.cmd) + b"\n"
        return cri.ExecSyncResponse(stdout=stdout, exit_code=0)

    def Exec(self, req: cri.ExecRequest) -> cri.ExecResponse:
        self._container(req.container_id)
        return cri.ExecResponse(url=self._stream_url("exec"))

    def Attach(self, req: cri.AttachRequest) -> cri.AttachResponse:
        self._container(req.container_id)
        return cri.AttachResponse(url=self._stream_url("attach"))

    def _container_stats(self, container: FakeContainer) -> cri.ContainerStats:
        now = _now_ns()
        status = container.status
        return cri.ContainerStats(
            attributes=cri.ContainerAttributes(
                id=status.id, metadata=status.metadata, labels=status.labels, annotations=status.annotations
            ),
            cpu=cri.CpuUsage(timestamp=now, usage_core_nano_seconds=_u64(1_000_000), usage_nano_cores=_u64(1_000)),
            memory=cri.MemoryUsage(timestamp=now, working_set_bytes=_u64(4 << 20), usage_bytes=_u64(4 << 20)),
        )

    def ContainerStats(self, req: cri.ContainerStatsRequest) -> cri.ContainerStatsResponse:
        return cri.ContainerStatsResponse(stats=self._container_stats(self._container(req.container_id)))

    def ListContainerStats(self, req: cri.ListContainerStatsRequest) -> cri.ListContainerStatsResponse:
        wanted = req.filter
        stats = [
            self._container_stats(c)
            for c in self.containers.values()
            if (not wanted.id or c.status.id == wanted.id)
            and (not wanted.pod_sandbox_id or c.pod_sandbox_id == wanted.pod_sandbox_id)
            and _labels_match(c.status.labels, wanted.label_selector)
        ]
        return cri.ListContainerStatsResponse(stats=stats)

    # --- metrics -------------------------------------------------------

    def ListMetricDescriptors(self, req: cri.ListMetricDescriptorsRequest) -> cri.ListMetricDescriptorsResponse:
        descriptor = cri.MetricDescriptor(name=CPU_METRIC, help="Cumulative cpu time consumed in seconds.")
        return cri.ListMetricDescriptorsResponse(descriptors=[descriptor])

    def ListPodSandboxMetrics(self, req: cri.ListPodSandboxMetricsRequest) -> cri.ListPodSandboxMetricsResponse:
        def cpu_metric() -> cri.Metric:
            return cri.Metric(name=CPU_METRIC, timestamp=_now_ns(), metric_type=cri.COUNTER, value=_u64(1))

        metrics = [
            cri.PodSandboxMetrics(
                pod_sandbox_id=sandbox_id,
                metrics=[cpu_metric()],
                container_metrics=[
                    cri.ContainerMetrics(container_id=c.status.id, metrics=[cpu_metric()])
                    for c in self._containers_of(sandbox_id)
                ],
            )
            for sandbox_id in self.sandboxes
        ]
        return cri.ListPodSandboxMetricsResponse(pod_metrics=metrics)

    # --- images --------------------------------------------------------

    def ListImages(self, req: cri.ListImagesRequest) -> cri.ListImagesResponse:
        ref = req.filter.image.image
        if not ref:
            return cri.ListImagesResponse(images=list(self.images.values()))
        image = self._find_image(ref)
        return cri.ListImagesResponse(images=[image] if image else [])

    def ImageStatus(self, req: cri.ImageStatusRequest) -> cri.ImageStatusResponse:
        image = self._find_image(req.image.image)
        # CRI convention: an unknown image is an empty answer, not an error.
        if image is None:
            return cri.ImageStatusResponse()
        return cri.ImageStatusResponse(image=image, info=self._info(req.verbose))

    def PullImage(self, req: cri.PullImageRequest) -> cri.PullImageResponse:
        name = req.image.image
        if not name:
            raise CriError(grpc.StatusCode.INVALID_ARGUMENT, "image name is required")
        if name.startswith("missing/"):
            raise CriError(grpc.StatusCode.NOT_FOUND, "image not found in registry")
        image = self._find_image(name) or self._add_image(name)
        return cri.PullImageResponse(image_ref=image.id)

    def RemoveImage(self, req: cri.RemoveImageRequest) -> cri.RemoveImageResponse:
        image = self._find_image(req.image.image)
        if image is not None:
            del self.images[image.id]
        return cri.RemoveImageResponse()

    def ImageFsInfo(self, req: cri.ImageFsInfoRequest) -> cri.ImageFsInfoResponse:
        def usage() -> cri.FilesystemUsage:
            return cri.FilesystemUsage(
                timestamp=_now_ns(),
                fs_id=cri.FilesystemIdentifier(mountpoint=f"/var/lib/{self.name}"),
                used_bytes=_u64(sum(image.size for image in self.images.values())),
                inodes_used=_u64(100 * len(self.images)),
            )

        return cri.ImageFsInfoResponse(image_filesystems=[usage()], container_filesystems=[usage()])
