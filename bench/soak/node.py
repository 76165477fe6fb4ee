"""The soak's node: two real containerd runtimes with criproxy in front of them.

containerd A (runc) is the primary; containerd B (crun) is the named runtime `alt.soak`,
reached by the target-runtime annotation and by the RuntimeClass handler `althandler`
(`-runtimeHandlers althandler=alt.soak:`). criproxy is started as an operator starts it
(tests.support.harness.start_proxy); it can be restarted on the same socket and runtime dir.
`down()` always leaves the machine as it was: criproxy stopped, containerds and their
pods gone (scripts/runtimes.py), the pods' cgroup parents removed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import time
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from tests.support.harness import Proxy, process_tree, runtimes_script, start_proxy

ALT = "alt.soak"                    # B's name in -connect (a dot: kubelet's image names)
HANDLER = "althandler"              # RuntimeClass handler mapped to B
LABELS = ("primary", ALT)           # runtime labels in criproxy's status
INSTANCE = {"primary": "a", ALT: "b"}
DIRECT_TIMEOUT = 15.0


def shown_id(label: str, bare: str) -> str:
    """How criproxy shows a runtime's object id."""
    return bare if label == "primary" else f"{label}__{bare}"


class Node:
    def __init__(self, base: Path, list_budget: float, verbosity: int,
                 repo: Path | None = None) -> None:
        self.base = base
        self.rtdir = base / "rt"
        self.pxdir = base / "px"
        self.logs = base / "logs"
        self.list_budget = list_budget
        self.verbosity = verbosity
        self.repo = repo                  # the criproxy tree to run (default: this checkout)
        self.runtimes = runtimes_script()
        self.info: dict = {}
        self.proxy: Proxy | None = None
        self.proxy_starts = 0
        self._direct: dict[str, grpc.Channel] = {}

    @property
    def listen(self) -> Path:
        return self.pxdir / "criproxy.sock"

    @property
    def cgroup_root(self) -> str:
        """Pods' cgroup parents go under this (kubelet's go under /kubepods)."""
        return f"/criproxy-{self.base.name}"

    # ------------------------------------------------------------ up and down

    def up(self) -> None:
        for d in (self.pxdir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.info = self.runtimes.up(self.rtdir)
        self.start_proxy()

    def start_proxy(self) -> None:
        a, b = self.info["instances"]["a"], self.info["instances"]["b"]
        self.proxy = start_proxy(
            f"{a['socket']},{ALT}:unix://{b['socket']}",
            "-listBudget", str(self.list_budget), "-runtimeHandlers", f"{HANDLER}={ALT}:",
            "-streamUrl", "http://127.0.0.1:11250",
            workdir=self.pxdir, wait_for=list(LABELS), verbosity=self.verbosity,
            **({"repo": self.repo} if self.repo else {}))
        self.proxy_starts += 1

    def restart_proxy(self) -> None:
        """Stop criproxy and start it again on the same socket and runtime dir."""
        if self.proxy is not None:
            self.proxy.stop()
        self.start_proxy()

    def down(self, keep: bool = False) -> None:
        for channel in self._direct.values():
            channel.close()
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
        with contextlib.suppress(Exception):
            self.runtimes.down(self.rtdir)
        self.runtimes.remove_cgroup_tree(self.cgroup_root)
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------ the runtimes

    def instance(self, label: str) -> dict:
        """The instance's current entry (runtimes.json: its pid changes on a restart)."""
        info = json.loads((self.rtdir / "runtimes.json").read_text())
        return info["instances"][INSTANCE[label]]

    def containerd_pid(self, label: str) -> int:
        return int(self.instance(label)["pid"])

    def restart_runtime(self, label: str) -> None:
        self.info["instances"][INSTANCE[label]] = self.runtimes.restart_instance(
            self.rtdir, INSTANCE[label])

    def direct(self, label: str) -> rpc.RuntimeServiceStub:
        """A stub on the runtime's own socket, bypassing criproxy."""
        if label not in self._direct:
            self._direct[label] = grpc.insecure_channel(self.instance(label)["endpoint"])
        return rpc.RuntimeServiceStub(self._direct[label])

    def held(self) -> dict[str, dict[str, list[str]]]:
        """What each runtime really holds, as criproxy would show the ids."""
        held = {}
        for label in LABELS:
            stub = self.direct(label)
            pods = stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=DIRECT_TIMEOUT).items
            ctrs = stub.ListContainers(pb.ListContainersRequest(),
                                       timeout=DIRECT_TIMEOUT).containers
            held[label] = {"sandboxes": sorted(shown_id(label, p.id) for p in pods),
                           "containers": sorted(shown_id(label, c.id) for c in ctrs)}
        return held

    # ------------------------------------------------------------ criproxy's processes

    def criproxy_pids(self) -> list[int]:
        """supervisord (the `criproxy` process) and its descendants, now."""
        proxy = self.proxy
        if proxy is None or proxy.proc.poll() is not None:
            return []
        return process_tree(proxy.proc.pid)

    def rundir_files(self) -> tuple[int, int]:
        """Files in criproxy's runtime dir, and the bytes of the regular ones."""
        proxy = self.proxy
        count = size = 0
        if proxy is not None:
            for path in proxy.rundir.rglob("*"):
                with contextlib.suppress(OSError):
                    info = path.lstat()
                    if stat.S_ISDIR(info.st_mode):
                        continue
                    count += 1
                    size += info.st_size if stat.S_ISREG(info.st_mode) else 0
        return count, size

    def wait_front(self, old_pid: int, timeout: float = 60.0) -> int:
        """Until a front other than `old_pid` reports every runtime up; its pid."""
        assert self.proxy is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError, StopIteration):
                status = self.proxy.status()
                pid = int(status["front_pid"])
                if pid not in (0, old_pid) and _alive(pid) and all(
                        r["state"] == "up" for r in status["runtimes"]):
                    return pid
            time.sleep(0.1)
        raise TimeoutError(f"no new front after {timeout}s (old {old_pid})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
