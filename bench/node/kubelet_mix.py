#!/usr/bin/env python3
"""criproxy under kubelet's real call mix (issue 31), beside the floor of the same mix,
for one or more criproxy trees, in interleaved rounds.

    .venv/bin/python bench/node/kubelet_mix.py [--before a9a465c] [--no-working]
        [--tree NAME=DIR ...] [--pods 60,110] [--verbosity 0,2] [--metrics on,off]
        [--seconds 40] [--rounds 4] [--get-pod-status 0] [--log-manager spread|bunched]
        [--json OUT]

Two fake runtimes (bench/common/fake.py), N pods of one started container each
(bench/common/populate.py: kubelet's labels and annotations), the first half on
the primary, the second on `alt.cloud`, their sandboxes carrying the
`kubernetes.io/target-runtime: alt.cloud` annotation a pod placed there through
criproxy carries. Over them, all at once:

- `floor`: the bare chain of bench/calls/floor.py extended to two runtimes: a
  grpc.aio server, one ZeroMQ hop to each of two bare aio workers (floor.py's
  `bare_worker`), a grpc.aio client each; no logic. A List goes to both workers and
  their answers are joined as bytes (two encoded messages of one type, joined,
  are their merge); a call by id goes to the worker whose runtime's ids it starts
  with (the fakes' ids start with their name); Version and Status go to the primary.
  So it makes exactly the worker round trips criproxy makes, and nothing else.
- a criproxy per tree (the working tree; --before SHA: that commit, in a git
  worktree removed at the end; --tree NAME=DIR: any other tree), verbosity
  (--verbosity) and metrics setting (--metrics: on = `-metricsAddress 127.0.0.1:0`,
  off = `-metricsAddress off`).

Each round replays bench/common/kubelet_mix.py (--seconds) through every target in
turn, the order reversed every other round (A B C, C B A, ...), so that load from
other work on the machine hits all alike. CPU is each process's threads'
schedstat run time over the replay (ns; utime+stime ticks are 10 ms, too coarse
at 1-3 % of a core), as % of one core: criproxy's supervisord, front and each
worker; the floor's front and two workers. PSS (smaps_rollup) of the whole tree at
the end of each round. Printed: the median and the range over the rounds, the
ratio to the floor and, with two trees, the ratio of each tree to the first
(per round, then the median), the load average, and issue 31's targets.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from bench.calls.floor import BareLink, serve_forwarded, wait_for_bare_front  # noqa: E402

ALT = "alt.cloud"
PRIMARY_FAKE, ALT_FAKE = "pri", "alt"   # fake names: their ids start with "<name>-"
TARGET_RUNTIME = "kubernetes.io/target-runtime"

# What criproxy fans out to every runtime (criproxy/front/routing.py, docs/routing.md),
# among the calls the mix makes.
FAN_OUT = frozenset({"ListPodSandbox", "ListContainers", "ListContainerStats",
                     "ListPodSandboxStats", "ListImages", "ImageFsInfo"})
# Calls by id (the id is the request's field 1).
BY_ID = frozenset({"ContainerStatus", "PodSandboxStatus"})


# ------------------------------------------------------------------ the bare chain, two runtimes


async def bare_two_runtime_front(listen: str, primary: str, alt: str) -> None:
    """floor.py's bare front, with a second worker: Lists to both, by-id calls by the
    id's first bytes, the rest to the primary. No decoding, no rewriting."""
    primary_link, alt_link = BareLink(primary), BareLink(alt)
    alt_start = (ALT_FAKE + "-").encode()

    async def fan_out(path: str, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        deadline = context.time_remaining()
        answers = await asyncio.gather(primary_link.ask(path, body, deadline),
                                       alt_link.ask(path, body, deadline))
        return b"".join(answers)  # protobuf: joined encodings of one message type merge

    async def by_id(path: str, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # body: tag (1 byte), length (1 byte: ids are short), the id
        link = alt_link if body[2:2 + len(alt_start)] == alt_start else primary_link
        return await link.ask(path, body, context.time_remaining())

    async def to_primary(path: str, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await primary_link.ask(path, body, context.time_remaining())

    def route(path: str, body: bytes, context: grpc.aio.ServicerContext) -> Awaitable[bytes]:
        name = path.rsplit("/", 1)[1]
        forward = fan_out if name in FAN_OUT else by_id if name in BY_ID else to_primary
        return forward(path, body, context)

    await serve_forwarded(listen, route)


# ------------------------------------------------------------------ targets


@dataclass
class Target:
    """Something the replay calls: a criproxy (a process tree under supervisord) or the
    floor (three processes of ours)."""
    name: str
    listen: Path
    root: int | None = None                     # criproxy: supervisord's pid
    pids: dict[str, int] = field(default_factory=dict)  # the floor's processes by role

    def processes(self) -> dict[int, str]:
        """pid -> role, now."""
        if self.root is None:
            return {pid: role for role, pid in self.pids.items()}
        from bench.common import procstat
        from tests.support.harness import process_tree
        return {pid: worker_role(procstat.role(pid, self.root)) for pid in process_tree(self.root)}


def worker_role(role: str) -> str:
    """criproxy's worker titles name their runtime's label; give them the floor's names."""
    if role.startswith("worker-"):
        return "worker-alt" if ALT in role else "worker-primary"
    return role


def cpu_by_role(target: Target) -> dict[str, float]:
    """CPU seconds of each process of the target, summed over its live threads' schedstat."""
    used: dict[str, float] = {}
    for pid, role in target.processes().items():
        try:
            ns = sum(int((task / "schedstat").read_text().split()[0])
                     for task in Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        used[role] = used.get(role, 0.0) + ns / 1e9
    return used


def pss_mb(target: Target) -> float:
    from bench.common import procstat
    total = 0
    for pid in target.processes():
        with contextlib.suppress(OSError):
            total += procstat.memory_kb(pid)[1]
    return total / 1024


def start_floor(base: Path, primary_socket: Path, alt_socket: Path,
                started: list[subprocess.Popen]) -> Target:
    """The bare front (this file, --role front) and two bare aio workers (floor.py's)."""
    floor_py = str(REPO / "bench" / "calls" / "floor.py")
    endpoints = {"worker-primary": f"ipc://{base}/floor-pri.ipc",
                 "worker-alt": f"ipc://{base}/floor-alt.ipc"}
    pids = {}
    for role, runtime in (("worker-primary", primary_socket), ("worker-alt", alt_socket)):
        proc = subprocess.Popen([sys.executable, floor_py, "--role", "worker",
                                 endpoints[role], str(runtime)])
        started.append(proc)
        pids[role] = proc.pid
    listen = base / "floor.sock"
    proc = subprocess.Popen([sys.executable, __file__, "--role", "front", str(listen),
                             endpoints["worker-primary"], endpoints["worker-alt"]])
    started.append(proc)
    pids["front"] = proc.pid
    wait_for_bare_front(listen)
    return Target("floor", listen, pids=pids)


def start_criproxy(bench: Any, tree_name: str, tree: Path, connect: str, verbosity: int,
                   metrics: str) -> Target:
    from tests.support.harness import start_proxy
    name = f"{tree_name} v{verbosity} metrics {metrics}"
    workdir = bench.base / f"px-{len(bench.proxies)}"
    workdir.mkdir()
    address = "127.0.0.1:0" if metrics == "on" else "off"
    proxy = start_proxy(connect, "-metricsAddress", address, workdir=workdir,
                        wait_for=["primary", ALT], verbosity=verbosity, repo=tree)
    bench.proxies.append(proxy)  # stopped by bench.close()
    return Target(name, proxy.listen, root=proxy.proc.pid)


# ------------------------------------------------------------------ a round


def replay(target: Target, seconds: float, get_pod_status: float,
           log_manager: str = "spread") -> dict[str, Any]:
    """One run of the mix through `target`: CPU % of a core by role, PSS, the calls."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "common" / "kubelet_mix.py"),
         "--target", f"unix://{target.listen}", "--seconds", str(seconds),
         "--get-pod-status", str(get_pod_status), "--log-manager", log_manager],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "started":
        proc.kill()
        raise RuntimeError(f"the replay through {target.name} did not start")
    before, started = cpu_by_role(target), time.monotonic()
    proc.stdout.readline()  # "done"
    after, elapsed = cpu_by_role(target), time.monotonic() - started
    pss = pss_mb(target)
    out, _ = proc.communicate()
    calls = json.loads(out.strip().splitlines()[-1])
    return {"elapsed": elapsed, "pss_mb": pss, "calls": calls,
            "pct": {role: 100 * (after[role] - before.get(role, 0.0)) / elapsed for role in after},
            "loadavg": os.getloadavg()[0]}


def run_rounds(targets: list[Target], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    for target in targets:  # first calls: connections, owners tables, records
        replay(target, args.warmup, args.get_pod_status, args.log_manager)
    rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for number in range(args.rounds):
        for target in targets if number % 2 == 0 else targets[::-1]:
            row = replay(target, args.seconds, args.get_pod_status, args.log_manager)
            rows[target.name].append(row)
            per = "  ".join(f"{r} {v:.2f}" for r, v in sorted(row["pct"].items()))
            errors = sum(c["errors"] for c in row["calls"].values())
            print(f"  round {number} {target.name:<28} total {sum(row['pct'].values()):5.2f} % "
                  f"({per})  PSS {row['pss_mb']:.1f} MB  errors {errors}  "
                  f"load {row['loadavg']:.2f}", flush=True)
    return rows


# ------------------------------------------------------------------ the report


def spread(values: list[float], digits: int = 2) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def total(row: dict[str, Any]) -> float:
    return sum(row["pct"].values())


def per_round_ratio(rows: list[dict], base: list[dict]) -> list[float]:
    """Each round's total over the base's total in the same round: drift cancels."""
    return [total(a) / total(b) for a, b in zip(rows, base) if total(b) > 0]


def call_rates(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    return ", ".join(f"{method} {c['calls'] / first['elapsed']:.2f}"
                     for method, c in sorted(first["calls"].items()))


def report(pods: int, rows: dict[str, list[dict[str, Any]]], trees: list[str],
           load: tuple[float, float]) -> list[str]:
    roles = ["supervisord", "front", "worker-primary", "worker-alt"]
    lines = [f"{pods} pods (one container each, {pods - pods // 2} on the primary, {pods // 2} "
             f"on {ALT}); {len(rows['floor'])} rounds; load average {load[0]:.2f} at the start, "
             f"{load[1]:.2f} at the end",
             f"calls/s (floor's first round): {call_rates(rows['floor'])}",
             "CPU, % of one core: median (min-max) over the rounds; x floor and x first tree: "
             "median of per-round ratios",
             f"{'target':<28}" + "".join(f"{r:>20}" for r in roles)
             + f"{'total':>20}{'x floor':>10}{'x ' + trees[0] if len(trees) > 1 else '':>16}"
             + f"{'PSS MB':>20}"]
    floor = rows["floor"]
    for name, tree_rows in rows.items():
        cells = "".join(f"{spread([r['pct'].get(role, 0.0) for r in tree_rows]):>20}"
                        if any(role in r["pct"] for r in tree_rows) else f"{'-':>20}"
                        for role in roles)
        vs_floor = "" if name == "floor" else \
            f"{statistics.median(per_round_ratio(tree_rows, floor)):.2f}"
        vs_first = ""
        if len(trees) > 1 and name != "floor" and not name.startswith(trees[0] + " "):
            base = name.replace(name.split(" ", 1)[0], trees[0], 1)
            if base in rows:
                vs_first = f"{statistics.median(per_round_ratio(tree_rows, rows[base])):.2f}"
        lines.append(f"{name:<28}{cells}{spread([total(r) for r in tree_rows]):>20}"
                     f"{vs_floor:>10}{vs_first:>16}"
                     f"{spread([r['pss_mb'] for r in tree_rows], 1):>20}")
    errors = {n: sum(c["errors"] for r in rs for c in r["calls"].values()) for n, rs in rows.items()}
    lines.append("errors: " + ", ".join(f"{n} {e}" for n, e in errors.items()))
    lines += targets_judged(rows, trees)
    return lines


def targets_judged(rows: dict[str, list[dict[str, Any]]], trees: list[str]) -> list[str]:
    """Issue 31: <= 1.25 x the floor; with a before tree first: <= 0.60 x its CPU, PSS not above."""
    lines = ["issue 31's targets (benchmark, not tests):"]
    for name, tree_rows in rows.items():
        if name == "floor" or (len(trees) > 1 and name.startswith(trees[0] + " ")):
            continue
        ratio = statistics.median(per_round_ratio(tree_rows, rows["floor"]))
        lines.append(f"  {'PASS' if ratio <= 1.25 else 'MISS'}  {name}: {ratio:.2f} x floor "
                     "(<= 1.25)")
        base = name.replace(name.split(" ", 1)[0], trees[0], 1)
        if len(trees) > 1 and base in rows:
            cpu = statistics.median(per_round_ratio(tree_rows, rows[base]))
            pss = statistics.median(r["pss_mb"] for r in tree_rows)
            pss_base = statistics.median(r["pss_mb"] for r in rows[base])
            lines.append(f"  {'PASS' if cpu <= 0.60 else 'MISS'}  {name}: {cpu:.2f} x {base} "
                         "CPU (<= 0.60)")
            lines.append(f"  {'PASS' if pss <= pss_base else 'MISS'}  {name}: PSS {pss:.1f} MB, "
                         f"{base} {pss_base:.1f} MB (not above)")
    return lines


# ------------------------------------------------------------------ trees


@contextlib.contextmanager
def worktree(commit: str) -> Any:
    """A detached git worktree of `commit` in a temporary directory, removed at the end."""
    parent = Path(tempfile.mkdtemp(prefix="kmix-tree-"))
    path = parent / commit
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet",
                    str(path), commit], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                       check=False)
        shutil.rmtree(parent, ignore_errors=True)


def trees_asked(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Path]:
    """name -> source tree, in the order given: --before first (the base of the ratios)."""
    trees: dict[str, Path] = {}
    if args.before:
        trees[args.before] = stack.enter_context(worktree(args.before))
    for entry in args.tree:
        name, _, path = entry.partition("=")
        trees[name] = Path(path).resolve()
    if not args.no_working:
        trees["working"] = REPO
    if not trees:
        raise SystemExit("no criproxy tree to measure")
    return trees


# ------------------------------------------------------------------ main


def measure_pods(pods: int, trees: dict[str, Path], args: argparse.Namespace) -> tuple[list[str], dict]:
    from bench.common import rig
    from bench.common.populate import populate
    from bench.suite import run

    bench = rig.Bench(run.parse_args([]), run.short_dir("kmix-"))
    floor_procs: list[subprocess.Popen] = []
    try:
        primary = bench.fake(PRIMARY_FAKE, args.lists_in_any_order)
        alt = bench.fake(ALT_FAKE, args.lists_in_any_order)
        populate(primary.socket, pods - pods // 2, 1)
        populate(alt.socket, pods // 2, 1, first=pods - pods // 2,
                 annotations={TARGET_RUNTIME: ALT})
        targets = [start_floor(bench.base, primary.socket, alt.socket, floor_procs)]
        connect = f"{primary.socket},{ALT}:{alt.socket}"
        for (tree_name, tree), verbosity, metrics in itertools.product(
                trees.items(), args.verbosity, args.metrics):
            targets.append(start_criproxy(bench, tree_name, tree, connect, verbosity, metrics))
        time.sleep(3)  # start-up settles
        load_start = os.getloadavg()[0]
        print(f"{pods} pods: {len(targets)} targets, {args.rounds} rounds of {args.seconds:.0f} s",
              flush=True)
        rows = run_rounds(targets, args)
        lines = report(pods, rows, list(trees), (load_start, os.getloadavg()[0]))
        return lines, rows
    finally:
        for proc in floor_procs:
            proc.kill()
            proc.wait()
        bench.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="SHA", help="measure this commit too (a git worktree)")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                        help="another criproxy source tree to measure")
    parser.add_argument("--no-working", action="store_true", help="leave out the working tree")
    parser.add_argument("--pods", default="60,110")
    parser.add_argument("--verbosity", default="0,2")
    parser.add_argument("--metrics", default="on,off")
    parser.add_argument("--seconds", type=float, default=40, help="per round and target")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=6, help="seconds of replay first, per target")
    parser.add_argument("--get-pod-status", type=float, default=0.0, metavar="PER_S",
                        help="add kubelet's GetPodStatus of so many pods a second (churn)")
    parser.add_argument("--log-manager", choices=("spread", "bunched"), default="spread",
                        help="the log manager's ContainerStatus calls spread over its 10 s, or "
                             "one after another (as kubelet 1.32 makes them)")
    parser.add_argument("--lists-in-any-order", action="store_true",
                        help="the fakes answer their Lists' items in another order each "
                             "time, as containerd does (it lists from Go maps)")
    parser.add_argument("--json", type=Path, help="write every round here too")
    parser.add_argument("--role", choices=("front",), help=argparse.SUPPRESS)
    parser.add_argument("addresses", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.verbosity = [int(v) for v in str(args.verbosity).split(",")]
    args.metrics = str(args.metrics).split(",")
    if set(args.metrics) - {"on", "off"}:
        parser.error("--metrics takes on, off or on,off")
    return args


def main() -> None:
    args = parse_args()
    if args.role == "front":
        asyncio.run(bare_two_runtime_front(*args.addresses))
        return
    out: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "json"}}
    with contextlib.ExitStack() as stack:
        trees = trees_asked(args, stack)
        print("trees: " + ", ".join(f"{n} ({p})" for n, p in trees.items()), flush=True)
        lines: list[str] = []
        for pods in (int(p) for p in args.pods.split(",")):
            pod_lines, rows = measure_pods(pods, trees, args)
            out[str(pods)] = rows
            lines += pod_lines + [""]
    print("\n" + "\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({**out, "text": lines}, indent=1, default=str))


if __name__ == "__main__":
    main()
