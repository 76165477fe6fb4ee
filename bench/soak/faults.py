"""The soak's faults, one a minute, in turn.

worker-kill       SIGKILL the target runtime's worker (supervisord starts another)
front-kill        SIGKILL the front (supervisord starts another)
runtime-freeze    SIGSTOP the target's containerd for longer than -listBudget, then SIGCONT
runtime-restart   the target's containerd stops and starts again (its shims run on)
criproxy-restart  criproxy stopped and started again on the same socket and runtime dir
call-cancel       the client cancels its next calls of some state-changing methods
                  mid-flight (its answers lost); it must recover as kubelet would

The target alternates between the rounds of six: `alt.soak` first, then the
primary. The kills wait (at most 5 s) for a state-changing call to be in flight to
their runtime, so that an answer is lost with the worker or the front. A fault's
`end` is when the node is whole again (a new process up, the runtime thawed or
answering); `settle` seconds after it are left out of the resource samples.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import time

from bench.soak.calls import Calls
from bench.soak.node import ALT, Node
from bench.soak.state import wall

KINDS = ("worker-kill", "front-kill", "runtime-freeze", "runtime-restart",
         "criproxy-restart", "call-cancel")
STRIKE_WAIT = 5.0
RECOVER = 30.0     # seconds for criproxy to see a restarted runtime up (it redials within 1 s)
CANCELS = [("RunPodSandbox", 0.05), ("RunPodSandbox", 0.4), ("CreateContainer", 0.1),
           ("StartContainer", 0.02), ("RemovePodSandbox", 0.05)]


@dataclasses.dataclass
class Fault:
    index: int
    kind: str
    target: str
    start: float
    wall: str
    end: float = 0.0
    detail: str = ""
    error: str = ""


class Faults:
    def __init__(self, node: Node, calls: Calls, freeze_seconds: float,
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.kinds = kinds
        self.node = node
        self.calls = calls
        self.freeze_seconds = freeze_seconds
        self.done: list[Fault] = []
        self.frozen: int | None = None

    def run(self, index: int) -> Fault:
        kind = self.kinds[index % len(self.kinds)]
        target = ALT if (index // len(self.kinds)) % 2 == 0 else "primary"
        fault = Fault(index, kind, target, time.monotonic(), wall())
        self.done.append(fault)
        try:
            fault.detail = getattr(self, kind.replace("-", "_"))(target)
        except Exception as err:   # recorded and reported: the run goes on
            fault.error = f"{type(err).__name__}: {err}"[:500]
        fault.end = time.monotonic()
        return fault

    def thaw(self) -> None:
        """Whatever happens, a frozen containerd is let go (cleanup calls this too)."""
        if self.frozen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.frozen, signal.SIGCONT)
            self.frozen = None

    def _strike_when_busy(self, runtime: str | None) -> str:
        """Wait for a RunPodSandbox (else any state-changing call) in flight to `runtime`,
        then let it get 10-50 ms into its way (containerd answers one in 50-70 ms)."""
        deadline = time.monotonic() + STRIKE_WAIT
        while time.monotonic() < deadline:
            method = self.calls.inflight_mutation(runtime, prefer="RunPodSandbox")
            if method == "RunPodSandbox" or (method and time.monotonic() > deadline - 1):
                delay = random.uniform(0.01, 0.05)
                time.sleep(delay)
                return f"{delay * 1000:.0f} ms into a {method}"
            time.sleep(0.002)
        return "with no state-changing call in flight"

    # ------------------------------------------------------------ the faults

    def worker_kill(self, target: str) -> str:
        proxy = self.node.proxy
        assert proxy is not None
        old = proxy.worker_pid(target)
        when = self._strike_when_busy(target)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while proxy.worker_pid(target) in (0, old):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new worker for {target} after 60s")
            time.sleep(0.1)
        proxy.wait_state(target, "up", 60)
        return f"worker {old} killed {when}; new worker {proxy.worker_pid(target)}"

    def front_kill(self, target: str) -> str:
        proxy = self.node.proxy
        assert proxy is not None
        old = proxy.front_pid()
        when = self._strike_when_busy(None)
        os.kill(old, signal.SIGKILL)
        new = self.node.wait_front(old)
        return f"front {old} killed {when}; new front {new}"

    def runtime_freeze(self, target: str) -> str:
        pid = self.node.containerd_pid(target)
        self.frozen = pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.freeze_seconds)
        finally:
            self.thaw()
        return f"containerd {pid} stopped for {self.freeze_seconds:.0f}s"

    def runtime_restart(self, target: str) -> str:
        """Over when criproxy shows the runtime up again after the restart (its state's
        `since` is later); an error if it does not within RECOVER s of the containerd
        answering Version on its own socket (runtimes.start_daemon waits for that)."""
        proxy = self.node.proxy
        assert proxy is not None
        old, t0 = self.node.containerd_pid(target), time.time()
        self.node.restart_runtime(target)
        answered = time.monotonic()
        while True:
            status = proxy.runtime_status(target)
            if status["state"] == "up" and status["since"] >= t0:
                break
            if status["state"] == "up" and time.monotonic() > answered + 5:
                break                     # criproxy never saw it go (back within a heartbeat)
            if time.monotonic() > answered + RECOVER:
                raise RuntimeError(
                    f"criproxy shows {target} {status['state']} ({status['reason']}) "
                    f"{RECOVER:.0f}s after its containerd answered Version")
            time.sleep(0.2)
        return (f"containerd {old} -> {self.node.containerd_pid(target)}; criproxy up "
                f"{time.monotonic() - answered:.1f}s after it answered")

    def criproxy_restart(self, target: str) -> str:
        assert self.node.proxy is not None
        old = self.node.proxy.proc.pid
        started = time.monotonic()
        self.node.restart_proxy()
        return (f"criproxy {old} -> {self.node.proxy.proc.pid}, "
                f"up in {time.monotonic() - started:.1f}s")

    def call_cancel(self, target: str) -> str:
        self.calls.arm_cancels(CANCELS)
        deadline = time.monotonic() + 40
        while self.calls.cancels_left() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.calls.cancels_left()
        self.calls.arm_cancels([])
        fired = [c for c in self.calls.cancelled if c["at"] >= deadline - 40]
        return (f"{len(fired)} calls cancelled by the client "
                f"({sum(c['cancelled_in_flight'] for c in fired)} before their answer)"
                + (f", {left} not reached" if left else ""))
