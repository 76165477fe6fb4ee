"""What kubelet sends the CRI for a DaemonSet's pod, derived from its manifest (YAML).

Only what a runtime-in-a-pod manifest uses (deploy/runtime-daemonset/): hostPath volumes,
volumeMounts with mountPropagation, hostNetwork/hostPID/hostIPC, privileged, env values,
command/args, labels and annotations. Node paths are replaced by a test's directories
(`node_paths`: node path -> test path, for the host side only; the container paths stay
as written), so that the manifest itself is what runs. kubelet's own additions follow
kuberuntime (pkg/kubelet/kuberuntime): the io.kubernetes.* labels and annotations, the log
directory /var/log/pods/NS_NAME_UID and log path NAME/ATTEMPT.log, the termination-log and
/etc/hosts mounts, node namespaces, no hostname for a host-network pod, and the pod's
privilege when any of its containers is privileged.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from cri_api.v1 import api_pb2 as pb

KUBELET_PODS = "/var/lib/kubelet/pods"
POD_LOGS = "/var/log/pods"
PROPAGATION = {None: pb.PROPAGATION_PRIVATE, "None": pb.PROPAGATION_PRIVATE,
               "HostToContainer": pb.PROPAGATION_HOST_TO_CONTAINER,
               "Bidirectional": pb.PROPAGATION_BIDIRECTIONAL}
CRITICAL_OOM_SCORE_ADJ = -997  # kubelet's for system-node-critical / system-cluster-critical
BESTEFFORT_OOM_SCORE_ADJ = 1000


def load_daemonset(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (ds,) = [d for d in docs if d.get("kind") == "DaemonSet"]
    return ds


@dataclass
class KubePod:
    """One pod of a DaemonSet as kubelet would run it on a node."""

    daemonset: dict
    node_paths: dict[str, Path]
    cgroup_parent_root: str
    image: str | None = None             # an upgrade: the template's image replaced
    env: dict[str, str] = field(default_factory=dict)  # values replaced (e.g. a free port)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.daemonset['metadata']['name']}-{secrets.token_hex(3)[:5]}"

    # ------------------------------------------------------------ the manifest

    @property
    def namespace(self) -> str:
        return self.daemonset["metadata"].get("namespace", "default")

    @property
    def template(self) -> dict:
        return self.daemonset["spec"]["template"]

    @property
    def spec(self) -> dict:
        return self.template["spec"]

    def container(self, name: str | None = None) -> dict:
        containers = self.spec["containers"]
        return containers[0] if name is None else next(c for c in containers if c["name"] == name)

    def host_path(self, node_path: str) -> Path:
        """The test's path for a node path (the longest mapped prefix wins)."""
        for prefix in sorted(self.node_paths, key=len, reverse=True):
            if node_path == prefix or node_path.startswith(prefix.rstrip("/") + "/"):
                return Path(str(self.node_paths[prefix]) + node_path[len(prefix):])
        return Path(node_path)

    def manifest_env(self, container: dict | None = None) -> dict[str, str]:
        out = {}
        for item in (container or self.container()).get("env", []):
            if "valueFrom" in item:
                raise NotImplementedError(f"env {item['name']}: valueFrom")
            out[item["name"]] = str(item.get("value", ""))
        return out

    # ------------------------------------------------------------ the sandbox

    def namespaces(self) -> pb.NamespaceOption:
        return pb.NamespaceOption(
            network=pb.NODE if self.spec.get("hostNetwork") else pb.POD,
            pid=pb.NODE if self.spec.get("hostPID") else pb.CONTAINER,
            ipc=pb.NODE if self.spec.get("hostIPC") else pb.POD)

    @property
    def log_directory(self) -> Path:
        return self.host_path(POD_LOGS) / f"{self.namespace}_{self.name}_{self.uid}"

    @property
    def cgroup_parent(self) -> str:
        return f"{self.cgroup_parent_root}/pod{self.uid}"

    def labels(self) -> dict[str, str]:
        return {**self.template["metadata"].get("labels", {}),
                "controller-revision-hash": self.revision(), "pod-template-generation": "1",
                "io.kubernetes.pod.name": self.name,
                "io.kubernetes.pod.namespace": self.namespace,
                "io.kubernetes.pod.uid": self.uid}

    def revision(self) -> str:
        spec = json.dumps({"image": self.image, "env": self.env}, sort_keys=True)
        return hashlib.sha256(spec.encode()).hexdigest()[:10]

    def sandbox_config(self, attempt: int = 0) -> pb.PodSandboxConfig:
        """As kubelet's generatePodSandboxConfig; creates the log directory as kubelet does."""
        self.log_directory.mkdir(parents=True, exist_ok=True)
        seen = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        privileged = any(c.get("securityContext", {}).get("privileged")
                         for c in self.spec["containers"])
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=self.name, uid=self.uid,
                                           namespace=self.namespace, attempt=attempt),
            # hostname only for a pod with its own network (runc cannot set it otherwise)
            hostname="" if self.spec.get("hostNetwork") else self.name,
            log_directory=str(self.log_directory),
            labels=self.labels(),
            annotations={**self.template["metadata"].get("annotations", {}),
                         "kubernetes.io/config.seen": seen,
                         "kubernetes.io/config.source": "api"},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=self.cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=self.namespaces(), privileged=privileged)))

    # ------------------------------------------------------------ the containers

    def prepare_host_paths(self) -> None:
        """kubelet's hostPath types: DirectoryOrCreate is made (0755), Directory must exist."""
        for volume in self.spec.get("volumes", []):
            host = volume.get("hostPath")
            if host is None:
                raise NotImplementedError(f"volume {volume['name']}: only hostPath")
            path = self.host_path(host["path"])
            kind = host.get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
            elif kind == "Directory" and not path.is_dir():
                raise FileNotFoundError(f"hostPath {host['path']} ({path}): not a directory")

    def mounts(self, container: dict, attempt: int) -> list[pb.Mount]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        mounts = []
        for vm in container.get("volumeMounts", []):
            host = Path(self.host_path(volumes[vm["name"]]["hostPath"]["path"]))
            if vm.get("subPath"):
                host = host / vm["subPath"]
            mounts.append(pb.Mount(container_path=vm["mountPath"], host_path=str(host),
                                   readonly=bool(vm.get("readOnly")),
                                   propagation=PROPAGATION[vm.get("mountPropagation")]))
        # kubelet's own: the node's /etc/hosts for a host-network pod, the termination log.
        pod_dir = self.host_path(KUBELET_PODS) / self.uid
        pod_dir.mkdir(parents=True, exist_ok=True)
        hosts = pod_dir / "etc-hosts"
        if not hosts.exists():
            shutil.copyfile("/etc/hosts", hosts)
        mounts.append(pb.Mount(container_path="/etc/hosts", host_path=str(hosts)))
        term = pod_dir / "containers" / container["name"] / f"{attempt}-{secrets.token_hex(4)}"
        term.parent.mkdir(parents=True, exist_ok=True)
        term.touch()
        mounts.append(pb.Mount(container_path=container.get("terminationMessagePath",
                                                            "/dev/termination-log"),
                               host_path=str(term)))
        return mounts

    def container_config(self, image_ref: str = "", attempt: int = 0,
                         name: str | None = None) -> pb.ContainerConfig:
        """As kubelet's generateContainerConfig. `image_ref`: the image id ImageStatus or
        PullImage answered (kubelet creates by id, naming what the user wrote beside it)."""
        container = self.container(name)
        image = self.image or container["image"]
        (self.log_directory / container["name"]).mkdir(parents=True, exist_ok=True)
        env = {**self.manifest_env(container), **self.env}
        security = container.get("securityContext", {})
        critical = self.spec.get("priorityClassName") in ("system-node-critical",
                                                           "system-cluster-critical")
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=container["name"], attempt=attempt),
            image=pb.ImageSpec(image=image_ref or image, user_specified_image=image),
            command=container.get("command", []), args=container.get("args", []),
            working_dir=container.get("workingDir", ""),
            envs=[pb.KeyValue(key=k, value=v) for k, v in env.items()],
            mounts=self.mounts(container, attempt),
            labels={"io.kubernetes.container.name": container["name"],
                    "io.kubernetes.pod.name": self.name,
                    "io.kubernetes.pod.namespace": self.namespace,
                    "io.kubernetes.pod.uid": self.uid},
            annotations={
                "io.kubernetes.container.hash": self.revision(),
                "io.kubernetes.container.restartCount": str(attempt),
                "io.kubernetes.container.terminationMessagePath":
                    container.get("terminationMessagePath", "/dev/termination-log"),
                "io.kubernetes.container.terminationMessagePolicy": "File",
                "io.kubernetes.pod.terminationGracePeriod":
                    str(self.spec.get("terminationGracePeriodSeconds", 30))},
            log_path=f"{container['name']}/{attempt}.log",
            stdin=bool(container.get("stdin")), tty=bool(container.get("tty")),
            linux=pb.LinuxContainerConfig(
                resources=pb.LinuxContainerResources(
                    cpu_shares=2, oom_score_adj=CRITICAL_OOM_SCORE_ADJ if critical
                    else BESTEFFORT_OOM_SCORE_ADJ),
                security_context=pb.LinuxContainerSecurityContext(
                    privileged=bool(security.get("privileged")),
                    namespace_options=self.namespaces())))

    @property
    def termination_grace(self) -> int:
        return int(self.spec.get("terminationGracePeriodSeconds", 30))
