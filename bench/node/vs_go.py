#!/usr/bin/env python3
"""criproxy beside the Go original (issue 26), over the same fake runtimes, in one run.

    .venv/bin/python bench/node/vs_go.py [--go ../shared/anchors/criproxy-go] [--baseline DIR]
                                         [--idle-seconds 60] [--replay-seconds 30] [--rounds 2]
                                         [--call-seconds 24] [--json OUT]

Two fake runtimes (bench/common/fake.py) serve CRI v1 and v1alpha2 (the Go original speaks
v1alpha2 only), 55 pods of 3 containers each. Every proxy serves both: the primary
and `alt.cloud`. The proxies: `criproxy` (this tree), `criproxy@base` (--baseline
DIR, another source tree, e.g. `git archive OLD | tar -x -C DIR`: before/after in
the same run) and `go` (--go PATH; left out when the binary is not there: the
rest runs).

- idle: every proxy up at once, no calls, --idle-seconds; CPU from
  /proc/PID/task/*/schedstat (nanoseconds; utime+stime ticks are 10 ms, too coarse
  for 0.05 %), per process; PSS from smaps_rollup at its end.
- replay: bench/common/kubelet.py (v1alpha2 names, no ListPodSandboxStats: the Go original
  has none), --rounds rounds of --replay-seconds per proxy, interleaved (the order
  alternates from round to round); CPU of the proxy's whole tree (utime+stime),
  PSS at the end of the round.
- calls: Version, one client and 16 clients (bench/common/loadgen.py, the same client
  for every target, its jobs alternated in rounds), direct to the primary fake and
  through each proxy: one-client p50 overhead over direct, 16-client calls/s.

Prints the figures, the ratios to Go's and the issue's targets (benchmark
targets, not tests): replay CPU <= 2x Go's, one-client overhead <= 2.5x Go's,
16-client calls/s >= 50 % of Go's, idle <= 0.05 % of a core.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.common import procstat, rig  # noqa: E402
from bench.common.populate import populate  # noqa: E402
from cri_api.v1 import api_pb2 as pb  # noqa: E402
from tests.support.fakeruntime import READY_MESSAGE, FakeRuntime  # noqa: E402
from tests.support.harness import process_tree, short_dir, start_proxy  # noqa: E402

GO_DEFAULT = REPO.parent / "shared" / "anchors" / "criproxy-go"
VERSION = "/runtime.v1alpha2.RuntimeService/Version"
ALT = rig.ALT


# ------------------------------------------------------------------ the processes


def start_fake(base: Path, name: str) -> FakeRuntime:
    socket, log_path = base / f"{name}.sock", base / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(rig.COMMON / "fake.py"), "--socket", str(socket), "--journal",
             os.devnull, "--name", name, "--cri-versions", "v1,v1alpha2"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while READY_MESSAGE.encode() not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fake {name} did not start:\n{log_path.read_text()}")
        time.sleep(0.02)
    return FakeRuntime(name, socket, Path(os.devnull), log_path, proc)


class GoProxy:
    """The Go original: one process, no supervisor."""

    def __init__(self, binary: Path, connect: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.listen = workdir / "criproxy-go.sock"
        self.log_path = workdir / "criproxy-go.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "-connect", connect, "-listen", str(self.listen), "-v", "0",
                 "-logtostderr"], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        wait_answering(self.listen, self.proc, self.log_path)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_answering(socket: Path, proc: subprocess.Popen, log_path: Path) -> None:
    import grpc
    deadline = time.monotonic() + 30
    while True:
        try:
            with grpc.insecure_channel(rig.target(socket)) as channel:
                channel.unary_unary(VERSION)(pb.VersionRequest().SerializeToString(), timeout=2)
            return
        except grpc.RpcError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{socket} does not answer:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)


# A process with nothing but what every criproxy process but supervisord holds: a
# grpc.aio server on a unix socket and a grpc.aio channel, watched for state
# changes as a worker watches its runtime's. Its idle CPU is grpc core's own
# (its timer and thread-pool threads): the floor of an idle Python gRPC process.
_GRPC_FLOOR = """
import asyncio, sys
import grpc, grpc.aio
async def main():
    server = grpc.aio.server()
    server.add_insecure_port("unix:" + sys.argv[1])
    await server.start()
    channel = grpc.aio.insecure_channel("unix:" + sys.argv[2])
    await channel.channel_ready()
    print("ready", flush=True)
    while True:
        state = channel.get_state(try_to_connect=True)
        await channel.wait_for_state_change(state)
asyncio.run(main())
"""


class GrpcFloor:
    def __init__(self, workdir: Path, runtime: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _GRPC_FLOOR, str(workdir / "floor.sock"), str(runtime)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ------------------------------------------------------------------ measuring


def tree_schedstat(root: int) -> dict[int, float]:
    """CPU seconds (ns resolution) of every live thread of the tree, summed per process."""
    out: dict[int, float] = {}
    for pid in process_tree(root):
        total = 0
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue
        out[pid] = total / 1e9
    return out


def tree_pss(root: int) -> dict[str, float]:
    sample = procstat.TreeSample(root)
    per: dict[str, float] = {}
    for pid, (_rss, pss) in sample.memory.items():
        per[sample.roles[pid]] = per.get(sample.roles[pid], 0.0) + pss / 1024
    return per


def roles(root: int) -> dict[int, str]:
    return procstat.TreeSample(root).roles


def measure_idle(proxies: dict[str, Any], seconds: float,
                 floor: GrpcFloor | None = None) -> dict[str, Any]:
    roots = {name: p.proc.pid for name, p in proxies.items()}
    if floor is not None:
        roots["grpc floor"] = floor.proc.pid
    before = {name: tree_schedstat(root) for name, root in roots.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    out = {}
    for name, root in roots.items():
        after = tree_schedstat(root)
        names = roles(root)
        per = {}
        for pid, seconds_used in after.items():
            role = name if name in ("go", "grpc floor") else names.get(pid, str(pid))
            per[role] = per.get(role, 0.0) + 100 * (seconds_used - before[name].get(pid, 0.0)) / elapsed
        pss = tree_pss(root)
        if name in ("go", "grpc floor"):
            pss = {name: sum(pss.values())}
        out[name] = {"cpu_pct": sum(per.values()), "per_process_pct": per,
                     "pss_mb": sum(pss.values()), "pss_per_process_mb": pss, "seconds": elapsed}
    return out


def replay_round(proxy: Any, seconds: float) -> dict[str, Any]:
    root = proxy.proc.pid
    replay = subprocess.Popen(
        [sys.executable, str(rig.COMMON / "kubelet.py"), "--target", rig.target(proxy.listen),
         "--seconds", str(seconds), "--api", "v1alpha2", "--skip", "ListPodSandboxStats"],
        stdout=subprocess.PIPE, text=True)
    assert replay.stdout is not None
    replay.stdout.readline()  # "started"
    before = procstat.TreeSample(root)
    time.sleep(max(0.0, seconds - 0.1))
    after = procstat.TreeSample(root)
    out, _ = replay.communicate()
    calls = json.loads(out.strip().splitlines()[-1])
    elapsed = after.taken - before.taken
    used = sum(procstat.cpu_between(before, after).values())
    return {"cpu_pct": 100 * used / elapsed, "pss_mb": after.total_memory_mb()[1],
            "calls": sum(c["calls"] for c in calls.values()),
            "errors": sum(c["errors"] for c in calls.values())}


def measure_replays(proxies: dict[str, Any], seconds: float, rounds: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in proxies}
    order = list(proxies)
    for index in range(rounds):
        for name in (order if index % 2 == 0 else order[::-1]):
            rows[name].append(replay_round(proxies[name], seconds))
            time.sleep(2)
    out = {}
    for name, runs in rows.items():
        cpus = sorted(r["cpu_pct"] for r in runs)
        out[name] = {"cpu_pct": cpus[len(cpus) // 2] if len(cpus) % 2 else
                     sum(cpus[len(cpus) // 2 - 1:len(cpus) // 2 + 1]) / 2,
                     "cpu_rounds_pct": [r["cpu_pct"] for r in runs],
                     "pss_mb": max(r["pss_mb"] for r in runs),
                     "calls": sum(r["calls"] for r in runs),
                     "errors": sum(r["errors"] for r in runs)}
    return out


def measure_calls(direct: Path, proxies: dict[str, Any], seconds: float) -> dict[str, Any]:
    request = pb.VersionRequest()
    targets = {"direct": direct, **{name: p.listen for name, p in proxies.items()}}
    groups = []
    for clients in (1, 16):
        group = []
        for name, socket in targets.items():
            job = rig.job(f"{name}@{clients}", rig.target(socket), "Version", request,
                          seconds, concurrency=clients)
            job["method"] = VERSION
            group.append(job)
        groups.append(group)
    results = rig.loadgen(groups, rounds=4)
    out: dict[str, Any] = {}
    for name in targets:
        one, many = results[f"{name}@1"], results[f"{name}@16"]
        out[name] = {"p50_ms_1": one["p50_ms"], "p99_ms_1": one["p99_ms"],
                     "calls_per_s_16": many["calls_per_s"],
                     "errors": one["errors"] + many["errors"]}
    for name in proxies:
        out[name]["overhead_p50_ms"] = out[name]["p50_ms_1"] - out["direct"]["p50_ms_1"]
    return out


# ------------------------------------------------------------------ the report


def report(results: dict[str, Any]) -> str:
    idle, replay, calls = results["idle"], results["replay"], results["calls"]
    names = list(idle)
    lines = [f"criproxy beside the Go original: two fake runtimes, {results['pods']} pods x 3 "
             "containers each; same run, interleaved", ""]
    header = f"{'figure':<44}" + "".join(f"{n:>16}" for n in names)
    lines.append(header)

    def row(label: str, values: list[float], fmt: str) -> None:
        lines.append(f"{label:<44}" + "".join(f"{format(v, fmt):>16}" for v in values))

    row(f"idle CPU, % of a core ({idle[names[0]]['seconds']:.0f} s)",
        [idle[n]["cpu_pct"] for n in names], ".3f")
    floor = results.get("grpc_floor_idle")
    if floor is not None:
        lines.append(f"{'':<44}(one bare grpc.aio process, server + channel, idle: "
                     f"{floor['cpu_pct']:.3f} %, PSS {floor['pss_mb']:.1f} MB)")
    row("idle PSS, MB (whole tree)", [idle[n]["pss_mb"] for n in names], ".1f")
    row(f"replay CPU, % of a core (median of {len(replay[names[0]]['cpu_rounds_pct'])})",
        [replay[n]["cpu_pct"] for n in names], ".2f")
    row("replay PSS, MB (whole tree, peak)", [replay[n]["pss_mb"] for n in names], ".1f")
    row("replay calls / errors", [replay[n]["calls"] for n in names], ".0f")
    row("", [replay[n]["errors"] for n in names], ".0f")
    row(f"Version, 1 client, p50 ms (direct {calls['direct']['p50_ms_1']:.2f})",
        [calls[n]["p50_ms_1"] for n in names], ".2f")
    row("  overhead over direct, ms", [calls[n]["overhead_p50_ms"] for n in names], ".2f")
    row(f"Version, 16 clients, calls/s (direct {calls['direct']['calls_per_s_16']:.0f})",
        [calls[n]["calls_per_s_16"] for n in names], ".0f")
    lines.append("")
    lines.append("per process, idle CPU % / PSS MB:")
    for n in names:
        parts = ", ".join(f"{role} {idle[n]['per_process_pct'].get(role, 0.0):.3f}% / "
                          f"{mb:.1f}" for role, mb in sorted(idle[n]["pss_per_process_mb"].items()))
        lines.append(f"  {n}: {parts}")
    lines.append("")
    mine = "criproxy"
    lines.append("targets (benchmark, not tests):")
    lines.append(_verdict("idle CPU <= 0.05 % of a core", idle[mine]["cpu_pct"], 0.05, "<="))
    lines.append(_verdict("idle PSS <= 60 MB", idle[mine]["pss_mb"], 60, "<="))
    if "go" in names:
        ratio = replay[mine]["cpu_pct"] / max(replay["go"]["cpu_pct"], 1e-9)
        lines.append(_verdict("replay CPU / Go's <= 2", ratio, 2, "<="))
        ratio = calls[mine]["overhead_p50_ms"] / max(calls["go"]["overhead_p50_ms"], 1e-9)
        lines.append(_verdict("one-client overhead / Go's <= 2.5", ratio, 2.5, "<="))
        ratio = calls[mine]["calls_per_s_16"] / max(calls["go"]["calls_per_s_16"], 1e-9)
        lines.append(_verdict("16-client calls/s / Go's >= 0.5", ratio, 0.5, ">="))
        lines.append(f"{'':6}idle PSS / Go's: {idle[mine]['pss_mb'] / idle['go']['pss_mb']:.1f}x; "
                     f"replay PSS / Go's: {replay[mine]['pss_mb'] / replay['go']['pss_mb']:.1f}x")
    else:
        lines.append("      (no Go binary: the ratios to Go's are not measured)")
    return "\n".join(lines)


def _verdict(label: str, value: float, limit: float, op: str) -> str:
    ok = value <= limit if op == "<=" else value >= limit
    return f"{'PASS' if ok else 'MISS':<6}{label:<40} {value:.3f}"


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--go", type=Path, default=GO_DEFAULT, help="the Go original's binary")
    parser.add_argument("--baseline", type=Path, help="another criproxy source tree")
    parser.add_argument("--pods", type=int, default=55, help="pods on each runtime")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--replay-seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--call-seconds", type=float, default=24,
                        help="per job, over loadgen's 4 rounds")
    parser.add_argument("--proxy-args", default="", help="extra flags for the criproxy trees")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--no-floor", action="store_true",
                        help="leave out the bare grpc.aio process measured while idle")
    args = parser.parse_args()

    base = short_dir("vsgo-")
    fakes: list[FakeRuntime] = []
    proxies: dict[str, Any] = {}
    floor: GrpcFloor | None = None
    try:
        fakes = [start_fake(base, "a"), start_fake(base, "b")]
        populate(fakes[0].socket, args.pods, 3)
        populate(fakes[1].socket, args.pods, 3, first=args.pods)
        connect = f"{fakes[0].socket},{ALT}:{fakes[1].socket}"
        trees = {"criproxy": REPO}
        if args.baseline is not None:
            trees["criproxy@base"] = args.baseline.resolve()
        for name, repo in trees.items():
            workdir = base / name.replace("@", "-")
            workdir.mkdir()
            proxies[name] = start_proxy(connect, *args.proxy_args.split(), workdir=workdir,
                                        wait_for=["primary", ALT], verbosity=2, repo=repo)
        if args.go.exists():
            proxies["go"] = GoProxy(args.go, connect, base / "go")
        else:
            print(f"no Go binary at {args.go}: measuring criproxy alone", file=sys.stderr)
        if not args.no_floor:
            floor = GrpcFloor(base, fakes[0].socket)
        time.sleep(5)  # start-up settles
        results: dict[str, Any] = {"pods": args.pods, "proxy_args": args.proxy_args,
                                   "loadavg_start": os.getloadavg()}
        results["idle"] = measure_idle(proxies, args.idle_seconds, floor)
        if floor is not None:
            results["grpc_floor_idle"] = results["idle"].pop("grpc floor")
            floor.stop()
            floor = None
        results["replay"] = measure_replays(proxies, args.replay_seconds, args.rounds)
        results["calls"] = measure_calls(fakes[0].socket, proxies, args.call_seconds)
        results["loadavg_end"] = os.getloadavg()
        text = report(results)
        print(text)
        print(f"(load average at the start {results['loadavg_start'][0]:.1f}, "
              f"at the end {results['loadavg_end'][0]:.1f})")
        if args.json is not None:
            args.json.write_text(json.dumps({**results, "text": text}, indent=1))
    finally:
        if floor is not None:
            floor.stop()
        for proxy in proxies.values():
            try:
                proxy.stop()
            except Exception as err:  # noqa: BLE001 - stop the others anyway
                print(f"stopping a proxy: {err}", file=sys.stderr)
        for fake in fakes:
            fake.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
