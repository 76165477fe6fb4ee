"""A node whose second runtime runs in a pod: the parts of tests/e2e/test_e2e_runtime_in_pod.py
(and bench/node/registration.py) that are not checks.

The primary is scripts/runtimes.py's containerd A. The nested runtime's image
(scripts/nestedimage.py) is imported into it; its pod comes from
deploy/runtime-daemonset/nested-containerd.yaml through tests/support/kubepod.py, created through
criproxy's socket as kubelet would. The node's paths the manifest names are a test's
directories (NODE_PATHS); /sys/fs/cgroup stays the host's.

criproxy starts with the primary only and learns of the runtime by its registration:
its socket at -runtimesDir/NAME.sock, its RuntimeClass handlers in NAME.json beside it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from cri_api.v1 import api_pb2 as pb

from tests.e2e.e2e_node import Cri, wait_for
from tests.support.harness import REPO, Proxy, runtimes_script, start_proxy
from tests.support.kubepod import KubePod, load_daemonset

runtimes = runtimes_script()  # puts scripts/ on sys.path
import nestedimage  # noqa: E402  (scripts/nestedimage.py)

MANIFEST = REPO / "deploy" / "runtime-daemonset" / "nested-containerd.yaml"
NODE_PATHS = {"/run/criproxy-runtimes": "registration", "/var/log/pods": "pod-logs",
              "/var/lib/kubelet/pods": "kubelet-pods", "/var/lib/nested-runtime": "state",
              "/run/nested-runtime": "run"}
TARGET_RUNTIME = "kubernetes.io/target-runtime"
UID_LABEL = "io.kubernetes.pod.uid"
CALL_TIMEOUT = 30
LIST_BUDGET = 2.0
# Longer than any restart's gap without a socket here (about a second), short enough to
# watch a runtime really leave.
LEAVE_AFTER = 8.0
# A nested pod's workload: prints what is written to its fifo /say, so that its log can be
# made to grow on demand (say), while its main process (the shell) runs on unchanged.
LISTENS = "mkfifo /say; while :; do cat /say; done"


def timed(call: Callable[[], object]) -> tuple[float, grpc.RpcError | None]:
    start = time.monotonic()
    try:
        call()
    except grpc.RpcError as err:
        return time.monotonic() - start, err
    return time.monotonic() - start, None


# The e2e node's wait, with the patience a containerd starting in a fresh
# container needs.
wait_until = functools.partial(wait_for, timeout=30.0, interval=0.05)


@dataclass
class RuntimePod:
    """The runtime's pod on the primary, as kubelet runs it (ids as criproxy shows them)."""
    kube: KubePod
    pod_id: str
    cid: str = ""
    attempt: int = 0
    config: pb.PodSandboxConfig = field(default_factory=pb.PodSandboxConfig)


@dataclass
class NestedPod:
    config: pb.PodSandboxConfig
    pod_id: str
    cid: str
    by_handler: bool

    @property
    def uid(self) -> str:
        return self.config.metadata.uid


@dataclass
class Site:
    base: Path
    info: dict
    daemonset: dict
    paths: dict[str, Path]
    nested_tar: Path
    stream_port: int
    primary: Cri
    proxy: Proxy | None = None
    via: Cri | None = None
    runtime_pods: list[RuntimePod] = field(default_factory=list)
    nested_pods: list[NestedPod] = field(default_factory=list)
    gone_pods: list[NestedPod] = field(default_factory=list)  # removed through criproxy

    # ------------------------------------------------------------ the manifest's words

    @property
    def env(self) -> dict[str, str]:
        return KubePod(self.daemonset, self.paths, "").manifest_env()

    @property
    def name(self) -> str:
        return self.env["RUNTIME_NAME"]

    @property
    def handler(self) -> str:
        return self.env["RUNTIME_HANDLER"]

    @property
    def regdir(self) -> Path:
        return self.paths["/run/criproxy-runtimes"]

    @property
    def socket(self) -> Path:
        return self.regdir / f"{self.name}.sock"

    @property
    def cgroup_root(self) -> str:
        return f"/criproxy-{self.base.name}"

    @property
    def shim_cgroup(self) -> str:
        """The nested shims' cgroup: under the test's tree, which teardown removes."""
        return f"{self.cgroup_root}/nested-shims"

    @property
    def primary_socket(self) -> str:
        return self.info["instances"]["a"]["socket"]

    # ------------------------------------------------------------ criproxy

    def start_criproxy(self) -> Proxy:
        """criproxy with the primary only; the runtime registers in -runtimesDir."""
        self.proxy = start_proxy(self.primary_socket, "-runtimesDir", str(self.regdir),
                                 "-listBudget", str(LIST_BUDGET),
                                 "-leaveAfter", str(LEAVE_AFTER), workdir=self.base / "px",
                                 wait_for=["primary"])
        self.via = Cri.connect(f"unix://{self.proxy.listen}")
        return self.proxy

    def restart_criproxy(self) -> None:
        assert self.proxy is not None and self.via is not None
        self.via.channel.close()
        self.via = None
        self.proxy.stop()
        self.start_criproxy()

    def nested_answers(self, timeout: float = 5) -> bool:
        """A call only the nested runtime answers, served through criproxy: its pause
        image, under its prefix (seed_images put it there; it stays in its state dir)."""
        assert self.via is not None
        return self.via.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(
            image=f"{self.name}/{runtimes.PAUSE_IMAGE}")), timeout=timeout).HasField("image")

    def socket_answers(self) -> bool:
        """The nested containerd's own socket answers CRI Version (criproxy bypassed)."""
        runtimes.cri_version(self.socket, timeout=1)
        return True

    # ------------------------------------------------------------ the runtime's pod

    def kube_pod(self, image: str | None = None, env: dict[str, str] | None = None) -> KubePod:
        return KubePod(self.daemonset, self.paths, self.cgroup_root, image=image,
                       env={"STREAM_PORT": str(self.stream_port),
                            "SHIM_CGROUP": self.shim_cgroup, **(env or {})})

    def run_runtime_pod(self, image: str | None = None,
                        env: dict[str, str] | None = None) -> RuntimePod:
        """RunPodSandbox, then the container, through criproxy: on the primary."""
        assert self.via is not None
        kube = self.kube_pod(image, env)
        kube.prepare_host_paths()
        config = kube.sandbox_config()
        pod_id = self.via.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                                timeout=CALL_TIMEOUT).pod_sandbox_id
        pod = RuntimePod(kube, pod_id, config=config)
        self.runtime_pods.append(pod)
        self.start_runtime_container(pod)
        return pod

    def start_runtime_container(self, pod: RuntimePod, attempt: int = 0) -> str:
        """kubelet's image and container calls: ImageStatus with the pod's annotations,
        CreateContainer by image id, StartContainer."""
        assert self.via is not None
        image = pod.kube.image or pod.kube.container()["image"]
        status = self.via.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(
            image=image, annotations=dict(pod.config.annotations))), timeout=CALL_TIMEOUT)
        assert status.HasField("image"), f"{image} is not on the primary"
        config = pod.kube.container_config(image_ref=status.image.id, attempt=attempt)
        cid = self.via.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod.pod_id, config=config, sandbox_config=pod.config),
            timeout=CALL_TIMEOUT).container_id
        self.via.runtime.StartContainer(pb.StartContainerRequest(container_id=cid),
                                        timeout=CALL_TIMEOUT)
        pod.cid, pod.attempt = cid, attempt
        return cid

    def container_pid(self, cid: str) -> int:
        """The container's init (on the node: hostPID) from the primary's own answer."""
        status = self.primary.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=CALL_TIMEOUT)
        return int(json.loads(status.info["info"])["pid"])

    def runtime_pid(self, cid: str) -> int:
        """The nested containerd of the runtime's container `cid`: its init's child."""
        init = self.container_pid(cid)
        (pid,) = [pid for pid, (ppid, argv) in runtimes.all_procs().items()
                  if ppid == init and argv and Path(argv[0]).name == "containerd"]
        return pid

    def shim_pids(self) -> list[int]:
        """The nested runtime's shims: the processes whose -address is its socket."""
        address = f"/run/criproxy-runtimes/{self.name}.sock"
        return sorted(pid for pid, (_, argv) in runtimes.all_procs().items() if address in argv)

    def kill_container(self, cid: str) -> list[int]:
        """SIGKILL every process in the runtime container's cgroup at once, as `runc kill
        --all`, the OOM killer or the node's runtime do; the pids killed."""
        pids = cgroup_pids(self.container_pid(cid))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return sorted(pids)

    def wait_exited(self, cid: str) -> None:
        """Until the primary reports the container exited, as kubelet waits to see it."""
        wait_until(f"container {cid[:12]} exited", lambda: self.primary.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid), timeout=5).status.state
            == pb.CONTAINER_EXITED, interval=0.01)

    def remove_container(self, cid: str, grace: int = 0) -> None:
        assert self.via is not None
        self.via.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=grace),
                                       timeout=CALL_TIMEOUT + grace)
        self.via.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid),
                                         timeout=CALL_TIMEOUT)

    def delete_runtime_pod(self, pod: RuntimePod) -> None:
        """As kubelet deletes a pod: the container stopped within its grace, then the pod."""
        assert self.via is not None
        self.remove_container(pod.cid, pod.kube.termination_grace)
        self.via.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.pod_id),
                                        timeout=CALL_TIMEOUT)
        self.via.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.pod_id),
                                          timeout=CALL_TIMEOUT)
        self.runtime_pods.remove(pod)

    def seed_images(self) -> None:
        """The busybox and pause images into the nested containerd (its state persists in
        its hostPath across containers), as an operator would import them."""
        tar = Path(self.info["dir"]) / "image" / "images.tar"
        runtimes.import_images(self.socket, tar)
        runtimes.wait_images(self.socket, (runtimes.PAUSE_IMAGE, runtimes.BUSYBOX_IMAGE))

    # ------------------------------------------------------------ pods on the nested runtime

    def run_nested_pod(self, name: str, by_handler: bool, command: tuple[str, ...] =
                       ("sleep", "1000")) -> NestedPod:
        """kubelet's calls for a pod placed on the nested runtime by its RuntimeClass
        handler (plain image name, the pod's annotations on ImageStatus) or by the
        target-runtime annotation (the image carries the runtime's prefix)."""
        assert self.via is not None
        uid = str(uuid.uuid4())
        pod_name = f"{name}-{uid[:6]}"
        logs = f"e2e_{pod_name}_{uid}"
        host_logs = self.paths["/var/log/pods"] / logs
        (host_logs / "main").mkdir(parents=True)  # kubelet makes them, on the node
        annotations = {"kubernetes.io/config.seen": "2026-01-01T00:00:00Z",
                       "kubernetes.io/config.source": "api"}
        if not by_handler:
            annotations[TARGET_RUNTIME] = self.name
        ns = pb.NamespaceOption(network=pb.NODE)
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=pod_name, uid=uid, namespace="e2e"),
            labels={"io.kubernetes.pod.name": pod_name, "io.kubernetes.pod.namespace": "e2e",
                    UID_LABEL: uid},
            # The node's /var/log/pods: the runtime container's mount of it.
            log_directory=f"/var/log/pods/{logs}", annotations=annotations,
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.cgroup_root}/pod{uid}",
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns)))
        pod_id = self.via.runtime.RunPodSandbox(pb.RunPodSandboxRequest(
            config=config, runtime_handler=self.handler if by_handler else ""),
            timeout=CALL_TIMEOUT).pod_sandbox_id
        image = runtimes.BUSYBOX_IMAGE if by_handler else f"{self.name}/{runtimes.BUSYBOX_IMAGE}"
        status = self.via.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(
            image=image, annotations=annotations)), timeout=CALL_TIMEOUT)
        assert status.HasField("image"), f"{image} not found for {pod_name}"
        cid = self.via.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=config, config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="main"),
                image=pb.ImageSpec(image=status.image.id, user_specified_image=image),
                command=list(command), log_path="main/0.log",
                labels={"io.kubernetes.container.name": "main", UID_LABEL: uid,
                        "io.kubernetes.pod.name": pod_name, "io.kubernetes.pod.namespace": "e2e"},
                linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=ns)))), timeout=CALL_TIMEOUT).container_id
        self.via.runtime.StartContainer(pb.StartContainerRequest(container_id=cid),
                                        timeout=CALL_TIMEOUT)
        pod = NestedPod(config, pod_id, cid, by_handler)
        self.nested_pods.append(pod)
        return pod

    def pids(self, pod: NestedPod) -> tuple[int, int]:
        """The pod's sandbox (pause) and container processes, as its runtime reports them."""
        assert self.via is not None
        sandbox = self.via.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=pod.pod_id, verbose=True), timeout=CALL_TIMEOUT)
        container = self.via.runtime.ContainerStatus(pb.ContainerStatusRequest(
            container_id=pod.cid, verbose=True), timeout=CALL_TIMEOUT)
        return (int(json.loads(sandbox.info["info"])["pid"]),
                int(json.loads(container.info["info"])["pid"]))

    def say(self, pod: NestedPod, word: str) -> None:
        """ExecSync into the pod, whose workload (LISTENS) then prints `word` to its log."""
        assert self.via is not None
        out = self.via.runtime.ExecSync(pb.ExecSyncRequest(
            container_id=pod.cid, cmd=["sh", "-c", f"echo {word} > /say"], timeout=10),
            timeout=CALL_TIMEOUT)
        assert out.exit_code == 0, out

    def logged(self, pod: NestedPod, word: str) -> bool:
        """`word` is a stdout line of the pod's log in the node's log directory."""
        return any(line.split(" ", 3)[1:] == ["stdout", "F", word]
                   for line in self.host_log(pod).read_text().splitlines())

    def host_log(self, pod: NestedPod) -> Path:
        """Where the nested runtime's log of the pod's container is on the node."""
        rel = Path(pod.config.log_directory).relative_to("/var/log/pods")
        return self.paths["/var/log/pods"] / rel / "main" / "0.log"

    def remove_nested_pod(self, pod: NestedPod) -> None:
        assert self.via is not None
        self.via.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.pod_id),
                                        timeout=CALL_TIMEOUT)
        self.via.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.pod_id),
                                          timeout=CALL_TIMEOUT)
        self.nested_pods.remove(pod)
        self.gone_pods.append(pod)


# ---------------------------------------------------------------- processes


def start_time(pid: int) -> int:
    """The process's start time (clock ticks since boot): a pid reused is another one."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def cgroup_pids(pid: int) -> set[int]:
    """Every process in `pid`'s cgroups, in each hierarchy (/sys/fs/cgroup/NAME)."""
    found: set[int] = set()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        name = controllers.split(",")[0].removeprefix("name=") or "unified"
        with contextlib.suppress(OSError):
            procs = Path("/sys/fs/cgroup", name, path.lstrip("/"), "cgroup.procs")
            found |= {int(p) for p in procs.read_text().split()}
    return found


# ---------------------------------------------------------------- set up and tear down


def leftovers(site: Site) -> dict[str, list[str]]:
    """What the nested runtime could leave on the node once it and its pods are gone."""
    return {
        "shims": [str(pid) for pid in site.shim_pids()],
        "mounts": node_mounts(site),
        "cgroups": runtime_cgroups(site),
        "shim sockets": [p.name for p in (site.paths["/run/nested-runtime"] / "s").glob("*")],
    }


def node_mounts(site: Site) -> list[str]:
    """Mount points under the node's paths, but the shared binds make_site made."""
    ours = {str(site.paths["/var/lib/kubelet/pods"]), str(site.paths["/run/nested-runtime"])}
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(f"{site.base / 'node'}/") and p not in ours]


def runtime_cgroups(site: Site) -> list[str]:
    """The shims' cgroup and the cgroups of the removed nested pods' sandboxes and
    containers (named by their ids), in every hierarchy."""
    ids = {pod_id.partition("__")[2] for pod in site.gone_pods for pod_id in (pod.pod_id, pod.cid)}
    found = []
    for mount in runtimes.cgroup_mounts():
        shims, tree = Path(mount + site.shim_cgroup), Path(mount + site.cgroup_root)
        found += [str(shims)] if shims.is_dir() else []
        found += [str(p) for p in tree.rglob("*") if p.is_dir() and p.name in ids]
    return found


def make_shared(path: Path) -> None:
    """A Bidirectional mount needs its host path on a shared mount (as /var/lib/kubelet
    is on a systemd node): bind it onto itself and make that shared."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "--make-shared", str(path)], check=True)


def make_site(base: Path) -> Site:
    """The primary containerd (with B beside it, unused), the nested image imported into
    the primary, the node paths as directories of `base`."""
    info = runtimes.up(base / "rt")
    (base / "img").mkdir()
    nested_tar = nestedimage.build_nested_images(base / "img")
    sock = Path(info["instances"]["a"]["socket"])
    runtimes.import_images(sock, nested_tar)
    runtimes.wait_images(sock, nestedimage.NESTED_IMAGES)
    nested_tar.unlink()  # imported; ~100 MB
    paths = {node: base / "node" / sub for node, sub in NODE_PATHS.items()}
    for path in paths.values():
        path.mkdir(parents=True, mode=0o755)
    os.chmod(paths["/run/criproxy-runtimes"], 0o755)  # root's, not writable by others
    make_shared(paths["/var/lib/kubelet/pods"])
    make_shared(paths["/run/nested-runtime"])
    return Site(base, info, load_daemonset(MANIFEST), paths, nested_tar, runtimes.free_port(),
                Cri.connect(info["instances"]["a"]["endpoint"]))


def kill_cgroup_tree(root: str) -> None:
    """SIGKILL what is left in the test's cgroup tree: the nested runtime's containers
    whose shims died with the runtime's container (they run on, reparented)."""
    for mount in runtimes.cgroup_mounts():
        top = Path(mount + root)
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)


def teardown(site: Site) -> None:
    """Nested pods through criproxy first (their runtime still up), then the runtime's
    pod; then the primary, leftovers, mounts. Each step whatever the one before did."""
    try:
        if site.via is not None:
            for pod in list(site.nested_pods):
                with contextlib.suppress(grpc.RpcError, ValueError):
                    site.remove_nested_pod(pod)
            for rpod in list(site.runtime_pods):
                with contextlib.suppress(grpc.RpcError, ValueError):
                    site.delete_runtime_pod(rpod)
            site.via.channel.close()
    finally:
        try:
            if site.proxy is not None:
                site.proxy.stop()
            site.primary.channel.close()
        finally:
            cleanup(site.base, site.cgroup_root)


def cleanup(base: Path, cgroup_root: str) -> None:
    """What is left of a site in `base`, whatever state it is in."""
    kill_cgroup_tree(cgroup_root)
    time.sleep(0.2)
    runtimes.down(base / "rt")
    runtimes.unmount_under(base / "node")
    runtimes.remove_cgroup_tree(cgroup_root)
