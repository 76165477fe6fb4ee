"""Running the real criproxy (supervisord, front, workers) for process-level tests."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def short_dir(prefix: str) -> Path:
    """A fresh directory with a short path: unix socket paths max out at 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class Proxy:
    workdir: Path
    proc: subprocess.Popen
    log_path: Path
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def listen(self) -> Path:
        return self.workdir / "criproxy.sock"

    @property
    def rundir(self) -> Path:
        return self.workdir / "run"

    @property
    def runtimes_dir(self) -> Path:
        """Where runtimes register (-runtimesDir), unless the test named another."""
        return self.workdir / "runtimes"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(
            f"unix://{self.listen}",
            options=[("grpc.max_receive_message_length", 64 << 20),
                     ("grpc.max_send_message_length", 64 << 20)])
        self.channels.append(channel)
        return channel

    def runtime_stub(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel())

    def image_stub(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel())

    def status(self) -> dict:
        return json.loads((self.rundir / "status.json").read_text())

    def runtime_status(self, label: str) -> dict:
        return next(r for r in self.status()["runtimes"] if r["label"] == label)

    def wait_state(self, label: str, state: str, timeout: float = 15.0) -> dict:
        """Wait until the front reports `label` in `state` (status file, ~1 s fresh)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                current = self.runtime_status(label)
                if current["state"] == state:
                    return current
            except (OSError, ValueError, StopIteration):
                current = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"runtime {label} not {state} after {timeout}s: {current}\n"
                                   f"{self.log()[-4000:]}")
            time.sleep(0.05)

    def wait_all_up(self, labels: list[str], timeout: float = 20.0) -> None:
        for label in labels:
            self.wait_state(label, "up", timeout)

    def front_pid(self) -> int:
        return int(self.status()["front_pid"])

    def worker_pid(self, label: str) -> int:
        return int(self.runtime_status(label)["worker_pid"])

    def pids(self, labels: list[str] | tuple[str, ...]) -> dict[str, int]:
        """The front's pid ("front") and the pid of each runtime's worker (by label)."""
        return {"front": self.front_pid(), **{label: self.worker_pid(label) for label in labels}}

    def supervisord_pid(self) -> int:
        return int((self.rundir / "supervisord.pid").read_text())

    def stop(self, timeout: float = 20.0) -> int:
        for channel in self.channels:
            channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_everything()
        return self.proc.returncode

    def _kill_everything(self) -> None:
        """Last resort when a clean stop failed: kill what we know we started."""
        pids = [self.proc.pid]
        try:
            pids += [self.supervisord_pid(), self.front_pid()]
            pids += [r["worker_pid"] for r in self.status()["runtimes"] if r["worker_pid"]]
        except (OSError, ValueError):
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(5)


def start_proxy(connect: str, *extra: str, workdir: Path | None = None,
                wait_for: list[str] | None = None, verbosity: int = 2,
                repo: Path = REPO) -> Proxy:
    """Start `criproxy` exactly as an operator would, in a private directory.

    `repo`: the source tree to run (another checkout: benchmarks compare two)."""
    workdir = workdir or short_dir("cp-")
    log_path = workdir / "criproxy.log"
    command = [sys.executable, "-m", "criproxy", "-connect", connect,
               "-listen", str(workdir / "criproxy.sock"), "-rundir", str(workdir / "run"),
               "-v", str(verbosity), "-logtostderr",
               # Any free port: parallel proxies must not fight over the default one.
               "-metricsAddress", "127.0.0.1:0",
               # Its own: a proxy under test never takes the node's registrations.
               *([] if "-runtimesDir" in extra else ["-runtimesDir", str(workdir / "runtimes")]),
               *extra]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, cwd=repo, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    proxy = Proxy(workdir, proc, log_path)
    if wait_for is not None:
        try:
            proxy.wait_all_up(wait_for)
        except BaseException:
            proxy.stop()
            raise
    return proxy


@functools.cache
def runtimes_script() -> types.ModuleType:
    """scripts/runtimes.py (a script, not a package): real containerd runtimes and
    the apt-get installs the tests need."""
    spec = importlib.util.spec_from_file_location("runtimes", REPO / "scripts" / "runtimes.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def process_tree(root: int) -> list[int]:
    """`root` and its descendants alive now (the criproxy process: supervisord,
    front and workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
