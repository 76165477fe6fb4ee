"""Write the seed corpus (fuzz/corpus/<target>/) from kubelet-like messages:

    python -m fuzz.seeds

Requests as kubelet 1.30 sends them (a PodSandboxConfig with its metadata,
DNS, ports, labels, annotations, Linux security context; a ContainerConfig with
image, command, env, mounts, resources; List filters), in both CRI versions;
runtimes' answers as containerd gives them; envelopes of every type; a record
file and a settings file as criproxy writes them; -connect / -runtimeHandlers
as operators write them. Rerunning rewrites the same files.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgpack
from cri_api.v1 import api_pb2 as v1

from criproxy.settings import to_values
from criproxy.wire import protocol
from fuzz import harness, target_answers, target_requests
from fuzz.builder import digest, hexid

CORPUS = Path(__file__).resolve().parent / "corpus"
R, I = "/runtime.v1.RuntimeService/", "/runtime.v1.ImageService/"
UID = "1f6c3d2e-8a4b-4c6d-9e0f-0123456789ab"


def pod_config(annotations: dict[str, str] | None = None) -> v1.PodSandboxConfig:
    return v1.PodSandboxConfig(
        metadata=v1.PodSandboxMetadata(name="nginx-7c5ddbdf54-x2x9q", namespace="default",
                                       uid=UID, attempt=0),
        hostname="nginx-7c5ddbdf54-x2x9q", log_directory=f"/var/log/pods/default_nginx_{UID}",
        dns_config=v1.DNSConfig(servers=["10.96.0.10"], searches=[
            "default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            options=["ndots:5"]),
        port_mappings=[v1.PortMapping(protocol=v1.TCP, container_port=80)],
        labels={"app": "nginx", "io.kubernetes.pod.name": "nginx-7c5ddbdf54-x2x9q",
                "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": UID,
                "pod-template-hash": "7c5ddbdf54"},
        annotations={"kubernetes.io/config.seen": "2024-05-01T10:00:00.000000000Z",
                     "kubernetes.io/config.source": "api", **(annotations or {})},
        linux=v1.LinuxPodSandboxConfig(
            cgroup_parent=f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice",
            security_context=v1.LinuxSandboxSecurityContext(
                namespace_options=v1.NamespaceOption(pid=v1.CONTAINER),
                seccomp=v1.SecurityProfile(profile_type=v1.SecurityProfile.RuntimeDefault)),
            overhead=v1.LinuxContainerResources(), resources=v1.LinuxContainerResources(
                cpu_period=100000, cpu_shares=2)))


def container_config(image: str) -> v1.ContainerConfig:
    return v1.ContainerConfig(
        metadata=v1.ContainerMetadata(name="nginx", attempt=0), image=v1.ImageSpec(image=image),
        command=["nginx"], args=["-g", "daemon off;"], working_dir="/",
        envs=[v1.KeyValue(key="KUBERNETES_SERVICE_HOST", value="10.96.0.1")],
        mounts=[v1.Mount(container_path="/var/run/secrets/kubernetes.io/serviceaccount",
                         host_path=f"/var/lib/kubelet/pods/{UID}/volumes/token", readonly=True)],
        labels={"io.kubernetes.container.name": "nginx", "io.kubernetes.pod.uid": UID},
        annotations={"io.kubernetes.container.hash": "1b2c3d4e",
                     "io.kubernetes.container.restartCount": "0"},
        log_path="nginx/0.log", linux=v1.LinuxContainerConfig(
            resources=v1.LinuxContainerResources(cpu_period=100000, cpu_shares=2,
                                                 oom_score_adj=1000),
            security_context=v1.LinuxContainerSecurityContext(
                masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"])))


SID, CID = hexid(1), hexid(2)


def requests() -> dict[str, tuple[str, bytes]]:
    """name -> (method path, request bytes), as kubelet sends them."""
    alt_pod = pod_config({"kubernetes.io/target-runtime": "alt"})
    seeds = {
        "version": (R + "Version", v1.VersionRequest(version="0.1.0")),
        "status": (R + "Status", v1.StatusRequest(verbose=False)),
        "run-pod": (R + "RunPodSandbox", v1.RunPodSandboxRequest(config=pod_config())),
        "run-pod-alt": (R + "RunPodSandbox", v1.RunPodSandboxRequest(config=alt_pod)),
        "run-pod-kata": (R + "RunPodSandbox", v1.RunPodSandboxRequest(
            config=pod_config(), runtime_handler="kata")),
        "stop-pod-alt": (R + "StopPodSandbox", v1.StopPodSandboxRequest(
            pod_sandbox_id="alt__" + SID)),
        "pod-status": (R + "PodSandboxStatus", v1.PodSandboxStatusRequest(
            pod_sandbox_id=SID, verbose=True)),
        "create-alt": (R + "CreateContainer", v1.CreateContainerRequest(
            pod_sandbox_id="alt__" + SID, config=container_config("alt/docker.io/library/nginx"),
            sandbox_config=alt_pod)),
        "create-digest": (R + "CreateContainer", v1.CreateContainerRequest(
            pod_sandbox_id=SID, config=container_config(digest(3)), sandbox_config=pod_config())),
        "start": (R + "StartContainer", v1.StartContainerRequest(container_id="vm.cloud__" + CID)),
        "container-status": (R + "ContainerStatus", v1.ContainerStatusRequest(
            container_id="alt__" + CID, verbose=True)),
        "exec": (R + "Exec", v1.ExecRequest(container_id="alt__" + CID, cmd=["sh"], tty=True,
                                            stdin=True, stdout=True)),
        "exec-sync": (R + "ExecSync", v1.ExecSyncRequest(container_id=CID, cmd=["cat", "/x"],
                                                         timeout=10)),
        "port-forward": (R + "PortForward", v1.PortForwardRequest(pod_sandbox_id="alt__" + SID,
                                                                  port=[8080])),
        "list-pods": (R + "ListPodSandbox", v1.ListPodSandboxRequest()),
        "list-pods-ready": (R + "ListPodSandbox", v1.ListPodSandboxRequest(
            filter=v1.PodSandboxFilter(state=v1.PodSandboxStateValue(state=v1.SANDBOX_READY)))),
        "list-pods-id": (R + "ListPodSandbox", v1.ListPodSandboxRequest(
            filter=v1.PodSandboxFilter(id="alt__" + SID[:12]))),
        "list-containers": (R + "ListContainers", v1.ListContainersRequest(
            filter=v1.ContainerFilter())),
        "list-containers-pod": (R + "ListContainers", v1.ListContainersRequest(
            filter=v1.ContainerFilter(pod_sandbox_id="alt__" + SID,
                                      label_selector={"io.kubernetes.pod.uid": UID}))),
        "list-stats": (R + "ListContainerStats", v1.ListContainerStatsRequest(
            filter=v1.ContainerStatsFilter())),
        "list-pod-stats": (R + "ListPodSandboxStats", v1.ListPodSandboxStatsRequest()),
        "update-runtime-config": (R + "UpdateRuntimeConfig", v1.UpdateRuntimeConfigRequest(
            runtime_config=v1.RuntimeConfig(network_config=v1.NetworkConfig(
                pod_cidr="10.244.0.0/24")))),
        "events": (R + "GetContainerEvents", v1.GetEventsRequest()),
        "list-images": (I + "ListImages", v1.ListImagesRequest()),
        "image-status-pod": (I + "ImageStatus", v1.ImageStatusRequest(image=v1.ImageSpec(
            image="docker.io/library/nginx:latest", annotations=dict(
                pod_config().annotations)))),
        "image-status-digest": (I + "ImageStatus", v1.ImageStatusRequest(
            image=v1.ImageSpec(image=digest(4)))),
        "pull": (I + "PullImage", v1.PullImageRequest(
            image=v1.ImageSpec(image="alt/docker.io/library/nginx:latest"),
            auth=v1.AuthConfig(username="u", password="p"), sandbox_config=alt_pod)),
        "pull-pod": (I + "PullImage", v1.PullImageRequest(
            image=v1.ImageSpec(image="docker.io/library/nginx:latest"),
            sandbox_config=pod_config())),
        "remove-image": (I + "RemoveImage", v1.RemoveImageRequest(image=v1.ImageSpec(
            image=digest(5)))),
        "fs-info": (I + "ImageFsInfo", v1.ImageFsInfoRequest()),
    }
    return {name: (path, message.SerializeToString(deterministic=True))
            for name, (path, message) in seeds.items()}


def answers() -> dict[str, tuple[str, bytes]]:
    model = harness.Model("alt")
    pods = v1.ListPodSandboxResponse(items=model.sandboxes.values())
    containers = v1.ListContainersResponse(containers=model.containers.values())
    sid, cid = next(iter(model.sandboxes)), next(iter(model.containers))
    return {name: (path, message.SerializeToString(deterministic=True))
            for name, (path, message) in {
        "pods": (R + "ListPodSandbox", pods),
        "containers": (R + "ListContainers", containers),
        "images": (I + "ListImages", v1.ListImagesResponse(images=model.images.values())),
        "pod-status": (R + "PodSandboxStatus", model._PodSandboxStatus(
            v1.PodSandboxStatusRequest(pod_sandbox_id=sid))),
        "container-status": (R + "ContainerStatus", model._ContainerStatus(
            v1.ContainerStatusRequest(container_id=cid))),
        "exec": (R + "Exec", v1.ExecResponse(url="/cri/exec/Ab3dE")),
        "run": (R + "RunPodSandbox", v1.RunPodSandboxResponse(pod_sandbox_id=hexid(9))),
        "stats": (R + "ListContainerStats", model._ListContainerStats(
            v1.ListContainerStatsRequest())),
        "image-status": (I + "ImageStatus", v1.ImageStatusResponse(
            image=next(iter(model.images.values())))),
        "pull": (I + "PullImage", v1.PullImageResponse(image_ref=digest(7))),
        "event": (R + "GetContainerEvents", v1.ContainerEventResponse.FromString(
            model.events()[0])),
    }.items()}


def wire() -> dict[str, bytes]:
    tc = {"traceparent": "00-" + "4bf92f3577b34da6a3ce929d0e0e4736" + "-00f067aa0ba902b7-01"}
    messages = {
        "call": {"t": "call", "id": 1 << 40, "m": R + "Version", "b": b"\x0a\x010", "d": 2.0,
                 "tc": tc},
        "stream": {"t": "stream", "id": 5, "m": R + "GetContainerEvents", "b": b"", "d": None},
        "cancel": {"t": "cancel", "id": 5}, "ping": {"t": "ping"},
        "reply": {"t": "reply", "id": 7, "inc": "a1b2c3d4e5f60718", "b": b"\x0a\x03abc"},
        "error": {"t": "error", "id": 7, "inc": "a1b2c3d4e5f60718", "c": 5, "s": "not found"},
        "item": {"t": "item", "id": 1 << 47, "inc": "a1b2c3d4e5f60718", "b": b"\x0a\x01x"},
        "end": {"t": "end", "id": 1 << 47, "inc": "a1b2c3d4e5f60718"},
        "pong": {"t": "pong", "inc": "a1b2c3d4e5f60718", "pid": 4242, "up": 12.5, "st": "up",
                 "r": "runtime answered Version", "v": "v1"},
    }
    return {name: b"\x00" + protocol.pack(message) for name, message in messages.items()}


def files() -> dict[str, bytes]:
    model = harness.Model("alt")
    now = 1_750_000_000.0  # fixed, so that rerunning writes the same files
    record = msgpack.packb({"v": 1, "socket": "/a.sock", "lists": {
        "ListPodSandbox": [v1.ListPodSandboxResponse(
            items=model.sandboxes.values()).SerializeToString(deterministic=True), now],
        "ListContainers": [v1.ListContainersResponse(
            containers=model.containers.values()).SerializeToString(deterministic=True), now]}},
        use_bin_type=True)
    settings = json.dumps({**to_values(harness.config(0)), "rundir": "/run/criproxy"}).encode()
    published = json.dumps({"directory": "/run/criproxy-runtimes", "problem": "", "time": 1.0,
                            "runtimes": [{"name": "gpu", "socket": "/run/criproxy-runtimes/gpu.sock",
                                          "handlers": {"nvidia": "nvidia"},
                                          "missing_since": None}], "refused": []}).encode()
    return {"record": b"\x00" + record, "record-built": b"\x01" + bytes(64),
            "settings": b"\x02" + settings, "settings-built": b"\x03" + bytes(32),
            "published": b"\x04" + published, "published-built": b"\x05" + bytes(16)}


def flags() -> dict[str, bytes]:
    return {
        "connect": b"\x00\x07" + b"/run/containerd/containerd.sock,virtlet.cloud:/run/virtlet.sock",
        "connect-unix": b"\x00\x07unix:///run/containerd/containerd.sock,alt:unix:///run/alt.sock",
        "handlers": b"\x01\x07kata=vm.cloud:kata-qemu,gvisor=alt,runc=",
        "config": b"\x02" + bytes(40),
        "registrations": b"\x03\x03" + bytes([1, 0, 0, 1, 0, 1, 1, 2, 0, 0, 1, 1, 1, 1]),
    }


# Seeds that fail a target until a fix in a file of another change lands: kept in
# fuzz/pending/<target>/ (not replayed by make test; see fuzz/pending/README.md).
PENDING: set[tuple[str, str]] = set()


def write(target: str, name: str, data: bytes) -> None:
    folder = (CORPUS.parent / "pending" if (target, name) in PENDING else CORPUS) / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def main() -> None:
    for name, (path, raw) in requests().items():
        method = harness.METHODS[path]
        for setup in (0, 1):
            write("requests", f"{name}-{setup}",
                  target_requests.header(setup, 0, path, target_requests.RAW) + raw)
        if method.in_v1alpha2 and name in ("run-pod-alt", "list-pods", "create-alt"):
            old = path.replace("/runtime.v1.", "/runtime.v1alpha2.")
            write("requests", f"{name}-v1alpha2",
                  target_requests.header(0, 0b1000, old, target_requests.RAW) + raw)
    write("requests", "built-list-pods", target_requests.header(
        0, 0, R + "ListPodSandbox", target_requests.BUILT) + hashlib.sha256(b"1").digest() * 4)
    write("requests", "prelist-pull-pod", target_requests.header(
        0, 0, I + "PullImage", target_requests.RAW, prelist=True) + requests()["pull-pod"][1])
    # Sequences: kubelet's change, then a List served by the record for a runtime down.
    table = requests()
    for first, then, states, slow, membership in (
            ("run-pod-alt", "list-pods", 0b100, False, False),
            ("create-alt", "list-containers", 0b100, False, False),
            ("stop-pod-alt", "list-pods-ready", 0b100, False, False),
            ("pull-pod", "image-status-pod", 0, False, False),
            ("list-pods", "list-pods", 0b100, True, False),
            ("list-containers-pod", "list-pods", 0b10000, True, True),
            ("run-pod-kata", "list-images", 0, False, True)):
        path, raw = table[first]
        second = harness.UNARY_PATHS.index(table[then][0])
        name = f"then-{first}-{then}" + "-slow" * slow + "-membership" * membership
        write("requests", name, target_requests.header(
            0, states, path, target_requests.RAW, prelist=True, then=True, slow=slow,
            membership=membership) + bytes([second]) + len(raw).to_bytes(2, "big") + raw
            + bytes(16))
    for name, (path, raw) in answers().items():
        write("answers", name, target_answers.header(0, 1, path, target_answers.RAW) + raw)
        write("answers", name + "-built", target_answers.header(
            0, 1, path, target_answers.BUILT) + hashlib.sha256(name.encode()).digest() * 4)
    for kind, table in (("wire", wire()), ("files", files()), ("flags", flags())):
        for name, data in table.items():
            write(kind, name, data)
    write("wire", "built", b"\x01" + bytes(range(40)))


if __name__ == "__main__":
    main()
