"""Hardening (issue 8): load and leaks, measured on the real processes.

- LOAD_CALLS calls at 64 concurrent clients (64 connections) across the three
  runtimes — calls routed to each runtime and List fan-outs — answer with zero
  errors and the right answers, every runtime gets exactly its share (the
  journals prove it), and the proxy's total RSS (supervisord, front, workers:
  VmRSS) grows less than 10% from the 10k-call mark to the end.
- 1,000 client connections abandoned mid-call (half closed by their client,
  half reset by a SIGKILLed client process) leave nothing behind: the front's
  in-flight and pending counts go back to zero at once (the runtime would have
  answered only minutes later), memory plateaus, other clients are unaffected.
- GetContainerEvents subscribers that never read (their process stopped) are
  dropped with a log line once their bounded queue fills; the front's memory
  stays flat however many more events come; a subscriber that reads and other
  callers are unaffected.

The load client is a grpc.aio process of its own (run_client below), so the
test process measures without competing with it for the GIL.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import ALT_URL_BASE, STREAM_URL, Cluster, stop_cluster
from tests.support.fakeruntime import start_fake
from tests.support.harness import REPO, process_tree, rss_kb, short_dir, start_proxy
from tests.support.observing import metrics_address

# 100k calls (issue 8). On the 2-core CI machine this takes several minutes:
# every call costs CPU in the front, the workers and the fake runtimes alike
# (fan-outs three times a routed call's worker+runtime share). A developer may
# set CRIPROXY_LOAD_CALLS lower for a quick local run; the suite runs 100k.
LOAD_CALLS = int(os.environ.get("CRIPROXY_LOAD_CALLS", "100000"))
LOAD_CONCURRENCY = 64
RSS_MARK = 10_000            # RSS is compared from this many calls on to the end
RSS_GROWTH_LIMIT = 0.10
ABANDON_ROUNDS = (("close", 500), ("kill", 500))   # 1,000 connections in all
STUCK_SUBSCRIBERS = 4
CALL_TIMEOUT = 120.0         # generous: a shared 2-core machine
WAIT = 90.0
RT = "/runtime.v1.RuntimeService/"
RUNTIMES = ("primary", "alt", "vm.cloud")
# alt answers this method only after 10 minutes: the abandoned calls use it.
DELAYED = "ContainerStats"


# --- the load client (runs in a process of its own) -------------------------------------


def run_client() -> None:
    """`python -c 'from tests.process.test_hardening_load import run_client; run_client()'`
    reads a JSON spec on stdin, writes JSON lines on stdout."""
    spec = json.loads(sys.stdin.readline())
    asyncio.run(_CLIENTS[spec["mode"]](spec))


async def _load(spec: dict) -> None:
    mix = [(path, base64.b64decode(body), size) for path, body, size in spec["mix"]]
    total, marks = spec["calls"], set(spec["marks"])
    counter = itertools.count()
    done, errors, wrong = 0, Counter(), Counter()

    async def client(channel: grpc.aio.Channel) -> None:
        nonlocal done
        calls = [channel.unary_unary(path) for path, _, _ in mix]
        while (index := next(counter)) < total:
            k = index % len(mix)
            try:
                answer = await calls[k](mix[k][1], timeout=spec["timeout"])
                if len(answer) != mix[k][2]:
                    wrong[mix[k][0]] += 1
            except grpc.aio.AioRpcError as err:
                errors[f"{mix[k][0]}: {err.code().name}: {(err.details() or '')[:200]}"] += 1
            done += 1
            if done in marks:
                print(json.dumps({"mark": done, "time": time.monotonic()}), flush=True)

    channels = [grpc.aio.insecure_channel(spec["target"]) for _ in range(spec["concurrency"])]
    started = time.monotonic()
    await asyncio.gather(*(client(channel) for channel in channels))
    elapsed = time.monotonic() - started
    for channel in channels:
        await channel.close()
    print(json.dumps({"done": done, "errors": errors, "wrong": wrong, "elapsed": elapsed}),
          flush=True)


async def _abandon(spec: dict) -> None:
    """Open `count` connections, one call on each; say so; on a line on stdin close
    them all (cancelling the calls), or wait to be killed."""
    body = base64.b64decode(spec["body"])
    channels = [grpc.aio.insecure_channel(spec["target"]) for _ in range(spec["count"])]
    calls = [channel.unary_unary(spec["path"])(body, timeout=spec["timeout"])
             for channel in channels]
    tasks = [asyncio.ensure_future(call) for call in calls]
    print(json.dumps({"started": len(tasks)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(channel.close(grace=None) for channel in channels))
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"closed": len(channels)}), flush=True)


_CLIENTS = {"load": _load, "abandon": _abandon}


class Client:
    """A run_client process, spoken to by JSON lines."""

    def __init__(self, spec: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             "from tests.process.test_hardening_load import run_client; run_client()"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the client exited with {self.proc.wait()}"
        return json.loads(line)

    def say(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)


# --- measuring the proxy ---------------------------------------------------------------


def proxy_rss(cluster: Cluster) -> dict[int, int]:
    """VmRSS (kB) of each proxy process: supervisord (criproxy itself), front, workers."""
    return {pid: rss_kb(pid) for pid in process_tree(cluster.proxy.proc.pid)}


def proxy_pids(cluster: Cluster) -> dict[str, int]:
    proxy = cluster.proxy
    return {"supervisord": proxy.proc.pid, "front": proxy.front_pid(),
            **{label: proxy.worker_pid(label) for label in RUNTIMES}}


def metric(cluster: Cluster, name: str, labels: str = "") -> float:
    address = metrics_address(cluster.proxy)
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=WAIT) as answer:
        text = answer.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}({re.escape(labels)})? (\S+)$", re.M)
    found = pattern.search(text)
    assert found, f"no {name}{labels} in /metrics"
    return float(found.group(2))


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def journal_lines(cluster: Cluster, runtime: str) -> int:
    with open(cluster.fakes[runtime].journal, "rb") as journal:
        return sum(1 for _ in journal)


def journal_methods(cluster: Cluster, runtime: str, skip: int) -> Counter:
    with open(cluster.fakes[runtime].journal, "rb") as journal:
        lines = itertools.islice(journal, skip, None)
        return Counter(json.loads(line)["method"] for line in lines)


# --- the cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lc() -> Iterator[Cluster]:
    """Three fakes behind the proxy; alt answers DELAYED only after 10 minutes."""
    base = short_dir("cpl-")
    fakes = {"primary": start_fake(base, "primary"),
             "alt": start_fake(base, "alt", "--url-base", ALT_URL_BASE,
                               "--delay", f"{DELAYED}=600"),
             "vm.cloud": start_fake(base, "vm.cloud")}
    connect = (f"{fakes['primary'].socket},alt:{fakes['alt'].socket},"
               f"vm.cloud:{fakes['vm.cloud'].socket}")
    # -v 1: no line per failed call (the abandoned calls would flood the log).
    # The event storms here test slow subscribers, not a flooding runtime: no rate cut.
    proxy = start_proxy(connect, "-streamUrl", STREAM_URL, "-eventRate", "100000",
                        "-eventBurst", "100000", workdir=base, wait_for=list(fakes),
                        verbosity=1)
    cluster = Cluster(proxy, fakes, base)
    cluster.pids = proxy_pids(cluster)  # type: ignore[attr-defined]
    yield cluster
    stop_cluster(cluster)


def objects(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """A pod with a container on every runtime (made once per module)."""
    if not hasattr(cluster, "objects"):
        stub = cluster.proxy.runtime_stub()
        made = {}
        for runtime in RUNTIMES:
            annotations = {} if runtime == "primary" else {
                "kubernetes.io/target-runtime": runtime}
            config = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(
                name=f"load-{runtime}", namespace="hardening", uid=f"load-{runtime}"),
                annotations=annotations)
            pod = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=config),
                                     timeout=WAIT).pod_sandbox_id
            container = stub.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=pod, config=cri.ContainerConfig(
                    metadata=cri.ContainerMetadata(name="c"),
                    image=cri.ImageSpec(image=("" if runtime == "primary" else runtime + "/")
                                        + "docker.io/library/busybox:latest"))),
                timeout=WAIT).container_id
            made[runtime] = (pod, container)
        cluster.objects = made  # type: ignore[attr-defined]
    return cluster.objects  # type: ignore[attr-defined]


def assert_nothing_restarted(cluster: Cluster) -> None:
    assert proxy_pids(cluster) == cluster.pids  # type: ignore[attr-defined]
    assert cluster.proxy.proc.poll() is None


class Bystander:
    """Another client calling routed and fan-out methods the whole time; every call
    must succeed."""

    def __init__(self, cluster: Cluster) -> None:
        made = objects(cluster)
        self.stub = cluster.proxy.runtime_stub()
        self.calls = [
            lambda: self.stub.PodSandboxStatus(cri.PodSandboxStatusRequest(
                pod_sandbox_id=made["alt"][0]), timeout=WAIT),
            lambda: self.stub.ContainerStatus(cri.ContainerStatusRequest(
                container_id=made["primary"][1]), timeout=WAIT),
            lambda: self.stub.ListContainers(cri.ListContainersRequest(), timeout=WAIT),
        ]
        self.ok, self.failures = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for call in itertools.cycle(self.calls):
            if self._stop.is_set():
                return
            try:
                call()
                self.ok += 1
            except grpc.RpcError as err:
                self.failures.append(f"{err.code().name}: {err.details()}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        assert self.failures == [], self.failures[:5]
        assert self.ok > 0


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.timeout(max(600, LOAD_CALLS // 40))
def test_load_zero_errors_and_flat_memory(lc: Cluster) -> None:
    made = objects(lc)
    stub = lc.proxy.runtime_stub()
    mix = []
    for runtime in RUNTIMES:
        pod, container = made[runtime]
        mix.append((RT + "PodSandboxStatus",
                    cri.PodSandboxStatusRequest(pod_sandbox_id=pod).SerializeToString()))
        mix.append((RT + "ContainerStatus",
                    cri.ContainerStatusRequest(container_id=container).SerializeToString()))
    mix.append((RT + "ListContainers", b""))
    mix.append((RT + "ListPodSandbox", b""))
    # Each answer's size, asked once: under load every answer must be the same.
    channel = lc.proxy.channel()
    sized = [(path, base64.b64encode(body).decode(),
              len(channel.unary_unary(path)(body, timeout=WAIT))) for path, body in mix]
    assert len(stub.ListContainers(cri.ListContainersRequest(), timeout=WAIT).containers) == 3
    before = {runtime: journal_lines(lc, runtime) for runtime in RUNTIMES}

    marks = sorted({RSS_MARK, *range(RSS_MARK, LOAD_CALLS + 1, 10_000), LOAD_CALLS})
    client = Client({"mode": "load", "target": f"unix://{lc.proxy.listen}", "mix": sized,
                     "calls": LOAD_CALLS, "marks": marks, "concurrency": LOAD_CONCURRENCY,
                     "timeout": CALL_TIMEOUT})
    samples: dict[int, dict[int, int]] = {}
    try:
        while True:
            line = client.read()
            if "mark" in line:
                samples[line["mark"]] = proxy_rss(lc)
                samples[line["mark"]]["time"] = line["time"]  # type: ignore[index]
            else:
                result = line
                break
    finally:
        client.kill()
    end = proxy_rss(lc)
    assert result["done"] == LOAD_CALLS
    assert result["errors"] == {}, result["errors"]
    assert result["wrong"] == {}, f"answers differing from the unloaded answer: {result['wrong']}"

    # Every runtime got exactly its share: per 8 calls, 2 routed + 2 fan-outs each.
    cycles = LOAD_CALLS // len(mix)
    for runtime in RUNTIMES:
        got = journal_methods(lc, runtime, before[runtime])
        assert got == Counter({"PodSandboxStatus": cycles, "ContainerStatus": cycles,
                               "ListContainers": cycles, "ListPodSandbox": cycles}), (
            runtime, got)

    at_mark = {pid: kb for pid, kb in samples[RSS_MARK].items() if pid != "time"}
    total_mark, total_end = sum(at_mark.values()), sum(end.values())
    growth = (total_end - total_mark) / total_mark
    rate = LOAD_CALLS / result["elapsed"]
    report = (f"{LOAD_CALLS} calls at {LOAD_CONCURRENCY} clients in {result['elapsed']:.0f}s "
              f"({rate:.0f} calls/s); proxy RSS {total_mark / 1024:.1f} MiB at {RSS_MARK} "
              f"calls, {total_end / 1024:.1f} MiB at the end ({growth:+.1%}); per process "
              f"(kB) at the mark {at_mark}, at the end {end}")
    print(report)
    (lc.base.parent / f"criproxy-load-{os.getpid()}.txt").write_text(report + "\n")
    assert set(end) == set(at_mark), "a proxy process came or went during the load"
    assert growth < RSS_GROWTH_LIMIT, report
    assert_nothing_restarted(lc)


@pytest.mark.timeout(900)
def test_abandoned_connections_leave_nothing_behind(lc: Cluster) -> None:
    made = objects(lc)
    body = cri.ContainerStatsRequest(container_id=made["alt"][1]).SerializeToString()
    bystander = Bystander(lc)
    totals = []
    try:
        totals.append(sum(proxy_rss(lc).values()))
        for how, count in ABANDON_ROUNDS:
            seen = journal_lines(lc, "alt")
            client = Client({"mode": "abandon", "target": f"unix://{lc.proxy.listen}",
                             "path": RT + DELAYED, "body": base64.b64encode(body).decode(),
                             "count": count, "timeout": 900.0})
            try:
                assert client.read() == {"started": count}
                # Every call reached alt (it journals, then sits on it for 10 minutes).
                wait_until(lambda: journal_methods(lc, "alt", seen)[DELAYED] >= count,
                           f"{count} {DELAYED} calls to reach alt", timeout=300)
                assert metric(lc, "criproxy_requests_in_flight") >= count
                if how == "close":
                    client.say()
                    assert client.read() == {"closed": count}
            finally:
                client.kill()  # "kill": every connection reset mid-call at once
            # The front forgets them at once, and tells the worker to cancel them.
            wait_until(lambda: metric(lc, "criproxy_requests_in_flight") == 0,
                       "no request in flight")
            wait_until(lambda: metric(lc, "criproxy_worker_pending_calls",
                                      '{runtime="alt"}') == 0, "no call pending for alt")
            totals.append(sum(proxy_rss(lc).values()))
    finally:
        bystander.stop()
    print(f"proxy RSS (kB) before, after each round of abandoned connections: {totals}")
    # Bounded: the second round reuses what the first one grew (10% + 8 MiB slack).
    assert totals[2] <= totals[1] * 1.10 + 8192, totals
    assert totals[1] <= totals[0] + 200 * 1024, totals
    assert_nothing_restarted(lc)


STUCK_SUBSCRIBER = r"""
import sys, time, grpc
from cri_api.v1 import api_pb2 as cri, api_pb2_grpc as rpc
channel = grpc.insecure_channel(sys.argv[1])
stream = rpc.RuntimeServiceStub(channel).GetContainerEvents(cri.GetEventsRequest())
print("subscribed", flush=True)
time.sleep(3600)  # never reads
"""


class Reader:
    """A subscriber that reads every event, in a thread."""

    def __init__(self, cluster: Cluster) -> None:
        self.channel = cluster.proxy.channel()
        self.stream = self.channel.unary_stream(RT + "GetContainerEvents")(
            cri.GetEventsRequest().SerializeToString())
        self.container_ids: Counter = Counter()
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in self.stream:
                self.container_ids[cri.ContainerEventResponse.FromString(raw).container_id] += 1
        except grpc.RpcError as err:
            self.error = err

    def close(self) -> None:
        self.stream.cancel()
        self._thread.join(WAIT)


def event_storm(cluster: Cluster, pod: str, cycles: int, tag: str) -> list[str]:
    """Create, start, stop and remove `cycles` containers (4 events each, ~10 kB)."""
    stub = cluster.proxy.runtime_stub()
    labels = {f"k{i}": "v" * 100 for i in range(80)}
    made = []
    for index in range(cycles):
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=f"{tag}-{index}"), labels=labels,
            image=cri.ImageSpec(image="alt/docker.io/library/busybox:latest"))
        container = stub.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod, config=config), timeout=WAIT).container_id
        stub.StartContainer(cri.StartContainerRequest(container_id=container), timeout=WAIT)
        stub.StopContainer(cri.StopContainerRequest(container_id=container), timeout=WAIT)
        stub.RemoveContainer(cri.RemoveContainerRequest(container_id=container), timeout=WAIT)
        made.append(container)
    return made


@pytest.mark.timeout(900)
def test_subscribers_that_never_read_are_dropped(lc: Cluster) -> None:
    objects(lc)
    stub = lc.proxy.runtime_stub()
    annotations = {"kubernetes.io/target-runtime": "alt",
                   **{f"a{i}": "w" * 100 for i in range(20)}}
    pod = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="events", namespace="hardening", uid="events"),
        annotations=annotations)), timeout=WAIT).pod_sandbox_id
    subscribers_before = metric(lc, "criproxy_event_subscribers")
    reader = Reader(lc)
    stuck = []
    log_offset = len(lc.proxy.log())
    try:
        for _ in range(STUCK_SUBSCRIBERS):
            proc = subprocess.Popen([sys.executable, "-c", STUCK_SUBSCRIBER,
                                     f"unix://{lc.proxy.listen}"], cwd=REPO,
                                    stdout=subprocess.PIPE, text=True)
            stuck.append(proc)
            assert proc.stdout.readline().strip() == "subscribed"
        wait_until(lambda: metric(lc, "criproxy_event_subscribers")
                   == subscribers_before + 1 + STUCK_SUBSCRIBERS, "every subscriber joined")
        for proc in stuck:
            proc.send_signal(signal.SIGSTOP)  # and now it cannot read even by accident

        bystander = Bystander(lc)
        try:
            # Enough events to fill every stuck subscriber's buffers and queue.
            made = event_storm(lc, pod, 700, "storm1")
            wait_until(lambda: lc.proxy.log()[log_offset:].count(
                "subscriber too slow, dropping its stream") >= STUCK_SUBSCRIBERS,
                f"{STUCK_SUBSCRIBERS} slow subscribers dropped")
            front = lc.proxy.front_pid()
            after_drop = rss_kb(front)
            made += event_storm(lc, pod, 700, "storm2")  # as many again
            after_more = rss_kb(front)
        finally:
            bystander.stop()
        print(f"front RSS (kB) after the stuck subscribers were dropped: {after_drop}, "
              f"after as many events again: {after_more}")
        assert after_more <= after_drop * 1.10 + 8192, (after_drop, after_more)
        # The subscriber that reads saw all four events of every container.
        wait_until(lambda: all(reader.container_ids[c] == 4 for c in made),
                   "the reading subscriber to get every event")
        assert reader.error is None, reader.error
    finally:
        for proc in stuck:
            proc.kill()
            proc.wait(WAIT)
        reader.close()
    wait_until(lambda: metric(lc, "criproxy_event_subscribers") == subscribers_before,
               "every subscriber to be gone")
    assert_nothing_restarted(lc)
