"""Figures 5 and 6: what criproxy costs a node under a kubelet-like replay (CPU, memory),
and a healthy runtime's latency while another is frozen."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

from cri_api.v1 import api_pb2 as pb

from bench.common import procstat
from bench.common.populate import populate
from bench.common.rig import ALT, COMMON, Bench, job, loadgen, target
from bench.suite.report import judge
from tests.support.fakeruntime import FakeRuntime


# ------------------------------------------------------------------ 5. node cost


def exp_node(bench: Bench, results: dict, targets: list) -> None:
    pods, per_pod = bench.args.node_pods, 3
    named_pods = pods // 2
    primary, named = bench.fake("node-a"), bench.fake("node-b")
    populate(primary.socket, pods - named_pods, per_pod)
    populate(named.socket, named_pods, per_pod, first=pods - named_pods)
    proxy = bench.proxy("node", f"{primary.socket},{ALT}:{named.socket}", ["primary", ALT])
    root = proxy.proc.pid  # `criproxy`, which is supervisord; the front and workers are below
    idle_seconds = bench.scale(bench.args.idle_seconds)
    load_seconds = bench.args.node_seconds * (0.25 if bench.args.quick else 1.0)
    time.sleep(2.0)  # let start-up settle

    idle0 = procstat.TreeSample(root)
    time.sleep(idle_seconds)
    idle1 = procstat.TreeSample(root)

    replay = subprocess.Popen(
        [sys.executable, str(COMMON / "kubelet.py"), "--target", target(proxy.listen),
         "--seconds", str(load_seconds)], stdout=subprocess.PIPE, text=True)
    assert replay.stdout is not None
    replay.stdout.readline()  # "started": its first tick is being made now
    load0 = procstat.TreeSample(root)
    fakes0 = sum(procstat.cpu_seconds(f.proc.pid) for f in (primary, named))
    samples = []
    end = load0.taken + load_seconds - 0.1  # just after the last tick, before the replay exits
    while time.monotonic() < end:
        time.sleep(max(0.0, min(1.0, end - time.monotonic())))
        samples.append(procstat.TreeSample(root))
    load1 = samples[-1]
    fakes1 = sum(procstat.cpu_seconds(f.proc.pid) for f in (primary, named))
    out, _ = replay.communicate()
    elapsed = load1.taken - load0.taken

    idle_cpu = procstat.cpu_between(idle0, idle1)
    load_cpu = procstat.cpu_between(load0, load1)
    peak = max(samples, key=lambda s: s.total_memory_mb()[0])
    per_process = []
    for pid, role in sorted(load1.roles.items(), key=lambda kv: kv[1]):
        rss, pss = load1.memory[pid]
        per_process.append({"role": role, "pid": pid, "rss_mb": rss / 1024, "pss_mb": pss / 1024,
                            "idle_pct": 100 * idle_cpu.get(role, 0.0) / (idle1.taken - idle0.taken),
                            "load_pct": 100 * load_cpu.get(role, 0.0) / elapsed})
    rss, pss = load1.total_memory_mb()
    row = {"pods": pods, "containers": pods * per_pod, "named_pods": named_pods,
           "idle_seconds": idle1.taken - idle0.taken, "load_seconds": elapsed,
           "idle_cpu_pct": 100 * sum(idle_cpu.values()) / (idle1.taken - idle0.taken),
           "load_cpu_pct": 100 * sum(load_cpu.values()) / elapsed,
           "runtimes_cpu_pct": 100 * (fakes1 - fakes0) / elapsed,
           "rss_mb": rss, "pss_mb": pss, "peak_rss_mb": peak.total_memory_mb()[0],
           "peak_pss_mb": max(s.total_memory_mb()[1] for s in samples),
           "processes": per_process, "calls": _json_tail(out)}
    results["node"] = row
    targets.append(judge("cpu", row["load_cpu_pct"],
                         f"{elapsed:.0f}s of load; idle {row['idle_cpu_pct']:.2f}%"))
    targets.append(judge("rss", row["peak_rss_mb"],
                         f"peak; PSS {row['peak_pss_mb']:.0f} MB (shared pages counted once)"))
    bench.stop_proxy(proxy)
    bench.stop_fake(primary)
    bench.stop_fake(named)


def _json_tail(out: str) -> Any:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# ------------------------------------------------------------------ 6. isolation


@contextlib.contextmanager
def frozen(fake: FakeRuntime) -> Iterator[None]:
    fake.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        fake.proc.send_signal(signal.SIGCONT)


def exp_isolation(bench: Bench, results: dict, targets: list) -> None:
    healthy, hanging = bench.fake("iso-a"), bench.fake("iso-b")
    pods = populate(healthy.socket, 10, 1)
    populate(hanging.socket, 10, 1, first=10)
    proxy = bench.proxy("iso", f"{healthy.socket},{ALT}:{hanging.socket}", ["primary", ALT])
    block = max(2.0, bench.scale(3.0))  # fewer blocks when quick, but not too short ones
    blocks = 2 if bench.args.quick else 4
    request = pb.PodSandboxStatusRequest(pod_sandbox_id=pods[0].id)
    samples: dict[str, dict[str, list[float]]] = {"normal": {}, "frozen": {}}
    errors: dict[str, dict[str, int]] = {"normal": {}, "frozen": {}}
    # kubelet keeps calling both runtimes meanwhile; its calls to the frozen one hang.
    background = subprocess.Popen(
        [sys.executable, str(COMMON / "kubelet.py"), "--target", target(proxy.listen),
         "--seconds", str(blocks * 2 * (block + 4) + 10), "--changed", "4", "--timeout", "4"],
        stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        for _ in range(blocks):
            for phase in ("normal", "frozen"):
                with frozen(hanging) if phase == "frozen" else contextlib.nullcontext():
                    if phase == "frozen":
                        time.sleep(0.5)  # let calls to it pile up
                    raw = loadgen([[
                        dict(job("direct", target(healthy.socket), "PodSandboxStatus", request,
                                 block), samples=True),
                        dict(job("proxied", target(proxy.listen), "PodSandboxStatus", request,
                                 block), samples=True)]], rounds=2)
                for side, stats in raw.items():
                    samples[phase].setdefault(side, []).extend(stats["samples_ms"])
                    errors[phase][side] = errors[phase].get(side, 0) + stats["errors"]
                time.sleep(1.5)  # the thawed runtime works off its backlog
    finally:
        hanging.proc.send_signal(signal.SIGCONT)
        background.terminate()
        out, _ = background.communicate()
    rows = {phase: {side: pooled(values, errors[phase][side]) for side, values in sides.items()}
            for phase, sides in samples.items()}
    ratio = rows["frozen"]["proxied"]["p99_ms"] / rows["normal"]["proxied"]["p99_ms"]
    results["isolation"] = {"blocks": blocks, "block_seconds": block, **rows, "ratio": ratio,
                            "background": _json_tail(out)}
    targets.append(judge("isolation", ratio, "fake runtimes, PodSandboxStatus to the primary"))
    bench.stop_proxy(proxy)
    bench.stop_fake(healthy)
    bench.stop_fake(hanging)


def pooled(values_ms: list[float], errors: int) -> dict[str, Any]:
    from bench.common.loadgen import percentile
    ordered = sorted(values_ms)
    return {"calls": len(ordered), "errors": errors, "p50_ms": percentile(ordered, 50),
            "p99_ms": percentile(ordered, 99), "max_ms": ordered[-1] if ordered else float("nan")}
