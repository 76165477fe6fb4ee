#!/usr/bin/env python3
"""Does watching -runtimesDir cost an idle node anything? Two fake runtimes, no calls:
criproxy's whole process tree with -runtimesDir off, and with an empty one,
in interleaved rounds (issue 24: the idle CPU of an empty -runtimesDir must
not rise).

    .venv/bin/python bench/node/idle_runtimes_dir.py [--seconds 60] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import procstat, rig  # noqa: E402
from bench.suite import run  # noqa: E402

SETUPS = {"-runtimesDir off": ["-runtimesDir", "off"], "empty -runtimesDir": []}


def idle_share(flags: list[str], seconds: float) -> float:
    """Percent of one core the idle tree used over `seconds`."""
    bench = rig.Bench(run.parse_args([]), run.short_dir("cpd-"))
    try:
        a, b = bench.fake("a"), bench.fake("b")
        proxy = bench.proxy("i", f"{a.socket},{rig.ALT}:{b.socket}", ["primary", rig.ALT],
                            *flags)
        time.sleep(5)  # past supervisord's startsecs and the first status writes
        before = procstat.TreeSample(proxy.proc.pid)
        time.sleep(seconds)
        after = procstat.TreeSample(proxy.proc.pid)
        used = procstat.cpu_between(before, after)
        return 100 * sum(used.values()) / (after.taken - before.taken)
    finally:
        bench.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shares: dict[str, list[float]] = {name: [] for name in SETUPS}
    for round_ in range(args.rounds):
        for name, flags in SETUPS.items():
            shares[name].append(idle_share(flags, args.seconds))
            print(f"round {round_ + 1}: {name:<20} {shares[name][-1]:.3f} % of a core",
                  flush=True)
    for name, values in shares.items():
        print(f"{name:<20} median {statistics.median(values):.3f} %, "
              f"max {max(values):.3f} % of a core over {args.seconds:g} s, {args.rounds} rounds")


if __name__ == "__main__":
    main()
