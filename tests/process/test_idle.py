"""An idle criproxy wakes for nothing (issue 26), and still notices what matters.

- the front pings an idle worker once per -idleProbe, not every -heartbeat: a
  runtime that goes or comes back is reported by its worker at once;
- a worker that hangs while idle is found within -idleProbe + -workerTimeout;
- status.json is written when something changes, not every second;
- supervisord's loop sleeps IDLE_POLL seconds while nothing needs its clock.
"""
from __future__ import annotations

import os
import signal
import time

from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import start_cluster, stop_cluster
from tests.support.harness import process_tree


def _thread_cpu(pid: int) -> float:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
            total += int(stat.read().split()[0])
    return total / 1e9


def test_a_runtime_that_goes_and_comes_back_is_reported_at_once() -> None:
    cluster = start_cluster("-idleProbe", "60")
    try:
        proxy = cluster.proxy
        time.sleep(1.0)  # the first heartbeats are over: the links are idle
        fake = cluster.fakes["vm.cloud"]
        fake.proc.kill()
        fake.proc.wait()
        started = time.monotonic()
        proxy.wait_state("vm.cloud", "down", timeout=5)
        assert time.monotonic() - started < 3  # the worker told the front, unasked
        # The other runtimes are untouched and answer.
        proxy.runtime_stub().Version(cri.VersionRequest(), timeout=5)
        assert proxy.runtime_status("alt")["state"] == "up"
    finally:
        stop_cluster(cluster)


def test_a_worker_that_hangs_while_idle_is_found_by_the_idle_probe() -> None:
    cluster = start_cluster("-idleProbe", "1", "-heartbeat", "0.25", "-workerTimeout", "1")
    try:
        proxy = cluster.proxy
        worker = proxy.worker_pid("alt")
        time.sleep(1.5)
        os.kill(worker, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            proxy.wait_state("alt", "down", timeout=10)
            found_after = time.monotonic() - stopped
        finally:
            os.kill(worker, signal.SIGCONT)
        # -idleProbe + -workerTimeout, the status file's second, and slack
        assert found_after < 1 + 1 + 1 + 1.0, found_after
        assert "silent" in proxy.runtime_status("alt")["reason"]
        assert proxy.wait_state("alt", "up", timeout=5)["worker_pid"] == worker  # not restarted
    finally:
        stop_cluster(cluster)


def test_idle_status_is_not_rewritten_and_the_tree_stays_asleep() -> None:
    cluster = start_cluster()
    try:
        proxy = cluster.proxy
        # Until the request rates of the start are out of their window, the status
        # is written every second; a proxy that never had a call is quiet at once.
        time.sleep(3.0)
        written = proxy.status()["time"]
        tree = process_tree(proxy.proc.pid)
        before = {pid: _thread_cpu(pid) for pid in tree}
        time.sleep(6.0)
        assert proxy.status()["time"] == written  # nothing changed, nothing written
        used = sum(_thread_cpu(pid) - cpu for pid, cpu in before.items())
        # Generous (other tests share the machine): it was 0.15-0.9 % of a core
        # before issue 26 with two runtimes, and wakes for grpc's timers only now.
        assert used / 6.0 < 0.01, f"{100 * used / 6.0:.3f}% of a core while idle"
        # A call is a change: the status is fresh within about a second.
        proxy.runtime_stub().Version(cri.VersionRequest(), timeout=5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and \
                not proxy.status()["requests"].get("primary", {}).get("rate"):
            time.sleep(0.05)
        assert proxy.status()["time"] > written
        assert proxy.status()["requests"]["primary"]["rate"] > 0
    finally:
        stop_cluster(cluster)


def test_supervisord_polls_long_only_while_nothing_waits_for_its_loop(monkeypatch) -> None:
    from types import SimpleNamespace

    from supervisor.states import ProcessStates, SupervisorStates

    from criproxy.process import eventplugin, wakeup
    monkeypatch.setattr(eventplugin, "_installed", {})  # no plugin waits for a tick

    def process(state: int, laststart: float = 1.0, autostart: bool = True) -> SimpleNamespace:
        return SimpleNamespace(get_state=lambda: state, laststart=laststart,
                               config=SimpleNamespace(autostart=autostart))

    def supervisord(*processes: SimpleNamespace,
                    mood: int = SupervisorStates.RUNNING) -> SimpleNamespace:
        group = SimpleNamespace(processes={str(i): p for i, p in enumerate(processes)})
        return SimpleNamespace(options=SimpleNamespace(mood=mood), process_groups={"g": group})

    running, fatal = process(ProcessStates.RUNNING), process(ProcessStates.FATAL)
    assert wakeup.settled(supervisord(running, fatal, process(ProcessStates.STOPPED)))
    for waiting in (ProcessStates.STARTING, ProcessStates.BACKOFF, ProcessStates.STOPPING,
                    ProcessStates.EXITED):
        assert not wakeup.settled(supervisord(running, process(waiting)))
    # A program the registrar just added: started at the loop's next turn.
    assert not wakeup.settled(supervisord(running, process(ProcessStates.STOPPED, laststart=0)))
    assert wakeup.settled(supervisord(running, process(ProcessStates.STOPPED, 0, False)))
    assert not wakeup.settled(supervisord(running, mood=SupervisorStates.SHUTDOWN))
    keeper = SimpleNamespace(needs_tick=lambda: True)
    monkeypatch.setattr(eventplugin, "_installed", {"keeper": keeper})
    assert not wakeup.settled(supervisord(running))
