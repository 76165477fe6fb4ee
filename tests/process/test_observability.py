"""Observability (issue 7): metrics, gRPC health, logs, `criproxy status` rates, doctor.

Everything is measured through the real proxy (supervisord, front, workers)
in front of fake runtimes; the metrics endpoint binds port 0 (the harness's
default) or a unix socket, so parallel runs never clash. Their parts, in-process:
tests/unit/test_observability.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.process.cluster import Cluster, start_cluster, stop_cluster
from tests.support.fakeruntime import start_fake
from tests.support.harness import Proxy, short_dir
from tests.support.observing import metrics_address, run_cli, sample, scrape, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --- helpers --------------------------------------------------------------------


def health_check(proxy: Proxy, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(proxy.channel())
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


# --- metrics through the shared cluster ----------------------------------------------


def test_requests_are_counted_by_runtime_method_and_code(cluster: Cluster) -> None:
    proxy = cluster.proxy
    runtime = proxy.runtime_stub()
    before = scrape(proxy)
    for _ in range(3):
        runtime.Version(cri.VersionRequest(), timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        runtime.ContainerStatus(cri.ContainerStatusRequest(container_id="alt__nosuch"),
                                timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)
    with pytest.raises(grpc.RpcError):  # refused by criproxy itself: no runtime
        runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=cri.PodSandboxConfig(
            annotations={"kubernetes.io/target-runtime": "nosuch.runtime"})), timeout=5)
    after = scrape(proxy)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    total = "criproxy_requests_total"
    assert moved(total, runtime="primary", method="Version", code="OK") == 3
    assert moved(total, runtime="alt", method="ContainerStatus", code="NOT_FOUND") == 1
    assert moved(total, runtime="primary", method="ContainerStatus", code="NOT_FOUND") == 0
    assert moved(total, runtime="*", method="ListPodSandbox", code="OK") == 1
    assert moved(total, runtime="none", method="RunPodSandbox", code="INVALID_ARGUMENT") == 1
    count = "criproxy_request_duration_seconds_count"
    assert moved(count, runtime="alt", method="ContainerStatus") == 1
    assert moved(count, runtime="primary", method="Version") == 3
    assert moved("criproxy_request_duration_seconds_bucket", runtime="primary",
                 method="Version", le="+Inf") == 3
    assert sample(after, "criproxy_requests_in_flight") == 0
    for label in cluster.fakes:
        assert sample(after, "criproxy_runtime_up", runtime=label) == 1
        assert sample(after, "criproxy_runtime_state", runtime=label, state="up") == 1
        assert (("criproxy_worker_restarts_total", (("runtime", label),)) in after)
        assert (("criproxy_worker_pending_calls", (("runtime", label),)) in after)
        assert (("criproxy_runtime_foreign_claims_total",
                 (("method", "ListPodSandbox"), ("runtime", label))) in after)
    assert sample(after, "criproxy_front_process_resident_memory_bytes") > 0


def test_event_subscribers_and_pending_calls_are_gauged(cluster: Cluster) -> None:
    proxy = cluster.proxy
    events = proxy.runtime_stub().GetContainerEvents(cri.GetEventsRequest())
    try:
        wait_until(lambda: sample(scrape(proxy), "criproxy_event_subscribers") == 1,
                   what="the subscriber gauge to reach 1")
        # Each runtime's worker holds the open stream as a pending call.
        wait_until(lambda: all(sample(scrape(proxy), "criproxy_worker_pending_calls",
                                      runtime=label) >= 1 for label in cluster.fakes),
                   what="every worker's pending calls to hold the stream")
    finally:
        events.cancel()
    wait_until(lambda: sample(scrape(proxy), "criproxy_event_subscribers") == 0,
               what="the subscriber gauge back to 0")


def test_health_serves_the_proxy_and_every_runtime(cluster: Cluster) -> None:
    proxy = cluster.proxy
    assert health_check(proxy, "") == SERVING
    for label in cluster.fakes:
        assert health_check(proxy, f"criproxy.runtime/{label}") == SERVING
    with pytest.raises(grpc.RpcError) as err:
        health_check(proxy, "criproxy.runtime/nosuch")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The routing handler still answers unknown CRI methods UNIMPLEMENTED.
    with pytest.raises(grpc.RpcError) as err:
        proxy.channel().unary_unary("/runtime.v1.RuntimeService/NoSuchMethod")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_status_prints_request_rates(cluster: Cluster) -> None:
    proxy = cluster.proxy
    runtime = proxy.runtime_stub()
    for _ in range(20):
        runtime.Version(cri.VersionRequest(), timeout=5)
    with pytest.raises(grpc.RpcError):
        runtime.ContainerStatus(cri.ContainerStatusRequest(container_id="alt__gone"), timeout=5)
    seen = time.time()
    wait_until(lambda: proxy.status()["time"] > seen + 0.1, what="a fresh status.json")
    rates = proxy.status()["requests"]
    assert rates["primary"]["rate"] > 0 and rates["primary"]["p99"] is not None
    assert rates["alt"]["error_rate"] > 0
    result = run_cli("status", "-rundir", str(proxy.rundir))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("RUNTIME") and "REQ/S" in line)
    rows = {line.split()[0]: line.split() for line in lines[header + 1:]
            if line and not line.startswith("metrics")}
    assert float(rows["primary"][1]) > 0  # REQ/S
    assert rows["primary"][4].endswith("ms")  # P99
    assert float(rows["alt"][2]) > 0 and rows["alt"][3] != "0.0%"  # ERR/S, ERR%
    assert "metrics: http 127.0.0.1:" in result.stdout


def test_failed_calls_are_one_line_each_at_level_2(cluster: Cluster) -> None:
    proxy = cluster.proxy
    offset = len(proxy.log())
    with pytest.raises(grpc.RpcError):
        proxy.runtime_stub().ContainerStatus(
            cri.ContainerStatusRequest(container_id="alt__logged7"), timeout=5)
    line = wait_until(lambda: next((l for l in proxy.log()[offset:].splitlines()
                                    if "logged7" in l), ""), what="the failure's log line")
    assert "front[" in line and "ContainerStatus -> alt: NOT_FOUND" in line and " ms)" in line
    assert "request:" not in line  # requests are dumped from the method's level on
    assert "Version -> primary: OK" not in proxy.log()[offset:]  # status calls log at 4


# --- a private cluster: runtimes stop and return ---------------------------------------


@pytest.fixture
def base() -> Iterator[Path]:
    """A short-pathed private directory (unix socket paths max out at 107 bytes)."""
    path = short_dir("cpo-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def unix_metrics_cluster(base: Path):
    path = base / "metrics.sock"
    started = start_cluster("-metricsAddress", f"unix:{path}", "-v", "4")
    yield started, path
    stop_cluster(started)
    assert not path.exists(), "the front removes its metrics socket when it stops"


def test_runtime_state_restarts_and_health_follow_the_runtimes(unix_metrics_cluster) -> None:
    cluster, path = unix_metrics_cluster
    proxy = cluster.proxy
    assert metrics_address(proxy) == f"unix:{path}"
    assert oct(path.stat().st_mode & 0o777) == "0o660"
    samples = scrape(proxy)
    assert all(sample(samples, "criproxy_runtime_up", runtime=label) == 1
               for label in cluster.fakes)

    # alt stops: its gauge drops, its health too, the proxy stays SERVING; a List
    # call answers without it and counts the skip.
    cluster.fakes["alt"].stop()
    wait_until(lambda: sample(scrape(proxy), "criproxy_runtime_up", runtime="alt") == 0,
               what="runtime_up{alt} to drop")
    assert sample(scrape(proxy), "criproxy_runtime_up", runtime="primary") == 1
    assert health_check(proxy, "criproxy.runtime/alt") == NOT_SERVING
    assert health_check(proxy, "") == SERVING
    proxy.runtime_stub().ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)
    assert sample(scrape(proxy), "criproxy_fanout_skipped_total", runtime="alt",
                  method="ListPodSandbox") == 1
    cluster.fakes["alt"] = start_fake(cluster.base, "alt")
    wait_until(lambda: health_check(proxy, "criproxy.runtime/alt") == SERVING,
               what="alt's health back")

    # The primary stops: the proxy as a whole is NOT_SERVING until it returns.
    cluster.fakes["primary"].stop()
    wait_until(lambda: health_check(proxy, "") == NOT_SERVING, what="overall NOT_SERVING")
    assert health_check(proxy, "criproxy.runtime/primary") == NOT_SERVING
    assert health_check(proxy, "criproxy.runtime/vm.cloud") == SERVING
    assert sample(scrape(proxy), "criproxy_runtime_up", runtime="primary") == 0
    cluster.fakes["primary"] = start_fake(cluster.base, "primary")
    wait_until(lambda: health_check(proxy, "") == SERVING, what="overall SERVING again")
    wait_until(lambda: sample(scrape(proxy), "criproxy_runtime_up", runtime="primary") == 1,
               what="runtime_up{primary} back")

    # A killed worker is restarted by supervisord; the front counts the restart.
    os.kill(proxy.worker_pid("vm.cloud"), signal.SIGKILL)
    wait_until(lambda: sample(scrape(proxy), "criproxy_worker_restarts_total",
                              runtime="vm.cloud") == 1, timeout=20,
               what="the vm.cloud worker restart to be counted")
    wait_until(lambda: sample(scrape(proxy), "criproxy_runtime_up", runtime="vm.cloud") == 1,
               what="vm.cloud up again")

    # -v 4: status calls are logged, one line each, with request and answer.
    offset = len(proxy.log())
    proxy.runtime_stub().Version(cri.VersionRequest(version="v-logged"), timeout=5)
    proxy.runtime_stub().ListContainers(cri.ListContainersRequest(), timeout=5)
    line = wait_until(lambda: next((l for l in proxy.log()[offset:].splitlines()
                                    if "v-logged" in l), ""), what="the Version log line")
    assert "Version -> primary: OK (" in line and 'request: {version: "v-logged"}' in line
    assert "response: {" in line and "runtime_name:" in line
    assert "ListContainers" not in proxy.log()[offset:]  # List calls only from -v 5


# --- doctor -----------------------------------------------------------------------


def _proc_dir(base: Path, *kubelet_args: str, name: str = "proc") -> Path:
    """A fake /proc holding one kubelet process (or none) for doctor to read."""
    proc = base / name
    proc.mkdir(exist_ok=True)
    if kubelet_args:
        (proc / "4242").mkdir(exist_ok=True)
        (proc / "4242" / "comm").write_text("kubelet\n")
        (proc / "4242" / "cmdline").write_bytes(
            b"\0".join(a.encode() for a in ("/usr/bin/kubelet", *kubelet_args)) + b"\0")
    return proc


def test_doctor_passes_a_healthy_setup_and_warns_of_dotless_names(cluster: Cluster,
                                                                    base: Path) -> None:
    proxy = cluster.proxy
    result = run_cli("doctor", "-rundir", str(proxy.rundir), "--proc", str(_proc_dir(base)),
                     "--kubelet-config", str(base / "none.yaml"))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for label in cluster.fakes:
        assert f"ok   runtime {label} (" in out and "CRI v1" in out
    assert "WARN runtime name 'alt' has no dot" in out and "docker.io/alt/" in out
    assert "'vm.cloud' has no dot" not in out
    assert "ok   criproxy (front pid" in out and "no kubelet runs on this node" in out

    # A kubelet pointing at our socket passes; one pointing elsewhere must be fixed.
    good = _proc_dir(base, f"--container-runtime-endpoint=unix://{proxy.listen}", name="good")
    result = run_cli("doctor", "-rundir", str(proxy.rundir), "--proc", str(good))
    assert result.returncode == 0, result.stdout
    assert "kubelet (pid 4242) command line uses criproxy's socket" in result.stdout
    bad = _proc_dir(base, "--container-runtime-endpoint",
                    "unix:///run/containerd/containerd.sock", name="bad")
    result = run_cli("doctor", "-rundir", str(proxy.rundir), "--proc", str(bad))
    assert result.returncode == 1
    assert "FAIL kubelet (pid 4242) command line uses unix:///run/containerd" in result.stdout
    assert f"--container-runtime-endpoint=unix://{proxy.listen}" in result.stdout

    # No kubelet process, but its config file names another socket.
    config = base / "config.yaml"
    config.write_text("kind: KubeletConfiguration\n"
                      "containerRuntimeEndpoint: \"unix:///run/other.sock\"\n")
    result = run_cli("doctor", "-rundir", str(proxy.rundir), "--proc", str(_proc_dir(base)),
                     "--kubelet-config", str(config))
    assert result.returncode == 1
    assert f"FAIL kubelet config {config} uses unix:///run/other.sock" in result.stdout


def test_doctor_names_a_missing_runtime_socket_and_a_stale_listen_socket(base: Path) -> None:
    primary = start_fake(base, "primary")
    old = start_fake(base, "old.cri", "--cri-versions", "v1alpha2")
    try:
        stale = base / "criproxy.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(stale))
        listener.close()  # the file stays, nobody listens: a crashed proxy's socket
        result = run_cli("doctor", "-connect", f"{primary.socket},vm.cloud:{base}/gone.sock,"
                         f"old.cri:{old.socket}",
                         "-listen", str(stale), "-rundir", str(base / "run"),
                         "--proc", str(_proc_dir(base)),
                         "--kubelet-config", str(base / "none.yaml"))
    finally:
        primary.stop()
        old.stop()
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "ok   runtime primary (" in out
    assert f"FAIL runtime vm.cloud ({base}/gone.sock): {base}/gone.sock does not exist" in out
    assert "fix: start the vm.cloud runtime" in out
    assert f"nothing listens on {stale} (a stale socket)" in out
    assert "has no dot" not in out
    assert "WARN runtime old.cri (" in out and "speaks only CRI v1alpha2" in out


def test_doctor_refuses_a_world_writable_rundir_and_without_setup_says_so(base: Path) -> None:
    rundir = base / "run"
    rundir.mkdir(mode=0o777)
    os.chmod(rundir, 0o777)
    fake = start_fake(base, "primary")
    try:
        result = run_cli("doctor", "-connect", str(fake.socket), "-rundir", str(rundir),
                         "-listen", str(base / "l.sock"), "--proc", str(_proc_dir(base)),
                         "--kubelet-config", str(base / "none.yaml"))
    finally:
        fake.stop()
    assert result.returncode == 1
    assert f"FAIL runtime dir {rundir} is owned by uid 0 with mode 777" in result.stdout
    assert f"chmod 0700 {rundir}" in result.stdout
    result = run_cli("doctor", "-rundir", str(base / "empty"), "--env-file",
                     str(base / "none.env"))
    assert result.returncode == 2 and "no set-up to check" in result.stdout


# --- units ------------------------------------------------------------------------
