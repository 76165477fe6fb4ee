#!/usr/bin/env python3
"""A runtime in a pod, timed (issue 24): registration, a kill -9 of its pod, relists.

    .venv/bin/python bench/node/registration.py [--rounds 10] [--json FILE]

Root only. The node of tests/e2e/test_e2e_runtime_in_pod.py (tests/e2e/nested_runtime.py): the
primary containerd, criproxy in front of it, the DaemonSet's pod of
deploy/runtime-daemonset/ created through criproxy as kubelet would, a containerd nested
in it. A kubelet-like relister (tests/support/relister.py) runs throughout. Each round:

- registration: the runtime's pod deleted, a new one created under a new name
  (nested-N.runtime, criproxy started with the primary only); from its socket appearing
  at -runtimesDir/NAME.sock to criproxy's first served call for it;
- kill -9: the runtime's container killed, recreated at once as kubelet does; the
  failing stretch of the runtime's calls through criproxy (the last success before the
  kill to the first after), and how much of it was the runtime's own start (to its
  socket answering Version).

At the end: relists, failed relists and partial relists (a successful relist lacking a
pod or container that exists: must be 0). Prints a table; --json writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc  # noqa: E402
from cri_api.v1 import api_pb2 as pb  # noqa: E402

from tests.e2e import nested_runtime as nr  # noqa: E402
from tests.support.relister import Relister, longest_failure, partial  # noqa: E402


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


class SocketWatch(threading.Thread):
    """When a socket (a new inode) appears at `path`; polled every 2 ms."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.before = path, inode(path)
        self.appeared: float | None = None
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            now = inode(self.path)
            if now is not None and now != self.before:
                self.appeared = time.monotonic()
                return
            time.sleep(0.002)


def served(site: nr.Site, timeout: float = 60.0) -> float:
    """Poll (every 10 ms) until criproxy serves a call of the nested runtime."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if site.nested_answers(2):
                return time.monotonic()
        except grpc.RpcError:
            pass
        time.sleep(0.01)
    raise TimeoutError("the nested runtime never answered through criproxy")


def expect_all(site: nr.Site, relister: Relister) -> None:
    pods = [*site.runtime_pods, *site.nested_pods]
    relister.expect({p.pod_id for p in pods}, {p.cid for p in pods})


def registration_round(site: nr.Site, relister: Relister, index: int) -> float:
    old = site.runtime_pods[-1]
    site.runtime_pods.remove(old)
    expect_all(site, relister)
    site.runtime_pods.append(old)
    site.delete_runtime_pod(old)
    # A new name: a new registration (the manifest's RUNTIME_NAME, as an operator edits it).
    env = site.daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "RUNTIME_NAME")["value"] = f"nested-{index}.runtime"
    watch = SocketWatch(site.socket)
    site.run_runtime_pod()
    expect_all(site, relister)
    done = served(site)
    watch.stop.set()
    watch.join()
    if watch.appeared is None:
        raise RuntimeError(f"{site.socket}: no new socket seen")
    return done - watch.appeared


def kill_round(site: nr.Site, relister: Relister) -> tuple[float, float]:
    pod = site.runtime_pods[-1]
    last_ok = served(site)
    os.kill(site.container_pid(pod.cid), signal.SIGKILL)
    nr.wait_until("the kill seen", lambda: site.primary.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=pod.cid), timeout=5).status.state
        == pb.CONTAINER_EXITED, interval=0.01)
    old = pod.cid
    started = time.monotonic()
    site.start_runtime_container(pod, attempt=pod.attempt + 1)
    expect_all(site, relister)
    nr.wait_until("the socket answering", site.socket_answers, timeout=60, interval=0.01)
    own = time.monotonic() - started
    back = served(site)
    site.remove_container(old)
    return back - last_ok, own


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-settle", action="store_true",
                        help="kill at once, before any relist saw the nested pods (shows the "
                             "record's gap: a runtime with no List answer yet is left out)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("root only: containerd in a privileged container")
    base = Path(tempfile.mkdtemp(prefix="rgb-", dir="/tmp"))
    (base / "px").mkdir()
    site = None
    try:
        site = nr.make_site(base)
        site.start_criproxy()
        site.run_runtime_pod()
        nr.wait_until("the nested socket", site.socket_answers, timeout=60)
        site.seed_images()
        served(site)
        assert site.proxy is not None
        # Pods on the nested runtime, through every kill: never missing from a relist.
        watched = site.run_nested_pod("bench-handler", by_handler=True)
        site.run_nested_pod("bench-annotation", by_handler=False)
        relister = Relister(str(site.proxy.listen), set(), set(), watched.uid,
                            timeout=nr.CALL_TIMEOUT)
        expect_all(site, relister)
        relister.start()
        if not args.no_settle:  # kubelet has relisted since the pods were made
            nr.wait_until("relists", lambda: sum(not r.error for r in relister.relists) >= 3)
        registrations, kills = [], []
        for _ in range(args.rounds):
            kills.append(kill_round(site, relister))
        # Then registrations (new names share the containerd's state: its pods go first).
        for pod in list(site.nested_pods):
            site.nested_pods.remove(pod)
            expect_all(site, relister)
            site.nested_pods.append(pod)
            site.remove_nested_pod(pod)
        relister.watched_uid = site.runtime_pods[-1].kube.uid
        for i in range(args.rounds):
            registrations.append(registration_round(site, relister, i))
            relister.watched_uid = site.runtime_pods[-1].kube.uid
        time.sleep(1.0)
        relists = relister.stop()
    finally:
        if site is not None:
            nr.teardown(site)
        else:
            nr.cleanup(base, f"/criproxy-{base.name}")
        shutil.rmtree(base, ignore_errors=True)
    stretch = [k[0] for k in kills]
    own = [k[1] for k in kills]
    # The watched uid changes with each new runtime pod: a relist racing that change may
    # rightly lack the new one; ids missing are what counts.
    bad = [r for r in partial(relists) if any(not m.startswith("uid ") for m in r.missing)]
    figures = {
        "rounds": args.rounds, "settle": not args.no_settle,
        "socket_to_first_served_ms": {"median": statistics.median(registrations) * 1000,
                                      "worst": max(registrations) * 1000},
        "kill9_failing_stretch_ms": {"median": statistics.median(stretch) * 1000,
                                     "worst": max(stretch) * 1000},
        "kill9_runtime_own_start_ms": {"median": statistics.median(own) * 1000,
                                       "worst": max(own) * 1000},
        "relists": len(relists), "failed_relists": sum(1 for r in relists if r.error),
        "longest_failed_relists_s": longest_failure(relists), "partial_relists": len(bad),
    }
    print(f"runtime in a pod, {args.rounds} rounds")
    for key in ("socket_to_first_served_ms", "kill9_failing_stretch_ms",
                "kill9_runtime_own_start_ms"):
        got = figures[key]
        print(f"  {key:<28} median {got['median']:7.0f}  worst {got['worst']:7.0f}")
    print(f"  relists {figures['relists']}, failed {figures['failed_relists']} "
          f"(longest {figures['longest_failed_relists_s']:.1f} s), partial {len(bad)}")
    for r in bad[:5]:
        print(f"  partial at +{r.at - relists[0].at:.1f} s lacked {', '.join(r.missing[:4])}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
