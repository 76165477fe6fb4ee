"""End to end, as a stock kubelet sees it: criproxy in front of two real containerds.

Same node as tests/e2e/test_e2e_containerd.py (scripts/runtimes.py: containerd A with runc,
the primary; containerd B with crun, named `crun.test`), with criproxy mapping the
RuntimeClass handler `althandler` to B (`-runtimeHandlers althandler=crun.test:`).

- Issue 12: a kubelet-like relister (tests/support/relister.py) runs while B's containerd
  restarts and while B's worker is SIGKILLed, with running pods on both: no relist may
  succeed while lacking a pod or container, and failures end within a few seconds.
- Issue 13: kubelet's exact call sequence for a pod placed on B by its handler (no
  `ImageSpec.runtime_handler`, as a stock kubelet sends): the image follows the pod.

What each containerd really holds is checked on its own socket, bypassing criproxy.
Needs root, like the other e2e module; `runtimes.up` apt-get installs what is missing.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from cri_api.v1 import api_pb2 as pb

from tests.e2e.e2e_node import (  # noqa: F401 - pods: a fixture
    B, CALL_TIMEOUT, LIST_BUDGET, PRIMARY, STREAM_URL, Cri, Node, Pod, bare_id,
    direct_container_ids, has_image, http_status, pods,
    runtimes, two_containerds, wait_for)
from tests.e2e.kubelet_calls import HANDLER, busybox_for, run_kubelet_pod, start_container
from tests.support.harness import Proxy, start_proxy
from tests.support.relister import UID_LABEL, Relister, longest_failure, partial, summary

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: runs two containerd instances (mounts, cgroups, namespaces)")

B_LABEL = B                       # B's label in criproxy's status
# A failed relist is harmless while short (kubelet's PLEG tolerates minutes); these
# faults must end well within this, even on a loaded 2-core machine.
FAILURES_END_WITHIN = 8.0


def start_criproxy(base: Path, info: dict) -> Proxy:
    a, b = info["instances"]["a"], info["instances"]["b"]
    return start_proxy(f"{a['socket']},{B}:unix://{b['socket']}",
                       "-streamUrl", STREAM_URL, "-listBudget", str(LIST_BUDGET),
                       "-runtimeHandlers", f"{HANDLER}={B}:",
                       workdir=base / "px", wait_for=["primary", B_LABEL])


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """The two containerds behind a criproxy that maps `althandler` to B."""
    with two_containerds("e2ek-") as (base, info):
        proxy = start_criproxy(base, info)
        direct = {PRIMARY: Cri.connect(info["instances"]["a"]["endpoint"]),
                  B: Cri.connect(info["instances"]["b"]["endpoint"])}
        started = Node(base, info, proxy, Cri.connect(f"unix://{proxy.listen}"), direct,
                       base / "logs")
        try:
            yield started
        finally:
            started.close()


# ---------------------------------------------------------------- kubelet-like calls


def remove_container(node: Node, cid: str) -> None:
    node.via.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0),
                                   timeout=CALL_TIMEOUT)
    node.via.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid),
                                     timeout=CALL_TIMEOUT)


def container_state(cri: Cri, cid: str) -> int:
    return cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                       timeout=CALL_TIMEOUT).status.state


# ---------------------------------------------------------------- issue 12: kubelet's view


def restart_b_containerd(node: Node) -> None:
    """B's containerd stops (its shims and containers run on) and starts again, ~2 s
    later, the way test_primary_restart_under_the_proxy restarts A."""
    runtimes.stop_daemon(node.rtdir, "b")
    try:
        node.proxy.wait_state(B_LABEL, "down", timeout=30)
        time.sleep(2.0)
    finally:
        node.info["instances"]["b"] = runtimes.start_daemon(node.rtdir, "b")
    node.proxy.wait_state(B_LABEL, "up", timeout=60)


def kill_b_worker(node: Node) -> None:
    """SIGKILL B's worker (pid from criproxy's status.json); supervisord starts another."""
    old = node.proxy.worker_pid(B_LABEL)
    os.kill(old, signal.SIGKILL)
    wait_for("a new worker for B", lambda: node.proxy.worker_pid(B_LABEL) not in (0, old),
             timeout=60, interval=0.2)
    node.proxy.wait_state(B_LABEL, "up", timeout=60)


def freeze_b_containerd(node: Node) -> None:
    """SIGSTOP B's containerd for longer than -listBudget: hung, not down."""
    pid = node.instance(B)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(LIST_BUDGET + 3.0)
    finally:
        os.kill(pid, signal.SIGCONT)


def relisted_ok_after(relister: Relister, since: float) -> bool:
    return any(r.at > since and not r.error for r in list(relister.relists))


@pytest.mark.parametrize("fault", [restart_b_containerd, kill_b_worker, freeze_b_containerd],
                         ids=["containerd-restart", "worker-sigkill", "containerd-frozen"])
def test_no_relist_lacks_running_pods_while_the_alt_runtime_is_in_trouble(
        node: Node, fault: Callable[[Node], None]) -> None:
    with pods(node) as made:
        alt = [run_kubelet_pod(node, made, B, "view-h1"), run_kubelet_pod(node, made, B, "view-h2"),
               run_kubelet_pod(node, made, B, "view-ann", by_handler=False)]
        primary = [run_kubelet_pod(node, made, PRIMARY, f"view-a{i}") for i in range(2)]
        containers = {start_container(node, pod, "main", busybox_for(node, pod))
                      for pod in alt + primary}
        sandboxes = {pod.id for pod in alt + primary}
        relister = Relister(str(node.proxy.listen), sandboxes, containers,
                            alt[0].config.metadata.uid, timeout=CALL_TIMEOUT)
        relister.start()
        try:
            wait_for("relists before the fault", lambda: sum(
                not r.error for r in list(relister.relists)) >= 4, timeout=30)
            fault_at = time.monotonic()
            fault(node)
            fault_over = time.monotonic()
            wait_for("a successful relist after the fault",
                     lambda: relisted_ok_after(relister, fault_over), timeout=30)
            time.sleep(2.0)
        finally:
            relists = relister.stop()

        during = [r for r in relists if fault_at <= r.at <= fault_over]
        report = f"{summary(relists)}; {len(during)} during the fault\n{node.proxy.log()[-3000:]}"
        assert not partial(relists), report
        assert longest_failure(relists) < FAILURES_END_WITHIN, report
        assert not relists[-1].error, report
        if fault is not kill_b_worker:
            # B's containerd was down or hung for seconds: its pods came from its last answer.
            assert any(not r.error for r in during), report
        # B's containers ran on through it all, and B answers through criproxy again.
        for cid in containers:
            assert container_state(node.via, cid) == pb.CONTAINER_RUNNING, cid
        out = node.via.runtime.ExecSync(pb.ExecSyncRequest(
            container_id=next(c for c in containers if c.startswith(f"{B}__")),
            cmd=["echo", "still here"], timeout=10), timeout=CALL_TIMEOUT)
        assert out.stdout == b"still here\n"


# ---------------------------------------------------------------- issue 13: images follow the pod


def image_on(node: Node, runtime: str, name: str) -> pb.Image | None:
    answer = node.direct[runtime].images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=name)), timeout=CALL_TIMEOUT)
    return answer.image if answer.HasField("image") else None


def restart_criproxy(node: Node, lose_records: bool) -> None:
    """Stop criproxy and start it again on the same socket and runtime dir, as an upgrade
    or `systemctl restart` does; `lose_records` also deletes the pod record files, so
    what criproxy knows of the pods comes from the runtimes' own answers."""
    node.proxy.stop()
    if lose_records:
        records = list(node.proxy.rundir.glob("last-answers-*"))
        assert records, f"no record files in {node.proxy.rundir}"
        for path in records:
            path.unlink()
    node.via.channel.close()
    node.proxy = start_criproxy(node.base, node.info)
    node.via = Cri.connect(f"unix://{node.proxy.listen}")
    wait_for("Version through the restarted criproxy", lambda: node.via.runtime.Version(
        pb.VersionRequest(), timeout=5).version, timeout=30)


@pytest.mark.parametrize("restart", [None, "keep-records", "lose-records"],
                         ids=["no-restart", "restart", "restart-losing-records"])
def test_a_handler_placed_pods_image_follows_it_through_kubelets_sequence(
        node: Node, restart: str | None) -> None:
    name = node.info["registry"]["images"]["busybox"]  # served by the registry, never imported
    assert image_on(node, PRIMARY, name) is None and image_on(node, B, name) is None
    with pods(node) as made:
        # 1. RunPodSandbox with the handler.
        pod = run_kubelet_pod(node, made, B, "images")
        assert pod.id.startswith(f"{B}__")
        if restart is not None:  # criproxy restarts before kubelet's image calls come
            restart_criproxy(node, lose_records=restart == "lose-records")
        annotations = dict(pod.config.annotations)
        spec = pb.ImageSpec(image=name, annotations=annotations)

        # 2. ImageStatus with the pod's annotations, no handler: absent.
        status = node.via.images.ImageStatus(pb.ImageStatusRequest(image=spec),
                                             timeout=CALL_TIMEOUT)
        assert not status.HasField("image"), status

        # 3. PullImage with the pod's sandbox config: onto B only.
        ref = node.via.images.PullImage(pb.PullImageRequest(image=spec, sandbox_config=pod.config),
                                        timeout=CALL_TIMEOUT).image_ref
        on_b = image_on(node, B, name)
        assert on_b is not None, "the pull did not land on the pod's runtime"
        assert image_on(node, PRIMARY, name) is None, "the pull landed on the primary"
        assert ref == on_b.id and ref.startswith("sha256:")

        # kubelet's next ImageStatus for this pod finds it (on B, where it is).
        status = node.via.images.ImageStatus(pb.ImageStatusRequest(image=spec),
                                             timeout=CALL_TIMEOUT)
        assert status.HasField("image") and status.image.id == ref, status
        # Without pod context a plain name keeps today's rule: the primary's, which lacks it.
        assert not has_image(node.via, name)

        # 4. CreateContainer by image id, the plain name as user_specified_image.
        word = f"by-id-{uuid.uuid4().hex[:8]}"
        by_id = start_container(node, pod, "by-id",
                                pb.ImageSpec(image=ref, user_specified_image=name),
                                ("sh", "-c", f"echo {word}; exec sleep 1000"))
        # ... and one from the plain name, as critest creates most of its containers.
        plain = start_container(node, pod, "plain", pb.ImageSpec(image=name))
        for cid in (by_id, plain):
            assert bare_id(B, cid) in direct_container_ids(node, B)
            real = node.direct[B].runtime.ContainerStatus(pb.ContainerStatusRequest(
                container_id=bare_id(B, cid)), timeout=CALL_TIMEOUT).status
            # containerd names the image it runs by its repo digest (or its id).
            assert real.state == pb.CONTAINER_RUNNING, real
            assert real.image_ref in (ref, *on_b.repo_digests), (real.image_ref, on_b)
            shown = node.via.runtime.ContainerStatus(pb.ContainerStatusRequest(
                container_id=cid), timeout=CALL_TIMEOUT).status
            assert (shown.id, shown.state) == (cid, pb.CONTAINER_RUNNING)
            assert shown.image_ref.endswith(real.image_ref), (shown.image_ref, real.image_ref)
        listed = node.via.runtime.ListContainers(pb.ListContainersRequest(
            filter=pb.ContainerFilter(label_selector={UID_LABEL: pod.config.metadata.uid})),
            timeout=CALL_TIMEOUT).containers
        assert sorted(c.id for c in listed) == sorted([by_id, plain])

        check_exec_logs_and_streams(node, pod, by_id, word)

        # 5. Image GC: ListImages and ImageFsInfo show B's; RemoveImage by id removes it.
        images = node.via.images.ListImages(pb.ListImagesRequest(),
                                            timeout=CALL_TIMEOUT).images
        assert [i.id for i in images].count(ref) == 1, [i.id for i in images]
        mounts = [fs.fs_id.mountpoint for fs in node.via.images.ImageFsInfo(
            pb.ImageFsInfoRequest(), timeout=CALL_TIMEOUT).image_filesystems]
        assert any("containerd-b" in m for m in mounts), mounts
        for cid in (by_id, plain):  # GC removes only images no container uses
            remove_container(node, cid)
        node.via.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)),
                                    timeout=CALL_TIMEOUT)
        assert image_on(node, B, name) is None and image_on(node, B, ref) is None
        assert not has_image(node.via, ref)
        assert ref not in [i.id for i in node.via.images.ListImages(
            pb.ListImagesRequest(), timeout=CALL_TIMEOUT).images]
        # The imported busybox stays on both.
        for runtime in (PRIMARY, B):
            assert image_on(node, runtime, node.info["images"]["busybox"]) is not None


def check_exec_logs_and_streams(node: Node, pod: Pod, cid: str, word: str) -> None:
    proxy = node.via.runtime
    out = proxy.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["echo", "from B"],
                                            timeout=10), timeout=CALL_TIMEOUT)
    assert (out.exit_code, out.stdout, out.stderr) == (0, b"from B\n", b"")

    path = Path(pod.config.log_directory) / "by-id" / "0.log"
    status = proxy.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                   timeout=CALL_TIMEOUT).status
    assert status.log_path == str(path)

    def logged() -> bool:
        lines = path.read_text().splitlines() if path.exists() else []
        return any(ln.split(" ", 3)[1:] == ["stdout", "F", word] for ln in lines)
    wait_for(f"{word} in {path}", logged, timeout=20)

    port = node.instance(B)["stream_port"]
    urls = {"Exec": proxy.Exec(pb.ExecRequest(container_id=cid, cmd=["sh"], stdout=True),
                               timeout=CALL_TIMEOUT).url,
            "PortForward": proxy.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id,
                                                                   port=[80]),
                                             timeout=CALL_TIMEOUT).url}
    for method, url in urls.items():
        # B's own streaming server issued it, and a plain GET gets an answer from it.
        assert url.startswith(f"http://127.0.0.1:{port}/"), (method, url)
        assert http_status(url) not in (404, *range(500, 600)), (method, url)
