"""End to end (issue 24): a CRI runtime that runs in a pod criproxy itself started.

criproxy starts in front of the primary containerd (scripts/runtimes.py's A) only. Through
criproxy's socket, the test does what kubelet does for the DaemonSet's pod of
deploy/runtime-daemonset/nested-containerd.yaml (tests/kubepod.py derives the CRI configs
from the manifest): the pod runs on the primary, privileged, on the node's network, PID and
IPC namespaces, with hostPath mounts; its container runs a second containerd with runc,
from an image built offline from Debian's packages (scripts/nestedimage.py), listening on
a socket in criproxy's -runtimesDir, which registers it (with the RuntimeClass handler
its NAME.json names). Then, through the same socket:

- pods placed on the nested runtime by annotation and by RuntimeClass handler run there:
  ExecSync, Exec streaming (websocket), logs in the node's log directory;
- the runtime's container killed with SIGKILL and recreated, an upgrade (a new pod with
  the :2 image) and a criproxy restart, under a kubelet-like relister: no successful
  relist ever lacks a pod of either runtime; calls to the nested runtime fail fast with
  UNAVAILABLE naming it while it is gone and work within about a second of its socket
  answering again; the primary's calls never wait on it;
- the runtime pod's own calls (on the primary) are fast while its runtime is absent or
  hung (SIGSTOP).

Needs root, like the other e2e modules; `runtimes.up` apt-get installs what is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests import nested_runtime as nr
from tests.nested_runtime import CALL_TIMEOUT, LIST_BUDGET, Site, timed, wait_until
from tests.relister import Relister, longest_failure, partial, summary
from tests.wsexec import ws_exec

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: containerd in a privileged container")

FAST = 1.0             # seconds: a call that does not wait on a runtime that is gone
# Seconds from the nested socket answering to criproxy serving it: 1 s is the aim (issue
# 24); the slack is for a loaded 2-core machine. Seen here: 0.3-0.7 s.
BACK_WITHIN = 1.5


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="rip-", dir="/tmp"))
    (base / "px").mkdir()
    made: Site | None = None
    try:
        made = nr.make_site(base)
        made.start_criproxy()
        yield made
    finally:
        if made is not None:
            nr.teardown(made)
        else:
            nr.cleanup(base, f"/criproxy-{base.name}")
        if not os.environ.get("CRIPROXY_E2E_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def runtime(site: Site) -> nr.RuntimePod:
    """The runtime's pod, registered and answering through criproxy."""
    pod = site.run_runtime_pod()
    wait_until("the nested socket answering", site.socket_answers, timeout=60)
    site.seed_images()
    wait_until("the nested runtime through criproxy", site.nested_answers, timeout=30)
    return pod


def nested_sandbox_state(site: Site, pod: nr.NestedPod) -> int:
    assert site.via is not None
    return site.via.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=pod.pod_id), timeout=CALL_TIMEOUT).status.state


# ---------------------------------------------------------------- the runtime's pod


def test_the_runtime_pod_runs_on_the_primary_as_the_manifest_says(
        site: Site, runtime: nr.RuntimePod) -> None:
    assert "__" not in runtime.pod_id and "__" not in runtime.cid  # the primary's ids
    status = site.primary.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=runtime.pod_id), timeout=CALL_TIMEOUT).status
    assert status.state == pb.SANDBOX_READY
    ns = status.linux.namespaces.options
    assert (ns.network, ns.pid, ns.ipc) == (pb.NODE, pb.NODE, pb.NODE)
    container = site.primary.runtime.ContainerStatus(pb.ContainerStatusRequest(
        container_id=runtime.cid), timeout=CALL_TIMEOUT).status
    assert container.state == pb.CONTAINER_RUNNING
    mounts = {m.container_path: m for m in container.mounts}
    for node_path in nr.NODE_PATHS:
        mount = mounts[node_path]
        assert mount.host_path == str(site.paths[node_path]), mount
    assert mounts["/sys/fs/cgroup"].host_path == "/sys/fs/cgroup"
    assert mounts["/var/lib/kubelet/pods"].propagation == pb.PROPAGATION_BIDIRECTIONAL
    # Registered by its socket, with the handlers of its .json.
    registration = json.loads((site.regdir / f"{site.name}.json").read_text())
    assert registration == {"runtimeHandlers": {site.handler: "runc"}}
    assert site.socket.is_socket()
    assert site.proxy is not None
    site.proxy.wait_state(site.name, "up")
    # The primary's own containerd holds it; criproxy lists it unprefixed.
    listed = site.via.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
    assert runtime.pod_id in {p.id for p in listed.items}
    log = Path(runtime.config.log_directory) / "containerd" / "0.log"
    wait_until(f"the runtime's own log {log}", lambda: "nested runtime:" in log.read_text())


# ---------------------------------------------------------------- pods on it


@pytest.fixture(scope="module")
def nested(site: Site, runtime: nr.RuntimePod) -> list[nr.NestedPod]:
    word = "from-the-nested-runtime"
    return [site.run_nested_pod("by-annotation", by_handler=False,
                                command=("sh", "-c", f"echo {word}-annotation; exec sleep 1000")),
            site.run_nested_pod("by-handler", by_handler=True,
                                command=("sh", "-c", f"echo {word}-handler; exec sleep 1000"))]


def test_pods_run_on_the_nested_runtime_by_annotation_and_by_handler(
        site: Site, nested: list[nr.NestedPod]) -> None:
    assert site.via is not None
    direct = nr.Cri.connect(f"unix://{site.socket}")
    try:
        on_nested = {p.id for p in direct.runtime.ListPodSandbox(
            pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT).items}
        on_primary = {p.id for p in site.primary.runtime.ListPodSandbox(
            pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT).items}
    finally:
        direct.channel.close()
    for pod in nested:
        prefix = f"{site.name}__"
        assert pod.pod_id.startswith(prefix) and pod.cid.startswith(prefix), pod
        bare = pod.pod_id[len(prefix):]
        assert bare in on_nested and bare not in on_primary
        status = site.via.runtime.ContainerStatus(pb.ContainerStatusRequest(
            container_id=pod.cid), timeout=CALL_TIMEOUT).status
        assert status.state == pb.CONTAINER_RUNNING, status
        out = site.via.runtime.ExecSync(pb.ExecSyncRequest(
            container_id=pod.cid, cmd=["sh", "-c", "echo out; echo err >&2"], timeout=10),
            timeout=CALL_TIMEOUT)
        assert (out.exit_code, out.stdout, out.stderr) == (0, b"out\n", b"err\n")
        # Exec streaming: the URL is the nested runtime's streaming server (node loopback).
        url = site.via.runtime.Exec(pb.ExecRequest(
            container_id=pod.cid, cmd=["sh", "-c", "echo streamed; echo oops >&2; exit 3"],
            stdout=True, stderr=True), timeout=CALL_TIMEOUT).url
        assert url.startswith(f"http://127.0.0.1:{site.stream_port}/"), url
        result = ws_exec(url)
        assert (result.stdout, result.stderr, result.exit_code) == \
            (b"streamed\n", b"oops\n", 3), result
        # The log, written inside the runtime's container, is in the node's directory.
        path = site.host_log(pod)
        kind = "handler" if pod.by_handler else "annotation"
        wait_until(f"the log line in {path}", lambda: any(
            line.split(" ", 3)[1:] == ["stdout", "F", f"from-the-nested-runtime-{kind}"]
            for line in path.read_text().splitlines()), timeout=10)
        assert status.log_path == f"{pod.config.log_directory}/main/0.log"


# ---------------------------------------------------------------- it comes and goes


Timed = dict[str, tuple[float, grpc.RpcError | None]]


def gone_calls(site: Site, nested: list[nr.NestedPod]) -> Timed:
    """Calls for the nested runtime while it is gone: each timed, with its error."""
    assert site.via is not None
    rt, pod = site.via.runtime, nested[0]
    return {
        "ContainerStatus": timed(lambda: rt.ContainerStatus(pb.ContainerStatusRequest(
            container_id=pod.cid), timeout=CALL_TIMEOUT)),
        "PodSandboxStatus": timed(lambda: rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=pod.pod_id), timeout=CALL_TIMEOUT)),
        "ExecSync": timed(lambda: rt.ExecSync(pb.ExecSyncRequest(
            container_id=pod.cid, cmd=["true"], timeout=5), timeout=CALL_TIMEOUT)),
    }


def runtime_pod_calls(site: Site, pod: nr.RuntimePod) -> Timed:
    """What kubelet asks of the runtime's own pod, and the node's calls (all on the primary)."""
    assert site.via is not None
    rt, images = site.via.runtime, site.via.images
    image = pod.kube.image or pod.kube.container()["image"]
    return {
        "Version": timed(lambda: rt.Version(pb.VersionRequest(), timeout=CALL_TIMEOUT)),
        "Status": timed(lambda: rt.Status(pb.StatusRequest(), timeout=CALL_TIMEOUT)),
        "PodSandboxStatus": timed(lambda: rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=pod.pod_id), timeout=CALL_TIMEOUT)),
        "ContainerStatus": timed(lambda: rt.ContainerStatus(pb.ContainerStatusRequest(
            container_id=pod.cid), timeout=CALL_TIMEOUT)),
        "ListContainers(pod)": timed(lambda: rt.ListContainers(pb.ListContainersRequest(
            filter=pb.ContainerFilter(pod_sandbox_id=pod.pod_id)), timeout=CALL_TIMEOUT)),
        "ImageStatus": timed(lambda: images.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=image, annotations=dict(pod.config.annotations))),
            timeout=CALL_TIMEOUT)),
        "ListPodSandbox(uid)": timed(lambda: rt.ListPodSandbox(pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(label_selector={nr.UID_LABEL: pod.kube.uid})),
            timeout=CALL_TIMEOUT)),
    }


def show(title: str, calls: Timed) -> str:
    return f"{title}: " + ", ".join(
        f"{name} {secs * 1000:.0f} ms{' ' + err.code().name if err else ''}"
        for name, (secs, err) in calls.items())


def assert_gone_fast(site: Site, nested: list[nr.NestedPod], rpod: nr.RuntimePod | None,
                     figures: list[str]) -> None:
    wait_until("criproxy failing the nested runtime's calls", lambda: (
        gone_calls(site, nested)["ContainerStatus"][1] or None), timeout=10)
    gone = gone_calls(site, nested)
    own = runtime_pod_calls(site, rpod) if rpod is not None else {}
    figures += [show("  nested, gone", gone)]
    if own:
        figures.append(show("  runtime pod, runtime gone", own))
    for name, (secs, err) in gone.items():
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, (name, err)
        assert site.name in (err.details() or ""), (name, err.details())
        assert secs < FAST, (name, secs)
    for name, (secs, err) in own.items():
        assert err is None, (name, err)
        assert secs < FAST, (name, secs)


def back_within(site: Site) -> float:
    """Seconds from the nested socket answering to criproxy serving the nested runtime."""
    wait_until("the nested socket answering", site.socket_answers, timeout=60, interval=0.01)
    answered = time.monotonic()
    wait_until("the nested runtime through criproxy", lambda: site.nested_answers(2),
               timeout=30, interval=0.01)
    return time.monotonic() - answered


def test_the_runtime_comes_and_goes_as_pods_do(site: Site, runtime: nr.RuntimePod,
                                              nested: list[nr.NestedPod], capsys) -> None:
    assert site.proxy is not None
    relister = Relister(str(site.proxy.listen), {runtime.pod_id, *(p.pod_id for p in nested)},
                        {runtime.cid, *(p.cid for p in nested)}, nested[1].uid,
                        timeout=CALL_TIMEOUT).start()
    figures: list[str] = []

    def expect() -> None:
        rpods = site.runtime_pods
        relister.expect({*(p.pod_id for p in rpods), *(p.pod_id for p in site.nested_pods)},
                        {*(p.cid for p in rpods), *(p.cid for p in site.nested_pods)})
    try:
        wait_until("relists", lambda: sum(not r.error for r in relister.relists) >= 3)
        # 1. kill -9 of the runtime's container; kubelet starts it again (attempt 1).
        os.kill(site.container_pid(runtime.cid), signal.SIGKILL)
        assert_gone_fast(site, nested, runtime, figures)
        old = runtime.cid
        site.start_runtime_container(runtime, attempt=1)
        expect()
        back = back_within(site)
        figures.append(f"  kill -9: back {back * 1000:.0f} ms after its socket")
        assert back < BACK_WITHIN, figures
        site.remove_container(old)  # kubelet's garbage collection of the dead one
        # 2. An upgrade: the DaemonSet's pod deleted, one with the :2 image created.
        site.runtime_pods.remove(runtime)  # from now on, kubelet does not expect it
        expect()
        site.runtime_pods.append(runtime)
        site.delete_runtime_pod(runtime)
        assert_gone_fast(site, nested, site.runtime_pods[0] if site.runtime_pods else None,
                         figures)
        upgraded = site.run_runtime_pod(image=nr.nestedimage.NESTED_IMAGES[1])
        expect()
        back = back_within(site)
        figures.append(f"  upgrade: back {back * 1000:.0f} ms after its socket")
        assert back < BACK_WITHIN, figures
        # Its workload restarts, as kubelet would recreate it: a new pod runs there.
        fresh = site.run_nested_pod("after-upgrade", by_handler=True)
        expect()
        out = site.via.runtime.ExecSync(pb.ExecSyncRequest(
            container_id=fresh.cid, cmd=["echo", "upgraded"], timeout=10), timeout=CALL_TIMEOUT)
        assert out.stdout == b"upgraded\n"
        # 3. criproxy restarted while the runtime's pod runs.
        site.restart_criproxy()
        wait_until("the nested runtime after criproxy's restart", lambda: site.nested_answers(2))
        wait_until("relists after the restart", lambda: not relister.relists[-1].error)
        time.sleep(1.5)
    finally:
        relists = relister.stop()
    report = summary(relists)
    with capsys.disabled():
        print("\nruntime in a pod:", report, *figures, sep="\n")
    assert not partial(relists), report
    assert longest_failure(relists) < 8.0, f"{report}\n{site.proxy.log()[-6000:]}"
    assert nested_sandbox_state(site, fresh) == pb.SANDBOX_READY
    assert site.container_pid(upgraded.cid) > 0


def test_the_runtime_pods_calls_never_wait_on_its_runtime(site: Site, runtime: nr.RuntimePod,
                                                         capsys) -> None:
    """Its runtime hung (SIGSTOP of the nested containerd): the pod's calls on the primary
    answer as fast as ever; lists that fan out wait at most -listBudget."""
    rpod = site.runtime_pods[-1]
    assert site.nested_answers()
    before = runtime_pod_calls(site, rpod)
    pid = site.container_pid(rpod.cid)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.5)
        hung = runtime_pod_calls(site, rpod)
        nested_call = timed(lambda: site.via.images.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=f"{site.name}/{nr.runtimes.PAUSE_IMAGE}")), timeout=5))
    finally:
        os.kill(pid, signal.SIGCONT)
    with capsys.disabled():
        print("", show("runtime pod, runtime up", before), show("runtime pod, runtime hung", hung),
              show("nested ImageStatus, hung", {"ImageStatus": nested_call}), sep="\n")
    for name, (secs, err) in hung.items():
        assert err is None, (name, err)
        limit = LIST_BUDGET + FAST if name.startswith("List") else FAST
        assert secs < limit, (name, secs)
    wait_until("the nested runtime after SIGCONT", site.nested_answers)
