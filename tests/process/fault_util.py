"""Helpers of the fault tests: clusters to break, load to measure, processes to find."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import ALT_URL_BASE
from tests.support.fakeruntime import start_fake
from tests.support.harness import REPO, Proxy

ALL = ["primary", "alt", "vm.cloud"]
ALT_WORKER = "worker:worker-1"  # alt is the second -connect entry
ALT_DELAYED = "ContainerStatus"  # the method alt answers slowly in the kill test
STARTUP = 60.0  # seconds a proxy may take to come up on a loaded test machine


def connect_string(base: Path) -> str:
    return f"{base / 'primary.sock'},alt:{base / 'alt.sock'},vm.cloud:unix://{base / 'vm.cloud.sock'}"


def start_alt(base: Path, *flags: str):
    return start_fake(base, "alt", "--url-base", ALT_URL_BASE, *flags)


def pod_config(name: str, runtime: str) -> cri.PodSandboxConfig:
    annotations = {} if runtime == "primary" else {"kubernetes.io/target-runtime": runtime}
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="faults", uid=name + "-uid"),
        annotations=annotations)


def run_pod(stub, runtime: str, name: str, timeout: float = 5.0) -> str:
    request = cri.RunPodSandboxRequest(config=pod_config(name, runtime))
    return stub.RunPodSandbox(request, timeout=timeout).pod_sandbox_id


def pod_status(stub, pod_id: str, timeout: float = 5.0) -> cri.PodSandboxStatusResponse:
    return stub.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                 timeout=timeout)


def list_pod_ids(stub, timeout: float = 10.0) -> set[str]:
    return {p.id for p in stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=timeout).items}


def call_error(call: Callable[[], object]) -> tuple[grpc.RpcError, float]:
    """Run a call that must fail; return its error and how long it took."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value, time.monotonic() - started


def poll_until(attempt: Callable[[], object], timeout: float, what: str,
               interval: float = 0.1) -> tuple[object, float]:
    """Retry `attempt` (a gRPC call) until it succeeds; return its result and the wait."""
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < timeout:
        try:
            return attempt(), time.monotonic() - started
        except grpc.RpcError as err:
            last = err
        time.sleep(interval)
    raise AssertionError(f"{what} did not succeed within {timeout}s; last error: {last}")


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions `text` (e.g. a run dir), this process excluded."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (one started with start_new_session=True)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def supervisorctl(proxy: Proxy, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c",
         str(proxy.rundir / "supervisord.conf"), *args],
        capture_output=True, text=True, timeout=15)
    return result.stdout


def program_state(proxy: Proxy, program: str) -> str:
    for line in supervisorctl(proxy, "status").splitlines():
        fields = line.split()
        if fields and fields[0] == program:
            return fields[1]
    return "?"


def criproxy_status(proxy: Proxy) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "criproxy", "status", "-rundir",
                           str(proxy.rundir)], capture_output=True, text=True, timeout=15,
                          cwd=REPO)


def status_line(output: str, label: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [label])


def report(**numbers: float) -> None:
    """Measured numbers, shown with `pytest -s` (and in the failure output)."""
    print(" ".join(f"{key}={value:.3f}s" for key, value in numbers.items()))


class Load:
    """Client threads calling the healthy runtimes without pause, counting errors."""

    def __init__(self, proxy: Proxy, calls: dict[str, Callable]) -> None:
        self.stop = threading.Event()
        self.counts = {name: 0 for name in calls}
        self.errors: list[tuple[str, str, str]] = []
        self.slowest = 0.0
        self.threads = [threading.Thread(target=self._run, args=(name, call, proxy.runtime_stub()),
                                         daemon=True) for name, call in calls.items()]

    def _run(self, name: str, call: Callable, stub) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                call(stub)
                self.counts[name] += 1
            except grpc.RpcError as err:
                self.errors.append((name, err.code().name, err.details()))
            except AssertionError as err:
                self.errors.append((name, "ASSERT", str(err)))
            self.slowest = max(self.slowest, time.monotonic() - started)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def healthy_load(proxy: Proxy, primary_pod: str, vm_pod: str) -> Load:
    def listing(stub) -> None:
        ids = list_pod_ids(stub)
        assert {primary_pod, vm_pod} <= ids, f"List lost a healthy runtime's pod: {ids}"

    return Load(proxy, {
        "primary": lambda stub: pod_status(stub, primary_pod),
        "vm.cloud": lambda stub: pod_status(stub, vm_pod),
        "list": listing,
    })


def pods_on_every_runtime(stub, prefix: str) -> dict[str, str]:
    return {runtime: run_pod(stub, runtime, f"{prefix}-{runtime.replace('.', '-')}")
            for runtime in ALL}


