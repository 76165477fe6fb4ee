"""A fake in-memory CRI runtime (runtime.v1) that journals every call it receives.

It runs as its own process on a unix socket, so tests can SIGSTOP/SIGKILL it
exactly like a real container runtime:

    python tests/fakeruntime.py --socket PATH --journal PATH [--name NAME]
        [--url-base URL] [--fail METHOD=CODE:message ...] [--delay METHOD=SECONDS ...]

Importing the module has no side effects; tests use start_fake() and read_journal().
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1alpha2 import api_pb2 as cri_v1alpha2
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

try:
    from tests import fakeknobs
except ImportError:  # run as a script: tests/ is on sys.path
    import fakeknobs  # type: ignore[no-redef]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
PRELOADED_IMAGES = ("docker.io/library/busybox:latest", "registry.k8s.io/pause:3.9")
CPU_METRIC = "container_cpu_usage_seconds_total"
READY_MESSAGE = "fakeruntime ready"
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class CriMethod:
    name: str
    request_type: type[Message]
    streaming: bool


CRI_VERSIONS = {"v1": cri, "v1alpha2": cri_v1alpha2}


def _cri_methods(version: str) -> dict[str, CriMethod]:
    """Map every gRPC path of one CRI version to its short name and request type.

    v1alpha2 messages are a wire-compatible subset of v1's, so one in-memory
    runtime (speaking v1 messages) serves both versions' paths.
    """
    methods = {}
    for service in CRI_VERSIONS[version].DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            methods[f"/{service.full_name}/{method.name}"] = CriMethod(
                method.name, getattr(cri, method.input_type.name), method.server_streaming
            )
    return methods


CRI_METHODS = _cri_methods("v1")
CRI_METHOD_NAMES = frozenset(method.name for method in CRI_METHODS.values())


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


def _sha256_hex(text: str) -> str:
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
        digests = [f"{_repository(name)}@sha256:{_sha256_hex('digest:' + name)}"]
    return cri.Image(
        id="sha256:" + _sha256_hex(name),
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


class Journal:
    """Append-only JSON-lines record of every call, flushed per line so it survives SIGKILL."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", encoding="utf-8")

    def record(self, method: str, request: Message | None, raw: bytes, metadata: Iterable[tuple[str, Any]],
               path: str = "") -> None:
        entry = {
            "method": method,
            "path": path,
            "request": None
            if request is None
            else json_format.MessageToDict(request, preserving_proto_field_name=True),
            "raw_b64": base64.b64encode(raw).decode("ascii"),
            "time": time.time(),
            # Binary (-bin) metadata is dropped: it is rarely interesting and not JSON.
            "metadata": {key: value for key, value in metadata or () if isinstance(value, str)},
        }
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_journal(path: str | Path) -> list[dict]:
    """Return the journal entries written so far (missing file: none)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    # A process killed mid-write can leave a partial last line; it has no newline yet.
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line]


class CriHandler(grpc.GenericRpcHandler):
    """Serve CRI with raw-bytes handlers, so the journal sees requests exactly as sent."""

    def __init__(
        self,
        state: RuntimeState,
        journal: Journal,
        failures: dict[str, tuple[grpc.StatusCode, str]],
        delays: dict[str, float],
        methods: dict[str, CriMethod],
        control: fakeknobs.Control | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.methods = methods
        self.control = control or fakeknobs.Control(None)
        self.state_file = state_file
        self.state = state
        self.journal = journal
        self.failures = failures
        self.delays = delays

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = handler_call_details.method
        method = self.methods.get(path)
        if method is None:
            return grpc.unary_unary_rpc_method_handler(partial(self._unknown, path))
        if method.streaming:
            return grpc.unary_stream_rpc_method_handler(partial(self._stream, method, path))
        return grpc.unary_unary_rpc_method_handler(partial(self._unary, method, path))

    async def _admit(self, method: CriMethod, path: str, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        """Journal the call, then apply the configured delay and failure."""
        try:
            request = method.request_type.FromString(raw)
        except DecodeError:
            request = None
        self.journal.record(method.name, request, raw, context.invocation_metadata(), path)
        if request is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse {method.name} request")
        delay = self.delays.get(method.name, 0.0) + self.control.delay(method.name)
        if delay:
            await asyncio.sleep(delay)
        if method.name in self.failures:
            await context.abort(*self.failures[method.name])
        return request

    async def _unary(self, method: CriMethod, path: str, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = await self._admit(method, path, raw, context)
        try:
            response = getattr(self.state, method.name)(request)
        except CriError as error:
            await context.abort(error.code, error.message)
        if self.state_file is not None:
            fakeknobs.save_state(self.state_file, self.state.sandboxes, self.state.containers)
        return response.SerializeToString()

    async def _stream(self, method: CriMethod, path: str, raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await self._admit(method, path, raw, context)
        async for event in self.state.events():
            yield event.SerializeToString()

    async def _unknown(self, path: str, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Journaled too, so tests can see e.g. v1alpha2 calls that reached the runtime.
        self.journal.record(path, None, raw, context.invocation_metadata(), path)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")


def _method_name(text: str) -> str:
    if text not in CRI_METHOD_NAMES:
        raise argparse.ArgumentTypeError(f"unknown CRI method {text!r}")
    return text


def _status_code(text: str) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if text.upper() == code.name or text == str(code.value[0]):
            return code
    raise argparse.ArgumentTypeError(f"unknown gRPC status code {text!r}")


def _parse_failure(text: str) -> tuple[str, tuple[grpc.StatusCode, str]]:
    method, _, rest = text.partition("=")
    code, _, message = rest.partition(":")
    return _method_name(method), (_status_code(code), message)


def _parse_delay(text: str) -> tuple[str, float]:
    method, _, seconds = text.partition("=")
    try:
        return _method_name(method), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad delay {text!r}, want METHOD=SECONDS") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fake in-memory CRI runtime for tests.")
    parser.add_argument("--socket", required=True, type=Path, help="unix socket path to serve on")
    parser.add_argument("--journal", required=True, type=Path, help="JSON-lines file recording every call")
    parser.add_argument("--name", default="fake", help="runtime name, embedded in ids")
    parser.add_argument("--url-base", default="", help="prefix of Exec/Attach/PortForward urls")
    parser.add_argument(
        "--fail", action="append", default=[], type=_parse_failure, metavar="METHOD=CODE:message",
        help="make METHOD always fail with this gRPC status",
    )
    parser.add_argument(
        "--delay", action="append", default=[], type=_parse_delay, metavar="METHOD=SECONDS",
        help="sleep before answering METHOD",
    )
    parser.add_argument("--state", type=Path, help="keep sandboxes and containers in this file")
    parser.add_argument("--control", type=Path, help="JSON file of delays, read on every call")
    parser.add_argument(
        "--cri-versions", default="v1", type=_cri_versions, metavar="V[,V]",
        help="CRI versions to serve: v1, v1alpha2 or both (v1,v1alpha2)",
    )
    return parser.parse_args(argv)


def _cri_versions(text: str) -> dict[str, CriMethod]:
    methods: dict[str, CriMethod] = {}
    for version in text.split(","):
        if version not in CRI_VERSIONS:
            raise argparse.ArgumentTypeError(f"unknown CRI version {version!r}")
        methods.update(_cri_methods(version))
    return methods


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT, then stop and remove the socket."""
    args.socket.unlink(missing_ok=True)  # a SIGKILLed predecessor leaves its socket behind
    journal = Journal(args.journal)
    state = RuntimeState(args.name, args.url_base)
    if args.state is not None:
        state.sandboxes, state.containers = fakeknobs.load_state(args.state, FakeContainer)
    handler = CriHandler(state, journal, dict(args.fail), dict(args.delay), args.cri_versions,
                         fakeknobs.Control(args.control), args.state)
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix://{args.socket}")
    # Handlers go in before serving, so an early SIGTERM still cleans up the socket.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    print(f"{READY_MESSAGE}: {args.name} serving on {args.socket}", file=sys.stderr, flush=True)
    await stop.wait()

    # No grace: open event streams would otherwise hold shutdown up.
    await server.stop(grace=None)
    args.socket.unlink(missing_ok=True)
    journal.close()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


# --- test-side helpers ------------------------------------------------------


@dataclass
class FakeRuntime:
    """Handle on a fake runtime process started by start_fake()."""

    name: str
    socket: Path
    journal: Path
    log: Path
    proc: subprocess.Popen

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def entries(self, method: str | None = None) -> list[dict]:
        """Journal entries so far, optionally only those of one method."""
        return [e for e in read_journal(self.journal) if method is None or e["method"] == method]

    def stop(self, timeout: float = 5.0) -> int:
        """Terminate the process (even if SIGSTOPped) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            # A stopped process only acts on SIGTERM once continued.
            self.proc.send_signal(signal.SIGCONT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _socket_path(tmp_path: Path, name: str) -> Path:
    """Keep the socket in tmp_path unless that path is too long for a unix socket."""
    socket = tmp_path / f"{name}.sock"
    if len(str(socket)) <= MAX_SOCKET_PATH:
        return socket
    # Deterministic, so restarting the same fake reuses the same socket.
    short_dir = Path(tempfile.gettempdir()) / f"fakecri-{_sha256_hex(str(tmp_path))[:12]}"
    short_dir.mkdir(exist_ok=True)
    return short_dir / f"{name}.sock"


def _wait_ready(fake: FakeRuntime, log_offset: int, deadline: float) -> None:
    # Watch for the fake's ready line rather than probing: a probe RPC would land
    # in the journal, and a connectivity probe costs 0.2 s on channel close.
    while READY_MESSAGE.encode() not in fake.log.read_bytes()[log_offset:]:
        _check_alive(fake)
        if time.monotonic() > deadline:
            raise TimeoutError(f"fake runtime {fake.name} is not serving on {fake.socket}")
        time.sleep(0.01)


def _check_alive(fake: FakeRuntime) -> None:
    if fake.proc.poll() is not None:
        raise RuntimeError(f"fake runtime {fake.name} exited {fake.proc.returncode}:\n{fake.log.read_text()}")


def start_fake(tmp_path: Path, name: str = "fake", *extra_args: str, timeout: float = 10.0) -> FakeRuntime:
    """Start a fake runtime process and return once it is serving.

    Socket, journal (<name>.journal.jsonl) and log (<name>.log) live in tmp_path,
    so calling this again with the same name restarts the "same" runtime.
    """
    socket = _socket_path(tmp_path, name)
    journal = tmp_path / f"{name}.journal.jsonl"
    log_path = tmp_path / f"{name}.log"
    command = [
        sys.executable, str(Path(__file__).resolve()),
        "--socket", str(socket),
        "--journal", str(journal),
        "--name", name,
        *extra_args,
    ]
    with open(log_path, "ab") as log:
        log_offset = log.tell()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    fake = FakeRuntime(name, socket, journal, log_path, proc)
    try:
        _wait_ready(fake, log_offset, time.monotonic() + timeout)
    except BaseException:
        fake.stop()
        raise
    return fake


if __name__ == "__main__":
    main()
