"""tests/support/kubepod.py: the CRI configs kubelet would send for the runtime DaemonSet's pod
(deploy/runtime-daemonset/nested-containerd.yaml), checked without a runtime."""
from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from tests.support.harness import REPO
from tests.support.kubepod import KubePod, load_daemonset

MANIFEST = REPO / "deploy" / "runtime-daemonset" / "nested-containerd.yaml"
NODE = ("/run/criproxy-runtimes", "/var/log/pods", "/var/lib/kubelet/pods",
        "/var/lib/nested-runtime", "/run/nested-runtime")


@pytest.fixture
def pod(tmp_path: Path) -> KubePod:
    paths = {node: tmp_path / node.strip("/").replace("/", "-") for node in NODE}
    kube = KubePod(load_daemonset(MANIFEST), paths, "/kubepods-test", env={"STREAM_PORT": "1"})
    kube.prepare_host_paths()
    return kube


def test_the_manifest_is_a_daemonset_for_labelled_nodes() -> None:
    ds = load_daemonset(MANIFEST)
    spec = ds["spec"]["template"]["spec"]
    assert ds["apiVersion"] == "apps/v1" and ds["kind"] == "DaemonSet"
    assert spec["nodeSelector"] == {"extraRuntime": "nested-containerd"}
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()


def test_sandbox_config_as_kubelet_builds_it(pod: KubePod, tmp_path: Path) -> None:
    config = pod.sandbox_config()
    assert config.metadata.namespace == "kube-system"
    assert config.metadata.name.startswith("nested-containerd-")
    assert config.hostname == ""  # host network: none
    ns = config.linux.security_context.namespace_options
    assert (ns.network, ns.pid, ns.ipc) == (pb.NODE, pb.NODE, pb.NODE)
    assert config.linux.security_context.privileged
    assert config.labels["io.kubernetes.pod.uid"] == pod.uid
    assert config.annotations["kubernetes.io/config.source"] == "api"
    logs = tmp_path / "var-log-pods" / f"kube-system_{config.metadata.name}_{pod.uid}"
    assert config.log_directory == str(logs) and logs.is_dir()
    assert config.linux.cgroup_parent == f"/kubepods-test/pod{pod.uid}"


def test_container_config_mounts_host_paths_as_kubelet_does(pod: KubePod, tmp_path: Path) -> None:
    config = pod.container_config(image_ref="sha256:" + "0" * 64, attempt=2)
    assert config.image.image == "sha256:" + "0" * 64
    assert config.image.user_specified_image == "docker.io/criproxy/nested-containerd:1"
    assert config.command == ["/bin/sh", "-c"] and "containerd" in config.args[0]
    env = {kv.key: kv.value for kv in config.envs}
    assert env == {"RUNTIME_NAME": "nested.runtime", "RUNTIME_HANDLER": "nested",
                   "STREAM_PORT": "1", "SHIM_CGROUP": "/nested-runtime-shims"}
    mounts = {m.container_path: m for m in config.mounts}
    assert mounts["/var/lib/nested-runtime"].host_path == str(tmp_path / "var-lib-nested-runtime")
    assert mounts["/run/criproxy-runtimes"].host_path == str(tmp_path / "run-criproxy-runtimes")
    assert mounts["/sys/fs/cgroup"].host_path == "/sys/fs/cgroup"  # not mapped: the host's
    assert mounts["/var/lib/kubelet/pods"].propagation == pb.PROPAGATION_BIDIRECTIONAL
    assert mounts["/run/containerd"].host_path == str(tmp_path / "run-nested-runtime")
    assert mounts["/run/containerd"].propagation == pb.PROPAGATION_BIDIRECTIONAL
    assert mounts["/var/log/pods"].propagation == pb.PROPAGATION_PRIVATE
    assert not any(m.readonly for m in config.mounts)
    assert {"/etc/hosts", "/dev/termination-log"} <= set(mounts)
    assert config.log_path == "containerd/2.log"
    assert config.metadata.attempt == 2
    assert config.annotations["io.kubernetes.container.restartCount"] == "2"
    security = config.linux.security_context
    assert security.privileged and security.namespace_options.pid == pb.NODE
    assert config.linux.resources.oom_score_adj == -997  # system-node-critical


def test_an_upgrade_changes_the_image_and_the_revision(pod: KubePod) -> None:
    upgraded = KubePod(pod.daemonset, pod.node_paths, "/x",
                       image="docker.io/criproxy/nested-containerd:2")
    assert upgraded.container_config().image.image == "docker.io/criproxy/nested-containerd:2"
    assert upgraded.revision() != pod.revision()
    assert upgraded.uid != pod.uid


def test_the_runtimeclass_names_the_registered_handler(pod: KubePod) -> None:
    import yaml
    rc = yaml.safe_load((MANIFEST.parent / "runtimeclass.yaml").read_text())
    assert rc["kind"] == "RuntimeClass" and rc["handler"] == pod.manifest_env()["RUNTIME_HANDLER"]
    assert rc["scheduling"]["nodeSelector"] == pod.spec["nodeSelector"]
