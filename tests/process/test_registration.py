"""Runtimes that register in -runtimesDir (issue 24), process-level: the real
criproxy (supervisord, registrar, front, workers) started with the primary
only, fake runtimes that appear, restart, leave, clash and misbehave.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import Cluster
from tests.process.registering import (  # noqa: F401 - node: a fixture
    node, published, register, routed, status_text)
from tests.process.routing_util import Kubelet, wait_until
from tests.support.fakeruntime import start_fake
from tests.support.harness import start_proxy


def listed(kubelet: Kubelet) -> set[str]:
    return {p.id for p in kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(),
                                                    timeout=5).items}


class Caller(threading.Thread):
    """Calls the primary through criproxy without a pause, counting failures."""

    def __init__(self, kubelet: Kubelet) -> None:
        super().__init__(daemon=True)
        self.kubelet, self.calls, self.failures = kubelet, 0, []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.kubelet.rt.Version(cri.VersionRequest(), timeout=5)
                self.kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)
                self.calls += 1
            except grpc.RpcError as err:
                self.failures.append(err)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def test_a_runtime_that_registers_is_routed_to_and_nothing_restarts(node: Cluster) -> None:
    kubelet = Kubelet(node)
    before = node.proxy.pids(["primary"])
    caller = Caller(kubelet)
    caller.start()
    register(node, "vm.cloud", link=False)
    pod = routed(kubelet, "vm.cloud")
    time.sleep(0.5)
    caller.stop()
    assert pod.startswith("vm.cloud__") and pod in listed(kubelet)
    assert node.fakes["vm.cloud"].entries("RunPodSandbox")
    assert caller.calls > 0 and not caller.failures
    assert node.proxy.pids(["primary"]) == before
    node.proxy.wait_state("vm.cloud", "up")
    assert "vm.cloud" in status_text(node.proxy)


def test_handlers_in_the_json_route_runtimeclass_pods(node: Cluster) -> None:
    kubelet = Kubelet(node)
    vm = register(node, "vm.cloud", handlers={"vm": "qemu"})
    routed(kubelet, "vm.cloud")
    config = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(
        name="by-handler", namespace="reg", uid="by-handler-uid"))
    pod = kubelet.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler="vm"),
                                   timeout=10).pod_sandbox_id
    assert pod.startswith("vm.cloud__")
    assert vm.entries("RunPodSandbox")[-1]["request"]["runtime_handler"] == "qemu"
    handlers = kubelet.rt.Status(cri.StatusRequest(), timeout=5).runtime_handlers
    assert "vm" in {h.name for h in handlers}


def test_a_restart_recreates_the_socket_and_the_runtime_stays(node: Cluster) -> None:
    kubelet = Kubelet(node)
    vm = register(node, "vm.cloud", link=False)
    pod = routed(kubelet, "vm.cloud")
    assert pod in listed(kubelet)
    vm.stop()
    (node.proxy.runtimes_dir / "vm.cloud.sock").unlink(missing_ok=True)
    node.proxy.wait_state("vm.cloud", "down")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=10)
    assert time.monotonic() - started < 1.0
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "vm.cloud" in failed.value.details()
    assert pod in listed(kubelet)  # its last answer
    assert published(node.proxy)["runtimes"][0]["missing_since"]
    node.fakes["vm.cloud"] = start_fake(node.proxy.runtimes_dir, "vm.cloud",
                                        "--state", str(node.base / "vm.cloud.state"))
    node.proxy.wait_state("vm.cloud", "up")
    kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=5)
    assert published(node.proxy)["runtimes"][0]["missing_since"] is None


def test_a_runtime_whose_socket_stays_gone_leaves(node: Cluster) -> None:
    kubelet = Kubelet(node)
    vm = register(node, "vm.cloud")
    pod = routed(kubelet, "vm.cloud")
    worker = node.proxy.wait_state("vm.cloud", "up")["worker_pid"]
    (node.proxy.runtimes_dir / "vm.cloud.sock").unlink()
    wait_until(lambda: not published(node.proxy)["runtimes"], 15, "vm.cloud to leave")
    wait_until(lambda: not Path(f"/proc/{worker}").exists(), 10, "its worker to stop")
    wait_until(lambda: all(r["label"] != "vm.cloud" for r in node.proxy.status()["runtimes"]),
               5, "the front to drop it")
    assert pod not in listed(kubelet)
    with pytest.raises(grpc.RpcError) as failed:
        kubelet.run_pod("vm.cloud")
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    wait_until(lambda: "runtime vm.cloud left" in node.proxy.log(), 10, "the leave logged")
    assert vm.proc.poll() is None  # the runtime itself was never touched


@pytest.mark.parametrize("entry,why", [
    ("primary.sock", None), ("bad__name.sock", "no '__'"), ("file.sock", "not a unix socket")])
def test_a_bad_registration_is_refused_and_shown(node: Cluster, entry: str,
                                                 why: str | None) -> None:
    directory = node.proxy.runtimes_dir
    if entry == "file.sock":
        (directory / entry).write_text("")
    else:
        (directory / entry).symlink_to(node.fakes["primary"].socket)
    wait_until(lambda: published(node.proxy)["refused"], 5, "the refusal")
    reason = published(node.proxy)["refused"][0]["reason"]
    assert why is None or why in reason
    assert not published(node.proxy)["runtimes"]
    assert f"refused {entry}" in status_text(node.proxy)
    doctor = subprocess.run([sys.executable, "-m", "criproxy", "doctor", "-rundir",
                             str(node.proxy.rundir)], capture_output=True, text=True)
    assert f"{entry} is refused" in doctor.stdout and doctor.returncode == 1
    wait_until(lambda: f"refusing {directory / entry}" in node.proxy.log(), 10,
               "the refusal logged")
    Kubelet(node).rt.Version(cri.VersionRequest(), timeout=5)


def test_a_directory_others_can_write_registers_nobody(node: Cluster) -> None:
    directory = node.proxy.runtimes_dir
    os.chmod(directory, 0o777)
    register(node, "vm.cloud")
    wait_until(lambda: published(node.proxy)["problem"], 10, "the directory refused")
    assert not published(node.proxy)["runtimes"]
    assert "nothing registers" in status_text(node.proxy)
    os.chmod(directory, 0o755)
    routed(Kubelet(node), "vm.cloud")


def test_a_local_user_cannot_register(node: Cluster) -> None:
    """The directory is root's (0755): nobody cannot make an entry there."""
    script = ("import os, socket; os.setgid(65534); os.setuid(65534); "
              f"socket.socket(socket.AF_UNIX).bind({str(node.proxy.runtimes_dir / 'x.sock')!r})")
    tried = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert tried.returncode != 0 and "PermissionError" in tried.stderr
    assert oct(node.proxy.runtimes_dir.stat().st_mode & 0o777) == "0o755"


def test_a_criproxy_restart_finds_the_registered_runtimes(node: Cluster) -> None:
    kubelet = Kubelet(node)
    register(node, "vm.cloud", handlers={"vm": "qemu"})
    pod = routed(kubelet, "vm.cloud")
    assert pod in listed(kubelet)
    node.proxy.stop()
    proxy = start_proxy(str(node.fakes["primary"].socket), "-leaveAfter", "2",
                        workdir=node.base, wait_for=["primary"])
    node.proxy = proxy
    kubelet = Kubelet(node)
    assert pod in listed(kubelet)  # from its first call: the record file, or the runtime
    proxy.wait_state("vm.cloud", "up")
    kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=5)


def test_a_new_runtime_down_before_its_first_list_keeps_its_pods_listed(node: Cluster) -> None:
    """Found by the runtime-in-pod e2e: a pod run on a runtime that then went down
    before criproxy ever had a List answer from it was missing from relists."""
    kubelet = Kubelet(node)
    vm = register(node, "vm.cloud")
    pod = routed(kubelet, "vm.cloud")
    vm.stop()
    node.proxy.wait_state("vm.cloud", "down")
    assert pod in listed(kubelet)
    # The front's lines reach the log through supervisord's relay, a moment later.
    wait_until(lambda: "changes made through criproxy" in node.proxy.log(), 10,
               "the log line saying where its pods came from")


def test_a_registrar_that_cannot_publish_keeps_criproxy_up(node: Cluster) -> None:
    """It runs in supervisord's own loop: an error there must not end supervisord."""
    blocker = node.proxy.rundir / "registered.json.tmp"
    blocker.mkdir()  # publishing writes this file first: now it cannot
    register(node, "vm.cloud")
    wait_until(lambda: "cannot act on" in node.proxy.log(), 10, "the failure logged")
    kubelet = Kubelet(node)
    kubelet.rt.Version(cri.VersionRequest(), timeout=5)
    time.sleep(6)  # a tick of supervisord's with a runtime that is not published
    assert node.proxy.proc.poll() is None
    blocker.rmdir()
    (node.proxy.runtimes_dir / "nudge").write_text("")  # any change: a look again
    routed(kubelet, "vm.cloud")
