"""End to end: criproxy in front of two real containerd instances (the node and
its steps: tests/e2e/e2e_node.py): lifecycles, Lists, images, stats, events, a frozen
and a restarted runtime, all through the proxy's socket.

Needs root (containerd, mounts, cgroups). As root the suite always runs.
"""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1alpha2 import api_pb2 as old_pb
from cri_api.v1alpha2 import api_pb2_grpc as old_rpc

from tests.e2e.e2e_node import (  # noqa: F401 - node, pods: fixtures
    B, CALL_TIMEOUT, Cri, LABELS, LIST_BUDGET, Node, PRIMARY, Pod, add_container, bare_id,
    code_of, direct_container_ids, direct_pod_ids, has_image, http_status, image_tags,
    node, other, pod_config, pods, remove_pod, run_pod, running_pod, runtimes, shown_ref,
    wait_for)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: runs two containerd instances (mounts, cgroups, namespaces)")


@pytest.mark.parametrize("runtime", [PRIMARY, B], ids=["primary", "crun.test"])
def test_a_v1alpha2_client_runs_pods_on_both(node: Node, runtime: str) -> None:
    """An older kubelet (CRI v1alpha2) through the proxy to containerd speaking v1."""
    assert {r["label"]: r["cri_version"] for r in node.proxy.status()["runtimes"]} == \
        {"primary": "v1", B: "v1"}
    old = old_rpc.RuntimeServiceStub(node.via.channel)
    config = old_pb.PodSandboxConfig.FromString(
        pod_config(node, runtime, "old").SerializeToString())
    with pods(node) as made:
        answer = old.RunPodSandbox(old_pb.RunPodSandboxRequest(config=config),
                                   timeout=CALL_TIMEOUT)
        pod = Pod(runtime, answer.pod_sandbox_id, pb.PodSandboxConfig.FromString(
            config.SerializeToString()))
        made.append(pod)
        assert pod.bare in direct_pod_ids(node, runtime)
        listed = old.ListPodSandbox(old_pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
        assert pod.id in [item.id for item in listed.items]
        cid = add_container(node, pod, "main")
        run = old.ExecSync(old_pb.ExecSyncRequest(container_id=cid, cmd=["echo", "old"],
                                                  timeout=10), timeout=CALL_TIMEOUT)
        assert (run.exit_code, run.stdout) == (0, b"old\n")
        status = old.ContainerStatus(old_pb.ContainerStatusRequest(container_id=cid),
                                     timeout=CALL_TIMEOUT).status
        assert status.id == cid and status.state == old_pb.CONTAINER_RUNNING


@pytest.mark.parametrize("runtime", [PRIMARY, B], ids=["primary", "crun.test"])
def test_pod_lifecycle(node: Node, runtime: str) -> None:
    here, there = node.direct[runtime].runtime, node.direct[other(runtime)].runtime
    proxy = node.via.runtime
    with pods(node) as made:
        pod = run_pod(node, runtime, "life")
        made.append(pod)
        # Only the runtime the annotation names holds the pod.
        status = here.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.bare),
                                       timeout=CALL_TIMEOUT).status
        assert status.state == pb.SANDBOX_READY
        assert pod.bare not in direct_pod_ids(node, other(runtime))
        assert proxy.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id),
                                      timeout=CALL_TIMEOUT).status.id == pod.id

        cid = add_container(node, pod, "main")
        bare = bare_id(runtime, cid)
        shown = proxy.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                      timeout=CALL_TIMEOUT).status
        assert shown.state == pb.CONTAINER_RUNNING
        assert shown.id == cid
        real = here.ContainerStatus(pb.ContainerStatusRequest(container_id=bare),
                                    timeout=CALL_TIMEOUT).status
        assert real.state == pb.CONTAINER_RUNNING
        assert (shown.image.image, shown.image_ref) == \
            (shown_ref(runtime, real.image.image), shown_ref(runtime, real.image_ref))
        assert bare not in direct_container_ids(node, other(runtime))
        listed = proxy.ListContainers(pb.ListContainersRequest(
            filter=pb.ContainerFilter(pod_sandbox_id=pod.id)), timeout=CALL_TIMEOUT).containers
        assert [(c.id, c.pod_sandbox_id) for c in listed] == [(cid, pod.id)]

        out = proxy.ExecSync(pb.ExecSyncRequest(container_id=cid, timeout=10,
                                                cmd=["echo", f"hello from {LABELS[runtime]}"]),
                             timeout=CALL_TIMEOUT)
        assert (out.exit_code, out.stdout, out.stderr) == \
            (0, f"hello from {LABELS[runtime]}\n".encode(), b"")

        # Streaming URLs come from this runtime's own streaming server, absolute, and answer.
        port = node.instance(runtime)["stream_port"]
        urls = {
            "Exec": proxy.Exec(pb.ExecRequest(container_id=cid, cmd=["sh"], stdout=True),
                               timeout=CALL_TIMEOUT).url,
            "Attach": proxy.Attach(pb.AttachRequest(container_id=cid, stdout=True),
                                   timeout=CALL_TIMEOUT).url,
            "PortForward": proxy.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id,
                                                                   port=[80]),
                                             timeout=CALL_TIMEOUT).url,
        }
        for method, url in urls.items():
            parsed = urlparse(url)
            assert (parsed.scheme, parsed.netloc) == ("http", f"127.0.0.1:{port}"), (method, url)
            # A plain GET (no upgrade) gets an answer from the streaming server: a 4xx for
            # exec and attach, 200 for portforward; a token it never issued gets 404.
            assert http_status(url) not in (404, *range(500, 600)), (method, url)
        assert http_status(f"http://127.0.0.1:{port}/exec/notAToken") == 404

        proxy.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0),
                            timeout=CALL_TIMEOUT)
        assert here.ContainerStatus(pb.ContainerStatusRequest(container_id=bare),
                                    timeout=CALL_TIMEOUT).status.state == pb.CONTAINER_EXITED
        proxy.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)
        assert bare not in direct_container_ids(node, runtime)
        # The runtime's own error reaches the caller with its code.
        assert code_of(lambda: proxy.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid), timeout=CALL_TIMEOUT)) == \
            grpc.StatusCode.NOT_FOUND

        proxy.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                             timeout=CALL_TIMEOUT)
        assert here.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.bare),
                                     timeout=CALL_TIMEOUT).status.state == pb.SANDBOX_NOTREADY
        proxy.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                               timeout=CALL_TIMEOUT)
        assert pod.bare not in direct_pod_ids(node, runtime)
        assert code_of(lambda: proxy.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT)) == \
            grpc.StatusCode.NOT_FOUND


def test_lists_show_each_runtime_with_its_prefix(node: Node) -> None:
    proxy = node.via.runtime
    with pods(node) as made:
        pod_a, cid_a = running_pod(node, made, PRIMARY, "list-a")
        pod_b, cid_b = running_pod(node, made, B, "list-b")
        shown_pods = {p.id for p in proxy.ListPodSandbox(pb.ListPodSandboxRequest(),
                                                         timeout=CALL_TIMEOUT).items}
        assert {pod_a.id, pod_b.id} <= shown_pods
        assert pod_b.bare not in shown_pods
        shown_containers = {c.id: c for c in proxy.ListContainers(
            pb.ListContainersRequest(), timeout=CALL_TIMEOUT).containers}
        assert {cid_a, cid_b} <= set(shown_containers)
        assert shown_containers[cid_b].pod_sandbox_id == pod_b.id
        real = {c.id: c for c in node.direct[B].runtime.ListContainers(
            pb.ListContainersRequest(), timeout=CALL_TIMEOUT).containers}[bare_id(B, cid_b)]
        assert shown_containers[cid_b].image.image == shown_ref(B, real.image.image)
        assert shown_containers[cid_b].image_ref == shown_ref(B, real.image_ref)
        # A filter naming one runtime's object goes to that runtime only.
        only_b = proxy.ListContainers(pb.ListContainersRequest(
            filter=pb.ContainerFilter(id=cid_b)), timeout=CALL_TIMEOUT).containers
        assert [c.id for c in only_b] == [cid_b]
        only_a = proxy.ListPodSandbox(pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(id=pod_a.id)), timeout=CALL_TIMEOUT).items
        assert [p.id for p in only_a] == [pod_a.id]


@pytest.mark.parametrize("runtime", [PRIMARY, B], ids=["primary", "crun.test"])
def test_container_log_is_written_where_the_pod_config_says(node: Node, runtime: str) -> None:
    word = f"log-line-{uuid.uuid4().hex[:8]}"
    with pods(node) as made:
        pod, cid = running_pod(node, made, runtime, "logs",
                               ("sh", "-c", f"echo {word}; exec sleep 1000"))
        path = Path(pod.config.log_directory) / "main.log"
        status = node.via.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                                  timeout=CALL_TIMEOUT).status
        assert status.log_path == str(path)

        def logged() -> bool:
            lines = path.read_text().splitlines() if path.exists() else []
            return any(ln.split(" ", 3)[1:] == ["stdout", "F", word] for ln in lines)
        wait_for(f"{word} in {path}", logged, timeout=10)


# ---------------------------------------------------------------- images


def test_list_images_and_image_status_carry_prefixes(node: Node) -> None:
    busybox, pause = node.info["images"]["busybox"], node.info["images"]["pause"]
    direct_a, direct_b = image_tags(node.direct[PRIMARY]), image_tags(node.direct[B])
    shown = image_tags(node.via)
    assert sorted(shown) == sorted(direct_a + [f"{B}/{tag}" for tag in direct_b])
    assert {busybox, pause, f"{B}/{busybox}", f"{B}/{pause}"} <= set(shown)

    status = node.via.images.ImageStatus(pb.ImageStatusRequest(
        image=pb.ImageSpec(image=f"{B}/{busybox}")), timeout=CALL_TIMEOUT).image
    real = node.direct[B].images.ImageStatus(pb.ImageStatusRequest(
        image=pb.ImageSpec(image=busybox)), timeout=CALL_TIMEOUT).image
    assert status.id == real.id and status.id.startswith("sha256:")  # digests never prefixed
    assert list(status.repo_tags) == [f"{B}/{t}" for t in real.repo_tags]
    assert list(status.repo_digests) == [f"{B}/{d}" for d in real.repo_digests]
    # An image id (a digest) is found on whichever runtime holds it.
    assert has_image(node.via, real.id)


def test_pull_and_remove_image_touch_only_the_named_runtime(node: Node) -> None:
    image = node.info["registry"]["images"]["busybox"]  # served by the registry, not imported
    shown = f"{B}/{image}"
    assert not has_image(node.direct[B], image) and not has_image(node.direct[PRIMARY], image)
    try:
        ref = node.via.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=shown)),
                                        timeout=CALL_TIMEOUT).image_ref
        real = node.direct[B].images.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=image)), timeout=CALL_TIMEOUT).image
        assert ref == real.id and ref.startswith("sha256:")
        assert not has_image(node.direct[PRIMARY], image)
        assert not has_image(node.via, image)  # unprefixed: the primary's, which lacks it

        status = node.via.images.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=shown)), timeout=CALL_TIMEOUT).image
        assert list(status.repo_tags) == [shown]
        host = node.info["registry"]["host"]
        assert status.repo_digests and all(d.startswith(f"{B}/{host}/busybox@sha256:")
                                           for d in status.repo_digests)
        assert shown in image_tags(node.via) and image not in image_tags(node.via)
        # A filter naming B's image goes to B only (containerd 1.6 ignores the filter itself).
        filtered = image_tags(node.via, image=shown)
        assert shown in filtered and all(tag.startswith(f"{B}/") for tag in filtered)

        # A holds the same image too now (pulled behind the proxy's back): removing B's
        # through the proxy must leave A's alone.
        node.direct[PRIMARY].images.PullImage(pb.PullImageRequest(
            image=pb.ImageSpec(image=image)), timeout=CALL_TIMEOUT)
        node.via.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=shown)),
                                    timeout=CALL_TIMEOUT)
        assert not has_image(node.direct[B], image)
        assert not has_image(node.via, shown)
        assert has_image(node.direct[PRIMARY], image) and has_image(node.via, image)
        for runtime in (PRIMARY, B):  # the imported images stay, on both
            assert has_image(node.direct[runtime], node.info["images"]["busybox"])
    finally:
        for runtime in (PRIMARY, B):
            with contextlib.suppress(grpc.RpcError):
                node.direct[runtime].images.RemoveImage(pb.RemoveImageRequest(
                    image=pb.ImageSpec(image=image)), timeout=CALL_TIMEOUT)


def test_image_fs_info_merges_both_runtimes(node: Node) -> None:
    def mountpoints(cri: Cri) -> list[str]:
        return [fs.fs_id.mountpoint for fs in cri.images.ImageFsInfo(
            pb.ImageFsInfoRequest(), timeout=CALL_TIMEOUT).image_filesystems]
    a, b = mountpoints(node.direct[PRIMARY]), mountpoints(node.direct[B])
    assert a and b
    assert sorted(mountpoints(node.via)) == sorted(a + b)
    assert any("containerd-a" in m for m in a) and any("containerd-b" in m for m in b)


# ---------------------------------------------------------------- stats and events


def test_stats_carry_prefixed_ids(node: Node) -> None:
    proxy = node.via.runtime
    with pods(node) as made:
        pod_a, cid_a = running_pod(node, made, PRIMARY, "stats-a")
        pod_b, cid_b = running_pod(node, made, B, "stats-b")
        stats = proxy.ListContainerStats(pb.ListContainerStatsRequest(),
                                         timeout=CALL_TIMEOUT).stats
        ids = {s.attributes.id for s in stats}
        assert {cid_a, cid_b} <= ids and bare_id(B, cid_b) not in ids
        only_b = proxy.ListContainerStats(pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(id=cid_b)), timeout=CALL_TIMEOUT).stats
        assert [s.attributes.id for s in only_b] == [cid_b]
        one = proxy.ContainerStats(pb.ContainerStatsRequest(container_id=cid_b),
                                   timeout=CALL_TIMEOUT).stats
        assert one.attributes.id == cid_b

        pod_stats = proxy.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(),
                                              timeout=CALL_TIMEOUT).stats
        pod_ids = {s.attributes.id for s in pod_stats}
        assert {pod_a.id, pod_b.id} <= pod_ids and pod_b.bare not in pod_ids
        for s in pod_stats:
            if s.attributes.id == pod_b.id and s.HasField("linux"):
                assert {c.attributes.id for c in s.linux.containers} <= {cid_b}


def _events_supported(cri: Cri) -> bool:
    """containerd 1.6 has no GetContainerEvents (1.7 has): ask the runtime itself."""
    stream = cri.runtime.GetContainerEvents(pb.GetEventsRequest(), timeout=1)
    try:
        next(stream)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            return False
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    return True


def test_container_events(node: Node) -> None:
    supported = {runtime: _events_supported(node.direct[runtime]) for runtime in (PRIMARY, B)}
    if not all(supported.values()):
        # Regression: the merged stream used to re-subscribe forever, silently, so kubelet's
        # evented PLEG would wait for events that never come instead of falling back to
        # relisting. A runtime without the method must end the stream with UNIMPLEMENTED.
        started = time.monotonic()
        stream = node.via.runtime.GetContainerEvents(pb.GetEventsRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, err.value
        assert time.monotonic() - started < 5
        return
    _check_events_delivered(node)


def _check_events_delivered(node: Node) -> None:
    """Both runtimes' create/start/stop events arrive on the one merged stream."""
    events: queue.Queue = queue.Queue()
    stream = node.via.runtime.GetContainerEvents(pb.GetEventsRequest())

    def read() -> None:
        try:
            for event in stream:
                events.put(event)
        except grpc.RpcError as err:
            events.put(err)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(1.0)  # let the proxy subscribe to both runtimes
        with pods(node) as made:
            cids = {}
            for runtime in (PRIMARY, B):
                _pod, cids[runtime] = running_pod(node, made, runtime, "events")
                node.via.runtime.StopContainer(pb.StopContainerRequest(
                    container_id=cids[runtime], timeout=0), timeout=CALL_TIMEOUT)
            want = {(cid, kind) for cid in cids.values() for kind in (
                pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT,
                pb.CONTAINER_STOPPED_EVENT)}
            seen: set = set()
            deadline = time.monotonic() + 10
            while not want <= seen and time.monotonic() < deadline:
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                assert not isinstance(event, grpc.RpcError), event
                seen.add((event.container_id, event.container_event_type))
                if event.container_id == cids[B] and event.HasField("pod_sandbox_status"):
                    assert event.pod_sandbox_status.id.startswith(f"{B}__")
            assert want <= seen, f"missing events: {want - seen}"
    finally:
        stream.cancel()
        reader.join(5)


# ---------------------------------------------------------------- runtime failures


def test_frozen_runtime_does_not_stop_the_other(node: Node) -> None:
    proxy = node.via.runtime
    b_pid = node.instance(B)["pid"]
    with pods(node) as made:
        pod_b, cid_b = running_pod(node, made, B, "frozen-b")
        proxy.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)  # B answers
        os.kill(b_pid, signal.SIGSTOP)
        try:
            pod_a, cid_a = running_pod(node, made, PRIMARY, "alive-a")
            out = proxy.ExecSync(pb.ExecSyncRequest(container_id=cid_a, cmd=["true"],
                                                    timeout=10), timeout=CALL_TIMEOUT)
            assert out.exit_code == 0

            def timed(call: Callable[[], object]) -> object:
                started = time.monotonic()
                answer = call()
                elapsed = time.monotonic() - started
                assert elapsed < LIST_BUDGET + 3, f"{elapsed:.1f}s for a list with B frozen"
                return answer
            listed = timed(lambda: proxy.ListPodSandbox(pb.ListPodSandboxRequest(),
                                                        timeout=CALL_TIMEOUT).items)
            assert pod_a.id in {p.id for p in listed}
            assert pod_b.id in {p.id for p in listed}, "B's pods, as it last answered"
            containers = timed(lambda: proxy.ListContainers(pb.ListContainersRequest(),
                                                            timeout=CALL_TIMEOUT).containers)
            assert cid_a in {c.id for c in containers}
            images = timed(lambda: node.via.images.ListImages(pb.ListImagesRequest(),
                                                              timeout=CALL_TIMEOUT).images)
            assert node.info["images"]["busybox"] in {t for i in images for t in i.repo_tags}

            proxy.StopContainer(pb.StopContainerRequest(container_id=cid_a, timeout=0),
                                timeout=CALL_TIMEOUT)
            proxy.RemoveContainer(pb.RemoveContainerRequest(container_id=cid_a),
                                  timeout=CALL_TIMEOUT)
            remove_pod(node, pod_a)
            made.remove(pod_a)
            assert pod_a.bare not in direct_pod_ids(node, PRIMARY)
        finally:
            os.kill(b_pid, signal.SIGCONT)

        def b_listed() -> bool:
            shown = {p.id for p in proxy.ListPodSandbox(pb.ListPodSandboxRequest(),
                                                        timeout=CALL_TIMEOUT).items}
            return pod_b.id in shown
        wait_for("B's pod listed again after SIGCONT", b_listed, timeout=15)
        out = proxy.ExecSync(pb.ExecSyncRequest(container_id=cid_b, cmd=["echo", "back"],
                                                timeout=10), timeout=CALL_TIMEOUT)
        assert out.stdout == b"back\n"


def test_primary_restart_under_the_proxy(node: Node) -> None:
    proxy = node.via.runtime
    worker = node.proxy.worker_pid("primary")
    with pods(node) as made:
        pod, cid = running_pod(node, made, PRIMARY, "restart-a")
        runtimes.stop_daemon(node.rtdir, "a")
        try:
            node.proxy.wait_state("primary", "down", timeout=15)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                proxy.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                      timeout=CALL_TIMEOUT)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "primary" in err.value.details()
            assert time.monotonic() - started < 3  # promptly, not at the deadline
        finally:
            node.info["instances"]["a"] = runtimes.start_daemon(node.rtdir, "a")

        def answers() -> bool:
            status = proxy.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                           timeout=5).status
            return status.state == pb.CONTAINER_RUNNING
        wait_for("the primary answers through the proxy after its restart", answers,
                 timeout=20, interval=0.2)
        assert node.proxy.worker_pid("primary") == worker  # reconnected, not restarted
        out = proxy.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["echo", "again"],
                                                timeout=10), timeout=CALL_TIMEOUT)
        assert out.stdout == b"again\n"
        assert pod.id in {p.id for p in proxy.ListPodSandbox(pb.ListPodSandboxRequest(),
                                                             timeout=CALL_TIMEOUT).items}
