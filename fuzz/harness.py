"""What the front's targets share: configurations, a small model of a runtime,
in-process stand-ins for WorkerLink, and ROUTING.md's routing as an oracle.

A `FakeLink` has what the Dispatcher uses of a WorkerLink (label, is_up,
cri_version, call, stream, wait_up, start_wait_left, ...) and answers from a
`Model`: a few sandboxes, containers and images, kept as the runtime's own
(unprefixed) objects, changed by Run/Create/Stop/Remove calls as a runtime
would. Every call is written in `journal`, so a target can tell where a
request went. Nothing here opens a socket.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import atexit
import os
import shutil
import tempfile
import time
from typing import Any, AsyncIterator, Callable

import grpc
from cri_api.v1 import api_pb2 as v1
from google.protobuf.message import DecodeError, Message

from criproxy.front.dispatch import Dispatcher
from criproxy.front.naming import is_digest
from criproxy.front.routing import METHODS, TARGET_RUNTIME_ANNOTATION, Method, Rule
from criproxy.front.workerlink import CallError
from criproxy.settings import Config, HandlerRoute, Runtime, config_from_values
from fuzz.builder import digest, hexid

# Codes a runtime or criproxy may answer for what a caller sent; UNKNOWN and
# INTERNAL say criproxy failed.
CALLER_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.PERMISSION_DENIED,
})
# A bound no input may pass (far above what one takes, ~1 ms, even on a loaded node).
TIME_BOUND = 5.0

# The -connect and -runtimeHandlers of the configurations a target picks from.
SETUPS = (
    ("/p.sock,alt:/a.sock,vm.cloud:/v.sock", "kata=vm.cloud:kata-rt,gvisor=alt,runc="),
    ("/p.sock,x_:/x.sock,_y:/y.sock", "kata=x_:kata"),
    ("/p.sock", ""),
    ("/p.sock,alt:/a.sock", ""),
)
METHOD_PATHS = sorted(METHODS)
UNARY_PATHS = [p for p in METHOD_PATHS if METHODS[p].route.rule != Rule.STREAM_MERGE]

_rundir = tempfile.mkdtemp(prefix="criproxy-fuzz-",
                           dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
atexit.register(shutil.rmtree, _rundir, ignore_errors=True)
_configs: dict[int, Config] = {}


def config(index: int) -> Config:
    index %= len(SETUPS)
    if index not in _configs:
        connect, handlers = SETUPS[index]
        _configs[index] = config_from_values({
            "connect": connect, "runtime_handlers": handlers, "rundir": _rundir,
            "stream_url": "http://node.example:10250", "list_budget": "1",
            "stale_for": "180"})
    return _configs[index]


def clean_rundir() -> str:
    """Empty the runtime dir, so that no record file of an input reaches the next."""
    for entry in os.listdir(_rundir):
        path = os.path.join(_rundir, entry)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    return _rundir


# --- a small model of a runtime --------------------------------------------------


class Model:
    """One runtime's objects, unprefixed, and its answers to every CRI method."""

    def __init__(self, name: str) -> None:
        self.name = name
        seed = sum(map(ord, name or "primary")) * 7
        self.sandboxes: dict[str, v1.PodSandbox] = {}
        self.containers: dict[str, v1.Container] = {}
        self.images: dict[str, v1.Image] = {}
        self.made = 0
        for n in range(2):
            sid = hexid(seed + n)
            annotations = {TARGET_RUNTIME_ANNOTATION: name} if name and n == 0 else {}
            self.sandboxes[sid] = v1.PodSandbox(
                id=sid, metadata=v1.PodSandboxMetadata(name=f"pod{n}", uid=f"uid-{name}-{n}",
                                                       namespace="default"),
                state=v1.SANDBOX_READY, created_at=1_700_000_000_000_000_000 + n,
                labels={"io.kubernetes.pod.uid": f"uid-{name}-{n}"}, annotations=annotations,
                runtime_handler="kata" if n else "")
            cid = hexid(seed + 100 + n)
            image = "docker.io/library/busybox:latest"
            self.containers[cid] = v1.Container(
                id=cid, pod_sandbox_id=sid, metadata=v1.ContainerMetadata(name=f"c{n}"),
                image=v1.ImageSpec(image=image), image_ref=digest(seed + n),
                state=v1.CONTAINER_RUNNING, created_at=1_700_000_000_000_000_000 + n,
                labels={"io.kubernetes.pod.uid": f"uid-{name}-{n}"})
        for n, tag in enumerate(("docker.io/library/busybox:latest", "registry.k8s.io/pause:3.9")):
            image_id = digest(seed + 200 + n)
            self.images[image_id] = v1.Image(
                id=image_id, repo_tags=[tag], size=1000 + n,
                repo_digests=[tag.rsplit(":", 1)[0] + "@" + digest(seed + 300 + n)])

    def _new_id(self) -> str:
        self.made += 1
        return hashlib.sha256(f"{self.name}/{self.made}".encode()).hexdigest()

    def _image(self, name: str) -> v1.Image | None:
        for image in self.images.values():
            if name == image.id or name in image.repo_tags or name in image.repo_digests:
                return image
        return None

    def answer(self, method: Method, body: bytes) -> bytes:
        try:
            request = method.request.FromString(body)
        except DecodeError as err:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {err}") from None
        name = method.name
        handler = getattr(self, "_" + name, None)
        if handler is None:
            return method.response().SerializeToString()
        return handler(request).SerializeToString()

    def _need(self, items: dict, key: str, what: str) -> Any:
        if key not in items:
            raise CallError(grpc.StatusCode.NOT_FOUND, f"{what} {key!r} not found")
        return items[key]

    def _Version(self, r: Any) -> Message:
        return v1.VersionResponse(version="0.1.0", runtime_name=self.name or "primary",
                                  runtime_version="1.7", runtime_api_version="v1")

    def _Status(self, r: Any) -> Message:
        return v1.StatusResponse(
            status=v1.RuntimeStatus(conditions=[v1.RuntimeCondition(type="RuntimeReady",
                                                                     status=True)]),
            runtime_handlers=[v1.RuntimeHandler(name="runc")], info={"name": self.name})

    def _RunPodSandbox(self, r: v1.RunPodSandboxRequest) -> Message:
        sid = self._new_id()
        self.sandboxes[sid] = v1.PodSandbox(
            id=sid, metadata=r.config.metadata, state=v1.SANDBOX_READY, created_at=time.time_ns(),
            labels=r.config.labels, annotations=r.config.annotations,
            runtime_handler=r.runtime_handler)
        return v1.RunPodSandboxResponse(pod_sandbox_id=sid)

    def _StopPodSandbox(self, r: Any) -> Message:
        self._need(self.sandboxes, r.pod_sandbox_id, "sandbox").state = v1.SANDBOX_NOTREADY
        return v1.StopPodSandboxResponse()

    def _RemovePodSandbox(self, r: Any) -> Message:
        self.sandboxes.pop(r.pod_sandbox_id, None)
        return v1.RemovePodSandboxResponse()

    def _PodSandboxStatus(self, r: Any) -> Message:
        s = self._need(self.sandboxes, r.pod_sandbox_id, "sandbox")
        return v1.PodSandboxStatusResponse(
            status=v1.PodSandboxStatus(id=s.id, metadata=s.metadata, state=s.state,
                                       labels=s.labels, annotations=s.annotations,
                                       runtime_handler=s.runtime_handler),
            containers_statuses=[v1.ContainerStatus(id=c.id, image=c.image, image_ref=c.image_ref)
                                 for c in self.containers.values() if c.pod_sandbox_id == s.id])

    def _PodSandboxStats(self, r: Any) -> Message:
        s = self._need(self.sandboxes, r.pod_sandbox_id, "sandbox")
        return v1.PodSandboxStatsResponse(stats=v1.PodSandboxStats(
            attributes=v1.PodSandboxAttributes(id=s.id, metadata=s.metadata)))

    def _PortForward(self, r: Any) -> Message:
        self._need(self.sandboxes, r.pod_sandbox_id, "sandbox")
        return v1.PortForwardResponse(url="/cri/portforward/" + r.pod_sandbox_id[:8])

    def _CreateContainer(self, r: v1.CreateContainerRequest) -> Message:
        self._need(self.sandboxes, r.pod_sandbox_id, "sandbox")
        cid = self._new_id()
        self.containers[cid] = v1.Container(
            id=cid, pod_sandbox_id=r.pod_sandbox_id, metadata=r.config.metadata,
            image=r.config.image, image_ref=r.config.image.image, state=v1.CONTAINER_CREATED,
            labels=r.config.labels, annotations=r.config.annotations)
        return v1.CreateContainerResponse(container_id=cid)

    def _container(self, r: Any) -> v1.Container:
        return self._need(self.containers, r.container_id, "container")

    def _StartContainer(self, r: Any) -> Message:
        self._container(r).state = v1.CONTAINER_RUNNING
        return v1.StartContainerResponse()

    def _StopContainer(self, r: Any) -> Message:
        self._container(r).state = v1.CONTAINER_EXITED
        return v1.StopContainerResponse()

    def _RemoveContainer(self, r: Any) -> Message:
        self.containers.pop(r.container_id, None)
        return v1.RemoveContainerResponse()

    def _ContainerStatus(self, r: Any) -> Message:
        c = self._container(r)
        return v1.ContainerStatusResponse(status=v1.ContainerStatus(
            id=c.id, metadata=c.metadata, state=c.state, image=c.image, image_ref=c.image_ref,
            labels=c.labels, annotations=c.annotations, image_id=c.image_ref))

    def _ContainerStats(self, r: Any) -> Message:
        c = self._container(r)
        return v1.ContainerStatsResponse(stats=v1.ContainerStats(
            attributes=v1.ContainerAttributes(id=c.id, metadata=c.metadata)))

    def _ExecSync(self, r: Any) -> Message:
        self._container(r)
        return v1.ExecSyncResponse(stdout=b"ok\n", exit_code=0)

    def _Exec(self, r: Any) -> Message:
        self._container(r)
        return v1.ExecResponse(url="/cri/exec/" + r.container_id[:8])

    def _Attach(self, r: Any) -> Message:
        self._container(r)
        return v1.AttachResponse(url="//127.0.0.1:10010/attach/" + r.container_id[:8])

    def _UpdateContainerResources(self, r: Any) -> Message:
        self._container(r)
        return v1.UpdateContainerResourcesResponse()

    def _ReopenContainerLog(self, r: Any) -> Message:
        self._container(r)
        return v1.ReopenContainerLogResponse()

    def _CheckpointContainer(self, r: Any) -> Message:
        self._container(r)
        return v1.CheckpointContainerResponse()

    def _ListPodSandbox(self, r: v1.ListPodSandboxRequest) -> Message:
        items = [s for s in self.sandboxes.values() if not r.filter.id or s.id == r.filter.id]
        return v1.ListPodSandboxResponse(items=items)

    def _ListContainers(self, r: v1.ListContainersRequest) -> Message:
        items = [c for c in self.containers.values()
                 if (not r.filter.id or c.id == r.filter.id) and
                 (not r.filter.pod_sandbox_id or c.pod_sandbox_id == r.filter.pod_sandbox_id)]
        return v1.ListContainersResponse(containers=items)

    def _ListContainerStats(self, r: Any) -> Message:
        return v1.ListContainerStatsResponse(stats=[
            v1.ContainerStats(attributes=v1.ContainerAttributes(id=c.id, metadata=c.metadata))
            for c in self.containers.values() if not r.filter.id or c.id == r.filter.id])

    def _ListPodSandboxStats(self, r: Any) -> Message:
        return v1.ListPodSandboxStatsResponse(stats=[
            v1.PodSandboxStats(attributes=v1.PodSandboxAttributes(id=s.id, metadata=s.metadata))
            for s in self.sandboxes.values() if not r.filter.id or s.id == r.filter.id])

    def _ListPodSandboxMetrics(self, r: Any) -> Message:
        return v1.ListPodSandboxMetricsResponse(pod_metrics=[
            v1.PodSandboxMetrics(pod_sandbox_id=s.id) for s in self.sandboxes.values()])

    def _ListImages(self, r: v1.ListImagesRequest) -> Message:
        wanted = r.filter.image.image
        return v1.ListImagesResponse(images=[
            i for i in self.images.values()
            if not wanted or wanted == i.id or wanted in i.repo_tags])

    def _ImageFsInfo(self, r: Any) -> Message:
        return v1.ImageFsInfoResponse(image_filesystems=[v1.FilesystemUsage(
            timestamp=1, fs_id=v1.FilesystemIdentifier(mountpoint="/var/lib/" + self.name))])

    def _ImageStatus(self, r: v1.ImageStatusRequest) -> Message:
        image = self._image(r.image.image)
        return v1.ImageStatusResponse(image=image) if image else v1.ImageStatusResponse()

    def _PullImage(self, r: v1.PullImageRequest) -> Message:
        image = self._image(r.image.image)
        if image is None:
            image_id = digest(len(self.images) + 999)
            image = self.images[image_id] = v1.Image(id=image_id, repo_tags=[r.image.image])
        return v1.PullImageResponse(image_ref=image.id)

    def _RemoveImage(self, r: v1.RemoveImageRequest) -> Message:
        image = self._image(r.image.image)
        if image is not None:
            del self.images[image.id]
        return v1.RemoveImageResponse()

    def events(self) -> list[bytes]:
        return [v1.ContainerEventResponse(
            container_id=c.id, container_event_type=v1.CONTAINER_STARTED_EVENT,
            pod_sandbox_status=v1.PodSandboxStatus(id=c.pod_sandbox_id),
            containers_statuses=[v1.ContainerStatus(id=c.id, image=c.image)]).SerializeToString()
            for c in self.containers.values()]


# --- WorkerLink's stand-in ---------------------------------------------------------

Answerer = Callable[[Method, bytes], bytes]


class FakeLink:
    """What the Dispatcher uses of a WorkerLink, in process."""

    def __init__(self, runtime: Runtime, journal: list, up: bool = True,
                 cri_version: str = "v1", answer: Answerer | None = None) -> None:
        self.runtime = runtime
        self.model = Model(runtime.name)
        self.journal = journal
        self.up = up
        self.cri_version = cri_version
        self.answerer = answer or self.model.answer
        self.custom = answer is not None  # its stream starts with the answerer's item
        self.stream_ends = True  # else its stream waits after its events, as a quiet one
        self.bad_answers: list[str] = []
        self.slow = False  # up, but no answer within the call's time (DEADLINE_EXCEEDED)

    @property
    def label(self) -> str:
        return self.runtime.label

    @property
    def is_up(self) -> bool:
        return self.up

    def start_wait_left(self) -> float:
        return 0.0

    async def wait_up(self) -> None:
        while not self.up:
            await asyncio.sleep(3600)

    def note_bad_answer(self, text: str) -> None:
        self.bad_answers.append(text)

    def __getattr__(self, name: str) -> Any:
        # Whatever the real WorkerLink grows (counters, notes): a no-op here.
        if name.startswith("note_") or name.startswith("count_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    async def call(self, path: str, body: bytes, timeout: float | None) -> bytes:
        method = METHODS[path]
        self.journal.append((self.runtime.name, method.name, body))
        if not self.up:
            raise CallError(grpc.StatusCode.UNAVAILABLE, f"runtime {self.label} is down")
        if self.slow:  # what WorkerLink answers when the time runs out, at once
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"runtime {self.label} did not answer {method.name} within "
                            f"{timeout or 0:.3g}s")
        return self.answerer(method, body)

    async def stream(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        method = METHODS[path]
        self.journal.append((self.runtime.name, method.name, body))
        if not self.up:
            raise CallError(grpc.StatusCode.UNAVAILABLE, f"runtime {self.label} is down")
        if self.custom:
            yield self.answerer(method, body)
        for item in self.model.events():
            yield item
        if not self.stream_ends:
            await asyncio.Event().wait()
        # Ends the merged stream (a runtime without events), so a target's input ends.
        raise CallError(grpc.StatusCode.UNIMPLEMENTED, "no more events in the model")


def make_dispatcher(cfg: Config, states: int = 0, answerers: dict[str, Answerer] | None = None,
                    slow: bool = False) -> tuple[Dispatcher, dict[str, FakeLink], list]:
    """A Dispatcher over fake links; bit 2i of `states`: runtime i down (with `slow`:
    slow instead), bit 2i+1: it speaks v1alpha2 (the primary is always up)."""
    clean_rundir()
    journal: list = []
    links: dict[str, FakeLink] = {}
    for i, runtime in enumerate(cfg.runtimes):
        down = bool(states >> (2 * i) & 1) and i > 0
        old = bool(states >> (2 * i + 1) & 1)
        links[runtime.name] = FakeLink(runtime, journal, up=not down or slow,
                                       cri_version="v1alpha2" if old else "v1",
                                       answer=(answerers or {}).get(runtime.name))
        links[runtime.name].slow = down and slow
    return Dispatcher(cfg, links), links, journal  # type: ignore[arg-type]


_loop: asyncio.AbstractEventLoop | None = None


def run(coroutine: Any, bound: float = TIME_BOUND) -> Any:
    """Run a coroutine on the targets' one event loop, failing past `bound` seconds."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    started = time.monotonic()
    try:
        return _loop.run_until_complete(asyncio.wait_for(coroutine, bound))
    except asyncio.TimeoutError:
        raise AssertionError(f"an input took more than {bound}s") from None
    finally:
        # Tasks a call left (a List asked aside for a slow runtime): ended here, so
        # that nothing of one input runs during the next.
        left = [task for task in asyncio.all_tasks(_loop) if not task.done()]
        for task in left:
            task.cancel()
        if left:
            _loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        if time.monotonic() - started > bound:
            raise AssertionError(f"an input took {time.monotonic() - started:.2f}s, "
                                 f"more than {bound}s")


# --- ROUTING.md as an oracle ---------------------------------------------------------
# The oracle reads `cfg.runtimes` (names) and `cfg.runtime_handlers`: a Config, or
# a Topology when runtimes joined or left (-runtimesDir).


@dataclasses.dataclass
class Topology:
    runtimes: list[Runtime]
    runtime_handlers: tuple[HandlerRoute, ...]

ID_NAMES = {"id", "pod_sandbox_id", "container_id", "target_id"}
IMAGE_NAMES = {"image", "user_specified_image", "image_ref", "image_id", "repo_tags",
               "repo_digests"}


def id_owner(cfg: Config, value: str) -> str:
    """The runtime of `name__rest` for a configured name, else the primary (ROUTING.md)."""
    for runtime in cfg.runtimes:
        if runtime.name and value.startswith(runtime.name + "__"):
            return runtime.name
    return ""


def image_owner(cfg: Config, value: str, handler: str = "") -> str | None:
    if is_digest(value):
        return None
    for runtime in cfg.runtimes:
        if runtime.name and value.startswith(runtime.name + "/"):
            return runtime.name
    return handler_runtime(cfg, handler) or ""


def handler_runtime(cfg: Config, handler: str) -> str | None:
    for route in cfg.runtime_handlers:
        if handler and route.handler == handler:
            return route.runtime
    return None


def named_in(cfg: Config, message: Message) -> set[str]:
    """The runtimes whose objects a message names, anywhere in it."""
    found: set[str] = set()
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == field.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            for item in values:
                found |= named_in(cfg, item)
        elif field.type == field.TYPE_STRING:
            for item in values:
                if not item:
                    continue
                if field.name in ID_NAMES and not (field.name == "id" and
                                                   message.DESCRIPTOR.name == "Image"):
                    found.add(id_owner(cfg, item))
                elif field.name in IMAGE_NAMES or field.name == "id":
                    owner = image_owner(cfg, item, getattr(message, "runtime_handler", ""))
                    if owner is not None:
                        found.add(owner)
                elif field.name == "runtime_handler":
                    runtime = handler_runtime(cfg, item)
                    if runtime is not None:
                        found.add(runtime)
    return found


def expected_receivers(cfg: Config, method: Method, request: Message) -> set[str] | None:
    """Which runtimes ROUTING.md lets `method` reach for this request (None: any)."""
    rule = method.route.rule
    if rule in (Rule.PRIMARY, Rule.STATUS):
        return {""}
    if rule in (Rule.BROADCAST, Rule.STREAM_MERGE):
        return None
    if rule == Rule.BY_ANNOTATION:
        named = request.config.annotations.get(TARGET_RUNTIME_ANNOTATION, "")
        if named:
            return {named}
        return {handler_runtime(cfg, request.runtime_handler) or ""}
    if rule == Rule.BY_ID:
        key = getattr(request, method.route.key)
        return {id_owner(cfg, key)}
    if rule == Rule.BY_IMAGE:
        spec = request.image
        owner = image_owner(cfg, spec.image, spec.runtime_handler)
        if owner is None:
            return None  # a digest: any runtime may hold it
        plain = not any(spec.image.startswith(r.name + "/") for r in cfg.runtimes if r.name)
        if plain and handler_runtime(cfg, spec.runtime_handler) is None and \
                (spec.annotations or "sandbox_config" in request.DESCRIPTOR.fields_by_name
                 and request.HasField("sandbox_config")):
            return None  # the pod's runtime, whichever that is
        return {owner}
    # FAN_OUT
    named = named_in(cfg, request)
    if not named:
        return None
    return named if len(named) == 1 else set()
