#!/usr/bin/env python3
"""Profile criproxy's front and workers with py-spy under one of the benchmark's loads.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/calls/pyspy.py SCENARIO [--seconds 20] [--native] [--top 25]

Scenarios (fake runtimes, as in bench/suite/run.py):
  unary   PodSandboxStatus to the primary, 16 concurrent clients
  serial  Version to the primary, one client, call after call
  named   ListContainers of 1000 containers of a named runtime, one client
  fanout  ListContainers over 3 runtimes of 300 containers each, one client
  node    the kubelet replay: 110 pods x 3 containers over 2 runtimes
  idle    no calls at all (heartbeats, status file)

Prints, per process, the functions that use the most CPU (own samples, and
samples with the function anywhere on the stack) and the CPU seconds each
process used meanwhile; py-spy's raw output (collapsed stacks, for flame graph
tools) stays in bench/results/profile-<scenario>-<role>.txt.
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH.parent))

from bench.common import populate, procstat, rig  # noqa: E402
from bench.suite import run  # noqa: E402
from cri_api.v1 import api_pb2 as pb  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"


def scenario(bench: rig.Bench, name: str, seconds: float) -> tuple[object, subprocess.Popen]:
    """Set the scenario up; return its proxy and the load process (already running)."""
    list_request = pb.ListContainersRequest(filter=pb.ContainerFilter())
    if name == "serial":
        fake = bench.fake("p-a")
        proxy = bench.proxy("p", str(fake.socket), ["primary"])
        jobs = [rig.job("x", rig.target(proxy.listen), "Version",
                        pb.VersionRequest(version="0.1.0"), seconds + 5)]
    elif name in ("unary", "idle"):
        fake = bench.fake("p-a")
        pods = populate.populate(fake.socket, 10, 1)
        proxy = bench.proxy("p", str(fake.socket), ["primary"])
        jobs = [] if name == "idle" else [rig.job(
            "x", rig.target(proxy.listen), "PodSandboxStatus",
            pb.PodSandboxStatusRequest(pod_sandbox_id=pods[0].id), seconds + 5, concurrency=16)]
    elif name == "named":
        empty, full = bench.fake("p-e"), bench.fake("p-f")
        populate.populate(full.socket, 1000, 1)
        proxy = bench.proxy("p", f"{empty.socket},{rig.ALT}:{full.socket}", ["primary", rig.ALT])
        jobs = [rig.job("x", rig.target(proxy.listen), "ListContainers", list_request,
                        seconds + 5)]
    elif name == "fanout":
        fakes = [bench.fake(f"p-{i}") for i in range(3)]
        for fake in fakes:
            populate.populate(fake.socket, 100, 3)
        proxy = bench.proxy("p", f"{fakes[0].socket},b.rt:{fakes[1].socket},"
                                 f"c.rt:{fakes[2].socket}", ["primary", "b.rt", "c.rt"])
        jobs = [rig.job("x", rig.target(proxy.listen), "ListContainers", list_request,
                        seconds + 5)]
    elif name == "node":
        a, b = bench.fake("p-a"), bench.fake("p-b")
        populate.populate(a.socket, 55, 3)
        populate.populate(b.socket, 55, 3, first=55)
        proxy = bench.proxy("p", f"{a.socket},{rig.ALT}:{b.socket}", ["primary", rig.ALT])
        return proxy, subprocess.Popen(
            [sys.executable, str(rig.COMMON / "kubelet.py"), "--target", rig.target(proxy.listen),
             "--seconds", str(seconds + 5)], stdout=subprocess.DEVNULL)
    else:
        raise SystemExit(f"unknown scenario {name}")
    if not jobs:
        return proxy, subprocess.Popen(["sleep", str(seconds + 5)])
    load = subprocess.Popen([sys.executable, str(rig.COMMON / "loadgen.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    import json
    assert load.stdin is not None
    load.stdin.write(json.dumps({"groups": [jobs], "rounds": 1, "warmup": 5}))
    load.stdin.close()
    return proxy, load


def summarize(raw: Path, top: int) -> str:
    own: collections.Counter = collections.Counter()
    anywhere: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not total:
        return "  (no samples: the process was idle)"
    lines = [f"  {total} samples; own time:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["  on the stack (inclusive):"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in anywhere.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'func (/long/path/file.py:12)' -> 'func (file.py:12)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames (slower)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--proxy-args", default="")
    args = parser.parse_args()
    bench = rig.Bench(run.parse_args(["--proxy-args=" + args.proxy_args]), run.short_dir("cpp-"))
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    try:
        proxy, load = scenario(bench, args.scenario, args.seconds)
        time.sleep(3)  # warm up
        root = proxy.proc.pid
        before = procstat.TreeSample(root)
        spies = {}
        for pid, role in before.roles.items():
            path = out_dir / f"profile-{args.scenario}-{role}.txt"
            command = [str(PY_SPY), "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r",
                       str(args.rate), "-f", "raw", "-o", str(path)]
            # --native must pause the process to unwind C stacks; otherwise don't.
            command.append("--native" if args.native else "--nonblocking")
            path.unlink(missing_ok=True)
            spies[role] = (path, subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL))
        for _, spy in spies.values():
            spy.wait()
        after = procstat.TreeSample(root)
        used = procstat.cpu_between(before, after)
        elapsed = after.taken - before.taken
        load.wait()
        for role, (path, spy) in sorted(spies.items()):
            if spy.returncode:
                print(f"== {role}: py-spy failed ({spy.returncode})")
                continue
            print(f"== {role}: {100 * used.get(role, 0) / elapsed:.1f}% of a core over "
                  f"{elapsed:.0f}s")
            print(summarize(path, args.top) if path.exists() else "  (no profile)")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
