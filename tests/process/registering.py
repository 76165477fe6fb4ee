"""Runtimes joining through -runtimesDir: criproxy started with the primary only (the
`node` fixture), a fake runtime registered by a symlink or a socket in the directory,
and what criproxy then publishes and shows (tests/process/test_registration.py,
test_runtime_leaves.py, test_bounds.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Iterator

import grpc
import pytest

from tests.process.cluster import Cluster, stop_cluster
from tests.process.routing_util import Kubelet, wait_until
from tests.support.fakeruntime import FakeRuntime, start_fake
from tests.support.harness import Proxy, short_dir, start_proxy


@pytest.fixture
def node() -> Iterator[Cluster]:
    """The primary behind criproxy, nothing registered yet; -leaveAfter 2 s."""
    base = short_dir("cpg-")
    primary = start_fake(base, "primary")
    proxy = start_proxy(str(primary.socket), "-leaveAfter", "2", workdir=base,
                        wait_for=["primary"])
    cluster = Cluster(proxy, {"primary": primary}, base)
    yield cluster
    stop_cluster(cluster)


def register(cluster: Cluster, name: str, handlers: dict[str, str] | None = None,
             link: bool = True) -> FakeRuntime:
    """Start fake runtime `name` and register it: a symlink to its socket, or
    (link=False) its socket made right in the runtimes dir."""
    directory = cluster.proxy.runtimes_dir
    if handlers is not None:
        (directory / f"{name}.json").write_text(json.dumps({"runtimeHandlers": handlers}))
    fake = start_fake(cluster.base if link else directory, name,
                      "--state", str(cluster.base / f"{name}.state"))
    if link:
        (directory / f"{name}.sock").symlink_to(fake.socket)
    cluster.fakes[name] = fake
    return fake


def routed(kubelet: Kubelet, runtime: str) -> str:
    """A pod run on `runtime` through criproxy, as soon as criproxy routes there."""
    result: list[str] = []

    def ran() -> bool:
        try:
            result.append(kubelet.run_pod(runtime))
            return True
        except grpc.RpcError:
            return False
    wait_until(ran, 15, f"a pod on runtime {runtime}", interval=0.02)
    return result[0]


def published(proxy: Proxy) -> dict:
    return json.loads((proxy.rundir / "registered.json").read_text())


def status_text(proxy: Proxy) -> str:
    return subprocess.run([sys.executable, "-m", "criproxy", "status", "-rundir",
                           str(proxy.rundir)], capture_output=True, text=True).stdout
