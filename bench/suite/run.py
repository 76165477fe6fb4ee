#!/usr/bin/env python3
"""criproxy benchmark: every figure direct-to-runtime and through criproxy, in one run.

    .venv/bin/python bench/suite/run.py                 # everything (`make bench`), ~6 min
    .venv/bin/python bench/suite/run.py --quick         # shorter durations, ~2 min
    .venv/bin/python bench/suite/run.py --only latency,node --no-containerd

Prints the tables and PASS/MISS per target on stdout and writes the same as
JSON to bench/results/<timestamp>.json (and the text to .txt). bench/README.md
says what each figure means. Must run as root for the containerd part (it
starts two containerd instances with scripts/runtimes.py); --no-containerd
skips it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench, criproxy, tests

import grpc  # noqa: E402

from bench.common.rig import BENCH, REPO, Bench  # noqa: E402
from bench.suite.exp_calls import (exp_alternate, exp_fanout, exp_latency_fake,  # noqa: E402
                                   exp_throughput)
from bench.suite.exp_containerd import exp_containerd  # noqa: E402
from bench.suite.exp_node import exp_isolation, exp_node  # noqa: E402
from bench.suite.report import report  # noqa: E402
from tests.support.harness import short_dir  # noqa: E402

EXPERIMENTS = ("latency", "throughput", "alternate", "fanout", "node", "isolation")


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def machine_busy(seconds: float = 3.0) -> float:
    """Share (0..1) of all the machine's CPUs busy over `seconds`, from /proc/stat."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])
    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait (up to `limit` seconds) until other work leaves the machine nearly idle."""
    deadline = time.monotonic() + limit
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"machine {100 * busy:.0f}% busy with other work; waiting", file=sys.stderr)
        time.sleep(10)
        busy = machine_busy()
    return busy


def collect_meta(args: argparse.Namespace) -> dict[str, Any]:
    import zmq
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.machine())
    containerd = "not installed"
    if shutil.which("containerd"):
        words = subprocess.run(["containerd", "--version"], capture_output=True,
                               text=True).stdout.split()
        containerd = words[2] if len(words) > 2 else " ".join(words)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "criproxy", "workers"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return {"started": datetime.datetime.now().isoformat(timespec="seconds"),
            "cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "grpcio": grpc.__version__, "protobuf": _version("protobuf"),
            "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(),
            "msgpack": _version("msgpack"), "supervisor": _version("supervisor"),
            "containerd": containerd, "git": git + ("+dirty" if dirty else ""),
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "proxy_args": args.proxy_args, "args": vars(args)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="about a third of the durations (figures get noisier)")
    parser.add_argument("--only", default="",
                        help="comma-separated subset of " + ",".join(EXPERIMENTS))
    parser.add_argument("--no-containerd", action="store_true",
                        help="skip the real containerd measurements (1 and 3)")
    parser.add_argument("--sizes", default="10,100,1000",
                        type=lambda s: [int(x) for x in s.split(",")],
                        help="List sizes for 1 (the largest is used by 3)")
    parser.add_argument("--clients", default="1,16,64",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--fanout-containers", type=int, default=300)
    parser.add_argument("--node-pods", type=int, default=110)
    parser.add_argument("--node-seconds", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--containerd-pods", type=int, default=10)
    parser.add_argument("--proxy-args", default="",
                        help="extra criproxy flags, e.g. '-heartbeat 1 -workerTimeout 3'")
    parser.add_argument("--verbosity", type=int, default=2, help="criproxy -v (default 2)")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to this long for other work on the machine to stop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(EXPERIMENTS)
    unknown = only - set(EXPERIMENTS)
    if unknown:
        sys.exit(f"unknown experiment(s): {', '.join(sorted(unknown))}")
    meta = collect_meta(args)
    meta["busy_before"] = wait_quiet(args.wait_quiet) if args.wait_quiet else machine_busy()
    bench = Bench(args, short_dir("cpb-"))
    results: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    steps: list[tuple[str, Callable[[], None]]] = [
        ("latency", lambda: exp_latency_fake(bench, results, targets)),
        ("throughput", lambda: exp_throughput(bench, results, targets)),
        ("alternate", lambda: exp_alternate(bench, results, targets)),
        ("fanout", lambda: exp_fanout(bench, results, targets)),
        ("node", lambda: exp_node(bench, results, targets)),
        ("isolation", lambda: exp_isolation(bench, results, targets)),
    ]
    started = time.monotonic()
    try:
        for name, step in steps:
            if name not in only:
                continue
            print(f"[{time.monotonic() - started:5.0f}s] {name} ...", file=sys.stderr, flush=True)
            meta.setdefault("loadavg", {})[name] = os.getloadavg()[0]
            try:
                step()
            except Exception:
                import traceback
                results.setdefault("errors", {})[name] = traceback.format_exc()
                print(traceback.format_exc(), file=sys.stderr)
            if name == "alternate":
                _drop_state(bench)
        _drop_state(bench)
        if not args.no_containerd and only & {"latency", "alternate"}:
            print(f"[{time.monotonic() - started:5.0f}s] containerd ...", file=sys.stderr,
                  flush=True)
            try:
                exp_containerd(bench, results, targets, only)
            except Exception:
                import traceback
                results.setdefault("errors", {})["containerd"] = traceback.format_exc()
                print(traceback.format_exc(), file=sys.stderr)
    finally:
        bench.close()
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["duration_s"] = time.monotonic() - started
    text = report(meta, results, targets)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in meta["args"].items()}
    (args.out / f"{stamp}.json").write_text(json.dumps(
        {"meta": meta, "results": results, "targets": targets}, indent=1, default=str))
    (args.out / f"{stamp}.txt").write_text(text + "\n")
    print(f"\nwritten: {args.out / stamp}.json (and .txt); took {meta['duration_s']:.0f}s")
    missed = [t for t in targets if not t["pass"]]
    return 1 if (args.strict and missed) else 0


def _drop_state(bench: Bench) -> None:
    state = bench.state
    if state is None:
        return
    if state["proxy"] in bench.proxies:
        bench.stop_proxy(state["proxy"])
    if state["fake"] in bench.fakes:
        bench.stop_fake(state["fake"])
    bench.state = None


if __name__ == "__main__":
    sys.exit(main())
