#!/usr/bin/env python3
"""The kubelet-like replay through two criproxy trees over the same two runtimes, in
interleaved rounds: what the foreign-claims filter (issue 30) costs a node.

    git worktree add --detach /tmp/cl-before 87d2f13; git worktree add --detach /tmp/cl-after HEAD
    .venv/bin/python bench/node/claims_ab.py --tree before=/tmp/cl-before --tree after=/tmp/cl-after
        [--pods 110] [--per-pod 3] [--changed 2] [--seconds 40] [--rounds 4] [--json OUT]

Two fake runtimes (bench/common/fake.py), half the pods on each (the primary and
`alt.cloud`), filled directly as kubelet would (bench/common/populate.py). Every tree
runs as its own criproxy over both, all at once; each round replays
bench/common/kubelet.py (figure 5's mix: a relist every second, --changed pods'
GetPodStatus a second, Status, the stats Lists) through each tree in turn, the
order alternating from round to round (A B, B A, ...). CPU is each process's threads'
schedstat run time (front, workers) over the replay, as % of a core and µs per call
that reached it (the front: every replay call; a worker: the calls to its runtime,
fan-out Lists counting once per runtime). After the first relist each runtime owns
the pods it lists (record/owners.py), so a tree with the filter has it on: the
script prints each tree's owners table (pod-owners.msgpack) to show it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgpack  # noqa: E402

from bench.common import procstat, rig  # noqa: E402
from bench.common.populate import populate  # noqa: E402
from bench.suite import run  # noqa: E402
from tests.support.harness import process_tree  # noqa: E402

# Calls of the replay that reach only one runtime (the rest fan out to both).
BY_ID = ("PodSandboxStatus", "ContainerStatus", "Status", "ImageFsInfo")


def schedstat(root: int) -> dict[str, float]:
    """CPU seconds of each process of the tree by role, from every live thread's
    schedstat (nanoseconds: utime+stime are sampled at 10 ms ticks, which at 1-2 % of
    a core over 30 s swing by a fifth)."""
    used: dict[str, float] = {}
    for pid in process_tree(root):
        try:
            total = sum(int((task / "schedstat").read_text().split()[0])
                        for task in Path(f"/proc/{pid}/task").iterdir())
            role = procstat.role(pid, root)
        except OSError:
            continue
        used[role] = used.get(role, 0.0) + total / 1e9
    return used


def replay(proxy, seconds: float, changed: int) -> tuple[dict, dict[str, float], float]:
    proc = subprocess.Popen(
        [sys.executable, str(rig.COMMON / "kubelet.py"), "--target", rig.target(proxy.listen),
         "--seconds", str(seconds), "--changed", str(changed)],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # "started"
    started, before = time.monotonic(), schedstat(proxy.proc.pid)
    time.sleep(seconds - 0.1)
    after, elapsed = schedstat(proxy.proc.pid), time.monotonic() - started
    out, _ = proc.communicate()
    calls = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return calls, {role: after[role] - before.get(role, 0.0) for role in after}, elapsed


def owners_table(proxy) -> dict[str, int]:
    path = proxy.rundir / "pod-owners.msgpack"
    if not path.exists():
        return {}
    table = msgpack.unpackb(path.read_bytes(), raw=False)["owners"]
    counts: dict[str, int] = {}
    for entry in table.values():
        counts[entry[0] or "primary"] = counts.get(entry[0] or "primary", 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                        help="a criproxy source tree (a worktree of some commit)")
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--per-pod", type=int, default=3)
    parser.add_argument("--changed", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--verbosity", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    bench = rig.Bench(run.parse_args([f"--verbosity={args.verbosity}"]), run.short_dir("clab-"))
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    try:
        primary, named = bench.fake("ab-a"), bench.fake("ab-b")
        half = args.pods // 2
        populate(primary.socket, args.pods - half, args.per_pod)
        populate(named.socket, half, args.per_pod, first=args.pods - half)
        connect = f"{primary.socket},{rig.ALT}:{named.socket}"
        proxies = {name: bench.proxy(name, connect, ["primary", rig.ALT], repo=Path(tree))
                   for name, tree in trees.items()}
        time.sleep(2.0)
        rows: dict[str, list[dict]] = {name: [] for name in trees}
        order = list(trees)
        for number in range(args.rounds):
            for name in order if number % 2 == 0 else order[::-1]:
                calls, cpu, elapsed = replay(proxies[name], args.seconds, args.changed)
                total = sum(c["calls"] for c in calls.values())
                errors = sum(c["errors"] for c in calls.values())
                to_each = sum(c["calls"] for m, c in calls.items() if m not in BY_ID)
                by_id = total - to_each
                row = {"round": number, "elapsed": elapsed, "calls": total, "errors": errors,
                       "pct": {r: 100 * s / elapsed for r, s in cpu.items()},
                       "us_front": 1e6 * cpu.get("front", 0.0) / total,
                       # every fan-out call reaches both workers; by-id ones one of them
                       "us_workers": 1e6 * sum(s for r, s in cpu.items() if r.startswith("worker"))
                       / (2 * to_each + by_id),
                       "p50_ms": {m: c["p50_ms"] for m, c in calls.items()},
                       "loadavg": Path("/proc/loadavg").read_text().split()[0]}
                rows[name].append(row)
                pct = "  ".join(f"{r} {v:.2f}" for r, v in sorted(row["pct"].items()))
                print(f"round {number} {name:<8} {total} calls ({errors} errors)  % of a core: "
                      f"{pct}  total {sum(row['pct'].values()):.2f}  µs/call front "
                      f"{row['us_front']:.0f} workers {row['us_workers']:.0f}  "
                      f"load {row['loadavg']}", flush=True)
        owners = {name: owners_table(p) for name, p in proxies.items()}
        claims = {name: [(r["label"], r.get("foreign_claims")) for r in p.status()["runtimes"]]
                  for name, p in proxies.items()}
    finally:
        bench.close()

    print(f"\n{args.pods} pods x {args.per_pod} containers, half on each runtime; replay "
          f"--changed {args.changed}, {args.rounds} rounds of {args.seconds:.0f} s per tree; "
          f"load average at start {' '.join(load_start)}, at end "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print("owners table per tree: " + "; ".join(f"{n}: {o or 'none'}" for n, o in owners.items()))
    print("foreign claims counted: " + "; ".join(f"{n}: {c}" for n, c in claims.items()))
    print(f"{'tree':<8} {'front %':>18} {'workers %':>18} {'total %':>18} "
          f"{'front µs/call':>20} {'worker µs/call':>20}")

    def cell(values: list[float], digits: int) -> str:
        return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    for name, tree_rows in rows.items():
        front = [r["pct"].get("front", 0.0) for r in tree_rows]
        workers = [sum(v for k, v in r["pct"].items() if k.startswith("worker")) for r in tree_rows]
        total = [sum(r["pct"].values()) for r in tree_rows]
        print(f"{name:<8} {cell(front, 2):>18} {cell(workers, 2):>18} {cell(total, 2):>18} "
              f"{cell([r['us_front'] for r in tree_rows], 0):>20} "
              f"{cell([r['us_workers'] for r in tree_rows], 0):>20}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "load_start": load_start, "owners": owners, "rows": rows},
            indent=1))


if __name__ == "__main__":
    main()
