#!/usr/bin/env python3
"""How long kubelet's calls fail while criproxy restarts, under a real systemd.

    .venv/bin/python bench/node/restart.py [--rounds 5] [--json FILE]     (make bench-restart)

Boots Debian's systemd as PID 1 in a container (tests/node/nspawn.py), installs the
built package there as an operator does (dpkg -i, criproxy install-systemd,
systemctl enable --now; two fake runtimes bound in), and while two clients call
Version every 20 ms from the host, restarts criproxy in each way a node does:
`systemctl restart`, a SIGKILLed front (supervisord restarts it), an upgrade
(dpkg -i of a newer build) and `systemctl kill -s KILL` (systemd restarts it).

- fresh: dials a new connection for every call, failing fast (no backoff);
- backoff: one channel for its whole life with kubelet's CRI client backoff
  (100 ms first, x1.6, at most 3 s), failing fast as kubelet's calls do.
The figure is a client's outage: from its last answer before the restart to its
first answer after it. Each scenario runs twice: with criproxy as built, and
with supervisord's signal wakeup (criproxy/process/wakeup.py) taken out of the
installed configuration, the way it ran before.
Needs root.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cri_api.v1 import api_pb2 as pb  # noqa: E402
from cri_api.v1 import api_pb2_grpc as rpc  # noqa: E402

from tests.node import nspawn  # noqa: E402
from tests.support.fakeruntime import start_fake  # noqa: E402
from tests.support.harness import short_dir  # noqa: E402

LISTEN = "/run/criproxy.sock"
PERIOD = 0.02
CALL_TIMEOUT = 0.5
# kubelet's CRI client (k8s.io/cri-client): 100 ms first backoff, at most 3 s.
KUBELET_BACKOFF = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 3000)]
TEMPLATE = "/usr/lib/criproxy/lib/python3.11/site-packages/criproxy/supervisord.conf"


class Client(threading.Thread):
    """Calls Version every PERIOD; keeps (time, answered) of each call."""

    def __init__(self, socket: Path, fresh: bool) -> None:
        super().__init__(daemon=True)
        self.target, self.fresh = f"unix://{socket}", fresh
        self.calls: list[tuple[float, bool]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        channel = None if self.fresh else grpc.insecure_channel(self.target, KUBELET_BACKOFF)
        while not self.stopping.is_set():
            self.calls.append((time.monotonic(), self.call(channel)))
            time.sleep(PERIOD)

    def call(self, channel: grpc.Channel | None) -> bool:
        own = channel or grpc.insecure_channel(self.target)
        try:
            rpc.RuntimeServiceStub(own).Version(pb.VersionRequest(), timeout=CALL_TIMEOUT)
            return True
        except grpc.RpcError:
            return False
        finally:
            if channel is None:
                own.close()

    def outage(self, since: float) -> float:
        """From the last answer before the first failure after `since` to the first
        answer after that failure (an upgrade serves for seconds before it restarts)."""
        calls = [c for c in self.calls if c[0] >= since - 1]
        first_fail = next((t for t, ok in calls if not ok and t >= since), None)
        if first_fail is None:
            return 0.0
        last_ok = max((t for t, ok in calls if ok and t < first_fail), default=since)
        back = min((t for t, ok in calls if ok and t > first_fail), default=None)
        return float("nan") if back is None else back - last_ok


def front_pid(node: nspawn.Machine) -> str:
    return str(json.loads(node.host_path("/run/criproxy/status.json").read_text())["front_pid"])


def scenarios(share: Path, wakeup: bool) -> dict[str, Callable[[nspawn.Machine, int], None]]:
    """How a node restarts criproxy. An upgrade installs the wakeup again: it is
    measured as built only."""
    debs = [f"/share/{sorted(share.glob('criproxy_*.deb'))[0].name}", "/share/newer.deb"]
    acts = {
        "systemctl restart": lambda node, _i: node.run("systemctl", "restart", "criproxy"),
        "front SIGKILL": lambda node, _i: node.run("kill", "-9", front_pid(node)),
        "upgrade (dpkg -i)": lambda node, i: node.run("dpkg", "-i", debs[(i + 1) % 2],
                                                      timeout=300),
        "systemctl kill -s KILL": lambda node, _i: node.run(
            "systemctl", "kill", "-s", "KILL", "criproxy"),
    }
    if not wakeup:
        del acts["upgrade (dpkg -i)"]
    return acts


def wait_serving(node: nspawn.Machine, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    probe = Client(node.host_path(LISTEN), fresh=True)
    while not probe.call(None):
        if time.monotonic() > deadline:
            raise RuntimeError(node.journal("-u", "criproxy", "-n", "30"))
        time.sleep(0.1)


def measure(node: nspawn.Machine, act: Callable[[nspawn.Machine, int], None],
            rounds: int) -> dict[str, list[float]]:
    clients = {"fresh": Client(node.host_path(LISTEN), True),
               "backoff": Client(node.host_path(LISTEN), False)}
    for client in clients.values():
        client.start()
    outages: dict[str, list[float]] = {name: [] for name in clients}
    for i in range(rounds):
        time.sleep(2.0)
        at = time.monotonic()
        act(node, i)
        time.sleep(6.0)  # well past a backoff client's 3 s ceiling
        wait_serving(node)
        for name, client in clients.items():
            outages[name].append(client.outage(at))
    for client in clients.values():
        client.stopping.set()
        client.join()
    return outages


@contextlib.contextmanager
def node_with_criproxy(share: Path, wakeup: bool) -> Iterator[nspawn.Machine]:
    base = short_dir("rsb-")
    fakes = [start_fake(base, "primary"), start_fake(base, "alt")]
    try:
        with nspawn.booted("restart-bench", binds=[f"{base}:/run/fakes"],
                           binds_ro=[f"{share}:/share"]) as node:
            install(node, share, wakeup)
            yield node
    finally:
        for fake in fakes:
            fake.stop()
        shutil.rmtree(base, ignore_errors=True)


def install(node: nspawn.Machine, share: Path, wakeup: bool) -> None:
    deb = sorted(share.glob("criproxy_*.deb"))[0].name
    node.run("dpkg", "-i", f"/share/{deb}", timeout=300)
    if not wakeup:
        node.run("sed", "-i", r"/^\[rpcinterface:wakeup\]/,+1d", TEMPLATE)
    node.run("criproxy", "install-systemd", "-connect",
             "/run/fakes/primary.sock,alt:/run/fakes/alt.sock")
    node.run("systemctl", "daemon-reload")
    node.run("systemctl", "enable", "--now", "criproxy", timeout=120)
    wait_serving(node)


def summary(values: list[float]) -> str:
    return (f"median {statistics.median(values):.2f} s, max {max(values):.2f} s "
            f"({', '.join(f'{v:.2f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args()
    share = Path(tempfile.mkdtemp(prefix="restart-bench-"))
    try:
        nspawn.build_package(share)
        results = run_all(share, args.rounds, [s for s in args.only.split(",") if s])
    finally:
        shutil.rmtree(share, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def run_all(share: Path, rounds: int, only: list[str]) -> dict:
    results: dict = {}
    for wakeup in (True, False):
        variant = "as built" if wakeup else "without the signal wakeup"
        with node_with_criproxy(share, wakeup) as node:
            for name, act in scenarios(share, wakeup).items():
                if only and name not in only:
                    continue
                outages = measure(node, act, rounds)
                results.setdefault(name, {})[variant] = outages
                for client, values in outages.items():
                    print(f"{name:24} {variant:26} {client:8} {summary(values)}", flush=True)
    return results


if __name__ == "__main__":
    main()
