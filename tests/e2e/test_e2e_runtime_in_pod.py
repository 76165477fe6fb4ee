"""End to end (issues 24, 33): a CRI runtime that runs in a pod criproxy itself started,
and whose pods outlive that pod.

criproxy starts in front of the primary containerd (scripts/runtimes.py's A) only. Through
criproxy's socket, the test does what kubelet does for the DaemonSet's pod of
deploy/runtime-daemonset/nested-containerd.yaml (tests/support/kubepod.py derives the CRI configs
from the manifest): the pod runs on the primary, privileged, on the node's network, PID and
IPC namespaces, with hostPath mounts; its container runs a second containerd with runc,
from an image built offline from Debian's packages (scripts/nestedimage.py), listening on
a socket in criproxy's -runtimesDir, which registers it (with the RuntimeClass handler
its NAME.json names). Then, through the same socket:

- pods placed on the nested runtime by annotation and by RuntimeClass handler run there:
  ExecSync, Exec streaming (websocket), logs in the node's log directory;
- kill -9 of the nested containerd, kill -9 of every process of its container (each
  recreated as kubelet does, the old container removed), an upgrade (its pod deleted, one
  with the :2 image created) and a criproxy restart, under a kubelet-like relister: no
  successful relist ever lacks a pod of either runtime; the nested pods keep their sandbox
  and container ids, stay ready and running, their processes never stop, and exec and
  logs work again once the runtime's socket answers; calls to the nested runtime fail fast
  with UNAVAILABLE naming it while it is gone; the primary's calls never wait on it;
- the runtime pod's own calls (on the primary) are fast while its runtime is hung (SIGSTOP);
- its pods removed and its pod deleted, the runtime leaves criproxy, and nothing of it is
  left on the node: no shim, mount, cgroup or shim socket.

Needs root, like the other e2e modules; `runtimes.up` apt-get installs what is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.e2e import nested_runtime as nr
from tests.e2e.nested_runtime import CALL_TIMEOUT, LIST_BUDGET, Site, timed, wait_until
from tests.support.relister import Relister, longest_failure, partial, summary
from tests.support.wsexec import ws_exec

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: containerd in a privileged container")

FAST = 1.0             # seconds: a call that does not wait on a runtime that is gone
BACK = 10.0            # seconds of patience for exec and logs once the socket answers


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


def nested_container_state(site: Site, pod: nr.NestedPod) -> int:
    assert site.via is not None
    return site.via.runtime.ContainerStatus(pb.ContainerStatusRequest(
        container_id=pod.cid), timeout=CALL_TIMEOUT).status.state


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
    by_host_path = {m.host_path: m for m in container.mounts}
    for node_path in nr.NODE_PATHS:
        assert str(site.paths[node_path]) in by_host_path, node_path
    mounts = {m.container_path: m for m in container.mounts}
    assert mounts["/sys/fs/cgroup"].host_path == "/sys/fs/cgroup"
    assert mounts["/var/lib/kubelet/pods"].propagation == pb.PROPAGATION_BIDIRECTIONAL
    # The nested pods' runtime state, on a node path: the next container finds it again.
    assert mounts["/run/containerd"].host_path == str(site.paths["/run/nested-runtime"])
    assert mounts["/run/containerd"].propagation == pb.PROPAGATION_BIDIRECTIONAL
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
                                command=("sh", "-c", f"echo {word}-annotation; {nr.LISTENS}")),
            site.run_nested_pod("by-handler", by_handler=True,
                                command=("sh", "-c", f"echo {word}-handler; {nr.LISTENS}"))]


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
        kind = "handler" if pod.by_handler else "annotation"
        wait_until(f"the log line in {site.host_log(pod)}",
                   lambda: site.logged(pod, f"from-the-nested-runtime-{kind}"), timeout=10)
        site.say(pod, "said-at-start")
        wait_until("the said line logged", lambda: site.logged(pod, "said-at-start"))
        assert status.log_path == f"{pod.config.log_directory}/main/0.log"
    # Their shims run in a cgroup of their own (every hierarchy), not in the runtime
    # container's: what is left there is killed when the container's main process exits.
    shims = site.shim_pids()
    assert len(shims) == len(nested), shims
    assert not set(shims) & nr.cgroup_pids(site.container_pid(site.runtime_pods[-1].cid))
    for pid in shims:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        assert {line.split(":", 2)[2] for line in lines} == {site.shim_cgroup}, lines


# ---------------------------------------------------------------- its pods outlive it


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


@dataclass(frozen=True)
class Workload:
    """A nested pod as it must stay: its ids, and its processes (pid, start time)."""
    pod_id: str
    cid: str
    processes: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, site: Site, pod: nr.NestedPod) -> "Workload":
        return cls(pod.pod_id, pod.cid, tuple((pid, nr.start_time(pid))
                                              for pid in site.pids(pod)))


def assert_untouched(site: Site, pods: list[nr.NestedPod], before: dict[str, Workload]) -> None:
    """Same ids, ready and running, the same processes alive (never restarted)."""
    for pod in pods:
        assert nested_sandbox_state(site, pod) == pb.SANDBOX_READY, pod.pod_id
        assert nested_container_state(site, pod) == pb.CONTAINER_RUNNING, pod.cid
        assert Workload.of(site, pod) == before[pod.uid]  # start times read: alive


def assert_reattached(site: Site) -> None:
    """The new containerd found every shim again: none cleaned up as dead (what it logs, and
    does, for a shim whose socket does not answer: it deletes the shim's containers)."""
    rpod = site.runtime_pods[-1]
    log = Path(rpod.config.log_directory) / "containerd" / f"{rpod.attempt}.log"
    text = log.read_text()
    assert "starting containerd" in text, log
    assert "cleaning up dead shim" not in text and "shim disconnected" not in text, text[-3000:]


def socket_answered(site: Site) -> float:
    """When (monotonic) the nested containerd's own socket answers again."""
    wait_until("the nested socket answering", site.socket_answers, timeout=60, interval=0.01)
    return time.monotonic()


def served_after(site: Site, answered: float) -> float:
    """Seconds from `answered` to criproxy serving the nested runtime again."""
    wait_until("the nested runtime through criproxy", lambda: site.nested_answers(2),
               timeout=30, interval=0.01)
    return time.monotonic() - answered


def working_after(site: Site, pods: list[nr.NestedPod], event: str, answered: float) -> float:
    """Seconds from `answered` until exec (through criproxy) and logs (in the node's
    directory) work for every pod: a word said into each is seen in its log."""
    for pod in pods:
        word = f"after-{event}-{uuid.uuid4().hex[:8]}"
        wait_until(f"exec into {pod.cid[:24]} after {event}", lambda: site.say(pod, word) or True,
                   timeout=BACK, interval=0.01)
        wait_until(f"{word} in the log", lambda: site.logged(pod, word), timeout=BACK,
                   interval=0.01)
    return time.monotonic() - answered


def kill_containerd(site: Site, rpod: nr.RuntimePod) -> None:
    os.kill(site.runtime_pid(rpod.cid), signal.SIGKILL)


def kill_container(site: Site, rpod: nr.RuntimePod) -> None:
    assert site.kill_container(rpod.cid)


def restarted(site: Site, rpod: nr.RuntimePod, kill: Callable[[Site, nr.RuntimePod], None],
              nested: list[nr.NestedPod], figures: list[str]) -> None:
    """The runtime's container killed, then as kubelet does: the exit seen, the container
    started again (attempt + 1), the dead one garbage-collected (its root filesystem gone)."""
    kill(site, rpod)
    site.wait_exited(rpod.cid)
    assert_gone_fast(site, nested, rpod, figures)
    old = rpod.cid
    site.start_runtime_container(rpod, attempt=rpod.attempt + 1)
    site.remove_container(old)


def upgraded(site: Site, nested: list[nr.NestedPod], figures: list[str],
             expect: Callable[[], None]) -> None:
    """The DaemonSet's pod deleted (its grace: containerd stops on SIGTERM), and one with
    the :2 image created."""
    rpod = site.runtime_pods[-1]
    site.runtime_pods.remove(rpod)  # from now on, kubelet does not expect it
    expect()
    site.runtime_pods.append(rpod)
    site.delete_runtime_pod(rpod)
    assert_gone_fast(site, nested, None, figures)
    site.run_runtime_pod(image=nr.nestedimage.NESTED_IMAGES[1])


def test_its_pods_outlive_the_runtime_restarting_and_upgraded(
        site: Site, runtime: nr.RuntimePod, nested: list[nr.NestedPod], capsys) -> None:
    assert site.proxy is not None
    relister = Relister(str(site.proxy.listen), {runtime.pod_id, *(p.pod_id for p in nested)},
                        {runtime.cid, *(p.cid for p in nested)}, nested[1].uid,
                        timeout=CALL_TIMEOUT).start()
    figures: list[str] = []
    before = {pod.uid: Workload.of(site, pod) for pod in nested}

    def expect() -> None:
        rpods = site.runtime_pods
        relister.expect({*(p.pod_id for p in rpods), *(p.pod_id for p in site.nested_pods)},
                        {*(p.cid for p in rpods), *(p.cid for p in site.nested_pods)})

    def measured(event: str) -> None:
        expect()
        answered = socket_answered(site)
        served = served_after(site, answered)
        working = working_after(site, nested, event.replace(" ", "-").replace(":", ""), answered)
        figures.append(f"  {event}: after its socket answers, criproxy serves it in "
                       f"{served * 1000:.0f} ms, exec and logs work in {working * 1000:.0f} ms")
        assert_untouched(site, nested, before)
        assert_reattached(site)
    try:
        wait_until("relists", lambda: sum(not r.error for r in relister.relists) >= 3)
        restarted(site, runtime, kill_containerd, nested, figures)
        measured("kill -9 of containerd")
        restarted(site, runtime, kill_container, nested, figures)
        measured("kill -9 of its container")
        upgraded(site, nested, figures, expect)
        measured("upgrade to :2")
        # New pods run on the upgraded runtime too.
        fresh = site.run_nested_pod("after-upgrade", by_handler=True)
        expect()
        out = site.via.runtime.ExecSync(pb.ExecSyncRequest(
            container_id=fresh.cid, cmd=["echo", "upgraded"], timeout=10), timeout=CALL_TIMEOUT)
        assert out.stdout == b"upgraded\n"
        # criproxy restarted while the runtime's pod runs.
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
    # Failed relists are harmless while short (kubelet calls PLEG unhealthy after 3 min); the
    # longest is criproxy's own restart, seconds on a loaded 2-core machine.
    assert longest_failure(relists) < 30.0, f"{report}\n{site.proxy.log()[-6000:]}"
    assert_untouched(site, nested, before)
    assert nested_sandbox_state(site, fresh) == pb.SANDBOX_READY


def test_the_runtime_pods_calls_never_wait_on_its_runtime(site: Site, runtime: nr.RuntimePod,
                                                         capsys) -> None:
    """Its runtime hung (SIGSTOP of the nested containerd): the pod's calls on the primary
    answer as fast as ever; lists that fan out wait at most -listBudget."""
    rpod = site.runtime_pods[-1]
    assert site.nested_answers()
    before = runtime_pod_calls(site, rpod)
    pid = site.runtime_pid(rpod.cid)
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


# ---------------------------------------------------------------- it leaves


def test_a_runtime_that_leaves_leaves_nothing_behind(site: Site, runtime: nr.RuntimePod,
                                                    nested: list[nr.NestedPod]) -> None:
    """Its pods removed through criproxy, then its pod deleted (as when its DaemonSet is):
    its socket goes, criproxy lets it go after -leaveAfter, and nothing of it stays on the
    node but the files the README names."""
    assert site.via is not None and site.proxy is not None
    processes = [pid for pod in site.nested_pods for pid in site.pids(pod)]
    for pod in list(site.nested_pods):
        site.remove_nested_pod(pod)
    for rpod in list(site.runtime_pods):
        site.delete_runtime_pod(rpod)
    wait_until(f"{site.name} leaving criproxy", lambda: all(
        r["label"] != site.name for r in site.proxy.status()["runtimes"]),
        timeout=nr.LEAVE_AFTER + 20)
    with pytest.raises(grpc.RpcError) as refused:  # a pod for it by name: no such runtime
        site.run_nested_pod("after-it-left", by_handler=False)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    listed = {p.id for p in site.via.runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT).items}
    assert not {pod.pod_id for pod in site.gone_pods} & listed
    assert not [pid for pid in processes if Path(f"/proc/{pid}").exists()]
    assert nr.leftovers(site) == {"shims": [], "mounts": [], "cgroups": [], "shim sockets": []}
    # What stays, as the README says: the registration's .json, the run directory's empty
    # directories and ttrpc socket file, and the state directory with one copy of the
    # image's files (":1" and ":2" hold the same ones).
    assert sorted(p.name for p in site.regdir.iterdir()) == [f"{site.name}.json"]
    run = site.paths["/run/nested-runtime"]
    assert [p.relative_to(run) for p in run.rglob("*") if not p.is_dir()] == \
        [Path("containerd.sock.ttrpc")]
    (copy,) = (site.paths["/var/lib/nested-runtime"] / "roots").iterdir()
    assert (copy / "etc" / "nested-runtime-version").read_text().strip() == copy.name
