"""-runtimesDir under the real systemd and the package's hardened unit (issue 24):
the flags file names the directory, criproxy makes it and watches it, and a
runtime whose socket (a symlink within /run) appears there is served at once,
nothing restarted. The machine and the steps: tests/node/systemd_node.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.node import nspawn
from tests.node.systemd_node import (
    ENV_FILE, FAKES_INSIDE, configure_and_start, criproxy_processes, install, listed_pods,
    run_pod, unit_status)
from tests.support.fakeruntime import FakeRuntime, start_fake

RUNTIMES_DIR = "/run/criproxy-runtimes"

pytestmark = pytest.mark.timeout(600)


def routed_soon(node: nspawn.Machine, runtime: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return run_pod(node, runtime)
        except Exception:  # noqa: BLE001 - grpc's error until criproxy routes there
            if time.monotonic() > deadline:
                raise AssertionError(f"no pod on {runtime} after {timeout}s\n"
                                     f"{unit_status(node)}") from None
            time.sleep(0.1)


def test_a_runtime_registers_under_the_hardened_unit(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    vm = start_fake(fakes["primary"].socket.parent, "vm.cloud")
    try:
        install(node, share)
        configure_and_start(node)
        assert f"-runtimesDir {RUNTIMES_DIR}" in node.run("cat", ENV_FILE).stdout
        owner, mode = node.run("stat", "-c", "%u %a", RUNTIMES_DIR).stdout.split()
        assert owner == "0" and not int(mode, 8) & 0o022  # root's alone (0700: UMask=0077)
        before = criproxy_processes(node)
        node.run("ln", "-s", f"{FAKES_INSIDE}/vm.cloud.sock", f"{RUNTIMES_DIR}/vm.cloud.sock")
        pod = routed_soon(node, "vm.cloud")
        assert pod.startswith("vm.cloud__") and pod in listed_pods(node)
        assert vm.entries("RunPodSandbox")
        after = criproxy_processes(node)
        assert set(before) <= set(after), "nothing restarted"
        assert any("vm.cloud" in title for title in after.values()), after
        assert "runtime vm.cloud registered" in node.journal("-u", "criproxy", "-o", "cat")
        status = node.run("criproxy", "status", check=False).stdout
        assert "REGISTERED in /run/criproxy-runtimes" in status and "vm.cloud" in status
    finally:
        vm.stop()
