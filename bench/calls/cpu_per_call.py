#!/usr/bin/env python3
"""CPU time each process spends per call, direct and proxied: a figure that,
unlike latency, hardly moves when other work shares the machine.

    .venv/bin/python bench/calls/cpu_per_call.py [--clients 1] [--seconds 5] [--call PodSandboxStatus]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import populate, procstat, rig  # noqa: E402
from bench.suite import run  # noqa: E402
from cri_api.v1 import api_pb2 as pb  # noqa: E402


def measure(bench: rig.Bench, fake, proxy, where: str, request, call: str, clients: int,
            seconds: float, named: bool = False) -> dict:
    spec = {"groups": [[rig.job("x", where, call, request, seconds, concurrency=clients)]],
            "rounds": 1, "warmup": 50}
    load = subprocess.Popen([sys.executable, str(rig.COMMON / "loadgen.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    time.sleep(0.8)  # its imports
    before = procstat.TreeSample(proxy.proc.pid)
    fake0 = procstat.cpu_seconds(fake.proc.pid)
    out, _ = load.communicate(json.dumps(spec))
    after = procstat.TreeSample(proxy.proc.pid)
    fake1 = procstat.cpu_seconds(fake.proc.pid)
    stats = json.loads(out)["x"]
    used = procstat.cpu_between(before, after)
    per = {role: 1e6 * s / stats["calls"] for role, s in used.items() if role != "supervisord"}
    per["runtime"] = 1e6 * (fake1 - fake0) / stats["calls"]
    per["client"] = 1e6 * stats["client_cores"] * stats["elapsed_s"] / stats["calls"]
    return {"calls_per_s": stats["calls_per_s"], "p50_ms": stats["p50_ms"], "us_per_call": per}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--call", default="PodSandboxStatus")
    parser.add_argument("--proxy-args", default="")
    args = parser.parse_args()
    bench = rig.Bench(run.parse_args(["--proxy-args=" + args.proxy_args]), run.short_dir("cpc-"))
    try:
        fake = bench.fake("a")
        pods = populate.populate(fake.socket, 10, 1)
        proxy = bench.proxy("p", str(fake.socket), ["primary"])
        request = {"PodSandboxStatus": pb.PodSandboxStatusRequest(pod_sandbox_id=pods[0].id),
                   "Version": pb.VersionRequest(version="0.1.0"),
                   "ListContainers": pb.ListContainersRequest(filter=pb.ContainerFilter())
                   }[args.call]
        for side, where in (("direct", rig.target(fake.socket)),
                            ("proxied", rig.target(proxy.listen))):
            result = measure(bench, fake, proxy, where, request, args.call, args.clients,
                             args.seconds)
            cost = "  ".join(f"{k} {v:.0f}" for k, v in sorted(result["us_per_call"].items()))
            print(f"{side:8s} {result['calls_per_s']:7.0f} calls/s  p50 {result['p50_ms']:.3f} ms"
                  f"  CPU us/call: {cost}")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
