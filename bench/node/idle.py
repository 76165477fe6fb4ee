#!/usr/bin/env python3
"""Idle CPU of criproxy (two fake runtimes, no calls) for several -idleProbe values.

    .venv/bin/python bench/node/idle.py [--seconds 60] [--idle-probes 5,30,120]

An idle front pings each worker once per -idleProbe (-heartbeat paces pings only
while calls wait), so that is the knob of idle cost. CPU is utime+stime, in
10 ms ticks: bench/node/vs_go.py reads schedstat for figures below 0.1 %.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import procstat, rig  # noqa: E402
from bench.suite import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--idle-probes", default="5,30,120")
    args = parser.parse_args()
    for probe in (float(p) for p in args.idle_probes.split(",")):
        flags = f"-idleProbe {probe:g}"
        bench = rig.Bench(run.parse_args(["--proxy-args=" + flags]), run.short_dir("cpi-"))
        try:
            a, b = bench.fake("a"), bench.fake("b")
            proxy = bench.proxy("i", f"{a.socket},{rig.ALT}:{b.socket}", ["primary", rig.ALT])
            time.sleep(2)
            before = procstat.TreeSample(proxy.proc.pid)
            time.sleep(args.seconds)
            after = procstat.TreeSample(proxy.proc.pid)
            used = procstat.cpu_between(before, after)
            elapsed = after.taken - before.taken
            parts = "  ".join(f"{role} {100 * sec / elapsed:.2f}%" for role, sec in sorted(used.items()))
            print(f"{flags:20s} total {100 * sum(used.values()) / elapsed:.2f}% of a core   {parts}")
        finally:
            bench.close()


if __name__ == "__main__":
    main()
