"""The benchmark's rig: the fake runtimes and proxies a measurement starts (and always
stops), and the load client's jobs (bench/common/loadgen.py runs them)."""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.fakeruntime import READY_MESSAGE, FakeRuntime
from tests.support.harness import Proxy, start_proxy

COMMON = Path(__file__).resolve().parent   # bench/common: fake.py, loadgen.py, kubelet.py
BENCH = COMMON.parent                      # bench: results/
REPO = BENCH.parent

RT = "/runtime.v1.RuntimeService/"
ALT = "alt.cloud"              # the named runtime of the fake set-ups
CD_ALT = "crun.test"           # the named runtime of the containerd set-ups


@dataclass
class Bench:
    args: argparse.Namespace
    base: Path
    fakes: list[FakeRuntime] = field(default_factory=list)
    proxies: list[Proxy] = field(default_factory=list)
    state: dict[str, Any] | None = None  # the latency set-up, reused by the next experiments

    def scale(self, seconds: float) -> float:
        return seconds * (0.3 if self.args.quick else 1.0)

    def fake(self, name: str, lists_in_any_order: bool = False) -> FakeRuntime:
        """A fake runtime (bench/common/fake.py: the tests' fake without its journal);
        `lists_in_any_order`: its Lists' items come in another order each time, as
        containerd's do."""
        socket, log_path = self.base / f"{name}.sock", self.base / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(COMMON / "fake.py"), "--socket", str(socket),
                 "--journal", os.devnull, "--name", name,
                 *(["--lists-in-any-order"] if lists_in_any_order else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        fake = FakeRuntime(name, socket, Path(os.devnull), log_path, proc)
        self.fakes.append(fake)
        deadline = time.monotonic() + 20
        while READY_MESSAGE.encode() not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake {name} did not start:\n{log_path.read_text()}")
            time.sleep(0.02)
        return fake

    def proxy(self, tag: str, connect: str, labels: list[str], *extra: str,
              repo: Path = REPO) -> Proxy:
        workdir = self.base / f"px-{tag}"
        workdir.mkdir()
        proxy = start_proxy(connect, *self.args.proxy_args.split(), *extra, workdir=workdir,
                            wait_for=labels, verbosity=self.args.verbosity, repo=repo)
        self.proxies.append(proxy)
        return proxy

    def stop_proxy(self, proxy: Proxy) -> None:
        proxy.stop()
        self.proxies.remove(proxy)

    def stop_fake(self, fake: FakeRuntime) -> None:
        fake.stop()
        self.fakes.remove(fake)

    def close(self) -> None:
        for proxy in list(self.proxies):
            with contextlib.suppress(Exception):
                proxy.stop()
        for fake in list(self.fakes):
            with contextlib.suppress(Exception):
                fake.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def target(path: Path | str) -> str:
    return f"unix://{path}"


def loadgen(groups: list[list[dict]], rounds: int = 4, warmup: int = 20) -> dict[str, Any]:
    spec = {"groups": groups, "rounds": rounds, "warmup": warmup}
    done = subprocess.run([sys.executable, str(COMMON / "loadgen.py")], input=json.dumps(spec),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed:\n{done.stderr}")
    return json.loads(done.stdout)


def job(job_id: str, where: str, method: str, request: Any, seconds: float,
        concurrency: int = 1, timeout: float = 10.0) -> dict[str, Any]:
    return {"id": job_id, "target": where, "method": RT + method,
            "request": base64.b64encode(request.SerializeToString()).decode(),
            "duration": seconds, "concurrency": concurrency, "timeout": timeout}
