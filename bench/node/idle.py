#!/usr/bin/env python3
"""Idle CPU of criproxy (two fake runtimes, no calls) for several -heartbeat values.

    .venv/bin/python bench/node/idle.py [--seconds 30] [--heartbeats 0.25,0.5,1,2]

-workerTimeout is kept at 3 heartbeats (at least 1 s) for each.
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
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--heartbeats", default="0.25,0.5,1,2")
    args = parser.parse_args()
    for heartbeat in (float(h) for h in args.heartbeats.split(",")):
        flags = f"-heartbeat {heartbeat:g} -workerTimeout {max(1.0, 3 * heartbeat):g}"
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
            print(f"{flags:32s} total {100 * sum(used.values()) / elapsed:.2f}% of a core   {parts}")
        finally:
            bench.close()


if __name__ == "__main__":
    main()
