"""Figures 1-4 against fake runtimes: latency, throughput, the alternate runtime and
fan-out; each records its rows in `results` and its verdicts in `targets`."""
from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2 as pb

from bench.common import procstat
from bench.common.populate import Pod, populate
from bench.common.rig import ALT, Bench, job, loadgen, target
from bench.suite.report import judge


def prefixed(runtime: str, object_id: str) -> str:
    return f"{runtime}__{object_id}" if runtime else object_id


# ------------------------------------------------------------------ 1. latency


def unary_jobs(prefix: str, pods: list[Pod], direct: str, proxied: str, seconds: float,
               runtime: str = "") -> list[list[dict]]:
    pod = pods[0]
    calls = [("Version", pb.VersionRequest(version="0.1.0"), pb.VersionRequest(version="0.1.0")),
             ("PodSandboxStatus", pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id),
              pb.PodSandboxStatusRequest(pod_sandbox_id=prefixed(runtime, pod.id))),
             ("ContainerStatus", pb.ContainerStatusRequest(container_id=pod.containers[0]),
              pb.ContainerStatusRequest(container_id=prefixed(runtime, pod.containers[0])))]
    return [[job(f"{prefix}/{name}/-/direct", direct, name, bare, seconds),
             job(f"{prefix}/{name}/-/proxied", proxied, name, shown, seconds)]
            for name, bare, shown in calls]


LISTS = (("ListPodSandbox", pb.ListPodSandboxRequest()),
         ("ListContainers", pb.ListContainersRequest(filter=pb.ContainerFilter())))


def list_jobs(prefix: str, size: int, targets: dict[str, str], seconds: float) -> list[list[dict]]:
    return [[job(f"{prefix}/{name}/{size}/{side}", where, name, request, seconds)
             for side, where in targets.items()] for name, request in LISTS]


def pairs(results: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Rows of direct vs proxied figures for the jobs named prefix/method/size/side."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for job_id, stats in results.items():
        parts = job_id.split("/")
        if parts[0] != prefix:
            continue
        row = rows.setdefault((parts[1], parts[2]), {"call": parts[1], "items": parts[2]})
        row[parts[3]] = stats
    out = []
    for row in rows.values():
        if "direct" in row and "proxied" in row:
            for q in ("p50", "p99"):
                row[f"overhead_{q}_ms"] = row["proxied"][f"{q}_ms"] - row["direct"][f"{q}_ms"]
        out.append(row)
    return out


def exp_latency_fake(bench: Bench, results: dict, targets: list) -> None:
    fake = bench.fake("lat")
    proxy = bench.proxy("lat", str(fake.socket), ["primary"])
    sides = {"direct": target(fake.socket), "proxied": target(proxy.listen)}
    pods: list[Pod] = []
    raw: dict[str, Any] = {}
    for size in bench.args.sizes:
        pods += populate(fake.socket, size - len(pods), 1, first=len(pods))
        groups = list_jobs("fake", size, sides, bench.scale(2.0))
        if size == bench.args.sizes[0]:
            groups = unary_jobs("fake", pods, sides["direct"], sides["proxied"],
                                bench.scale(3.0)) + groups
        raw.update(loadgen(groups))
    results["latency_fake"] = pairs(raw, "fake")
    unary = [r for r in results["latency_fake"] if r["items"] == "-"]
    worst = max(unary, key=lambda r: r["overhead_p50_ms"])
    targets.append(judge("overhead", worst["overhead_p50_ms"],
                         f"fake runtime, worst of {len(unary)} calls: {worst['call']}"))
    bench.state = {"fake": fake, "pods": pods, "proxy": proxy}


# ------------------------------------------------------------------ 2. throughput


def exp_throughput(bench: Bench, results: dict, targets: list) -> None:
    state = bench.state
    if state is None:
        fake = bench.fake("thr")
        pods = populate(fake.socket, 10, 1)
        proxy = bench.proxy("thr", str(fake.socket), ["primary"])
    else:
        fake, pods, proxy = state["fake"], state["pods"], state["proxy"]
    request = pb.PodSandboxStatusRequest(pod_sandbox_id=pods[0].id)
    rows = []
    for clients in bench.args.clients:
        before = procstat.TreeSample(proxy.proc.pid)
        raw = loadgen([[job(f"{clients}/{side}", where, "PodSandboxStatus", request,
                            bench.scale(6.0), concurrency=clients)
                        for side, where in (("direct", target(fake.socket)),
                                            ("proxied", target(proxy.listen)))]], rounds=3)
        # The proxy is idle while the direct rounds run, so its CPU is the proxied calls'.
        used = procstat.cpu_between(before, procstat.TreeSample(proxy.proc.pid))
        d, p = raw[f"{clients}/direct"], raw[f"{clients}/proxied"]
        rows.append({"clients": clients, "direct": d, "proxied": p,
                     "ratio": p["calls_per_s"] / d["calls_per_s"] if d["calls_per_s"] else 0.0,
                     "proxy_cpu_us_per_call": {role: 1e6 * sec / max(1, p["calls"])
                                               for role, sec in used.items()}})
    results["throughput"] = rows
    at16 = next((r for r in rows if r["clients"] == 16), None)
    if at16:
        targets.append(judge("throughput", at16["ratio"], "fake runtime, PodSandboxStatus"))


# ------------------------------------------------------------------ 3. alternate runtime


def exp_alternate(bench: Bench, results: dict, targets: list) -> None:
    size = max(bench.args.sizes)
    state = bench.state
    if state is not None and len(state["pods"]) == size:
        full = state["fake"]
        bench.stop_proxy(state["proxy"])
    else:
        full = bench.fake("alt-full")
        populate(full.socket, size, 1)
    empty = bench.fake("alt-empty")
    as_primary = bench.proxy("alt-p", f"{full.socket},{ALT}:{empty.socket}", ["primary", ALT])
    as_named = bench.proxy("alt-n", f"{empty.socket},{ALT}:{full.socket}", ["primary", ALT])
    sides = {"direct": target(full.socket), "primary": target(as_primary.listen),
             "named": target(as_named.listen)}
    raw = loadgen(list_jobs("alt", size, sides, bench.scale(5.0)))
    results["alternate"] = rows = alternate_rows(raw, "alt")
    lc = next(r for r in rows if r["call"] == "ListContainers")
    targets.append(judge("alternate", lc["named"]["p50_ms"] / lc["direct"]["p50_ms"],
                         f"fake runtime, {size} containers"))
    for proxy in (as_primary, as_named):
        bench.stop_proxy(proxy)
    bench.stop_fake(empty)
    if state is None or full is not state["fake"]:
        bench.stop_fake(full)


def alternate_rows(raw: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for job_id, stats in raw.items():
        parts = job_id.split("/")
        if parts[0] == prefix:
            rows.setdefault(parts[1], {"call": parts[1], "items": parts[2]})[parts[3]] = stats
    for row in rows.values():
        row["named_over_direct"] = row["named"]["p50_ms"] / row["direct"]["p50_ms"]
        row["named_minus_primary_ms"] = row["named"]["p50_ms"] - row["primary"]["p50_ms"]
    return list(rows.values())


# ------------------------------------------------------------------ 4. fan-out


def exp_fanout(bench: Bench, results: dict, targets: list) -> None:
    per = bench.args.fanout_containers
    fakes = [bench.fake(f"fan{i}") for i in range(1, 4)]
    for fake in fakes:
        populate(fake.socket, per // 3, 3)
    names = ["", "b.rt", "c.rt"]
    proxies = []
    for count in (1, 2, 3):
        connect = ",".join(f"{n}:{f.socket}" if n else str(f.socket)
                           for n, f in zip(names[:count], fakes[:count]))
        proxies.append(bench.proxy(f"fan{count}", connect,
                                   ["primary", *names[1:count]]))
    request = pb.ListContainersRequest(filter=pb.ContainerFilter())
    group = [job(f"direct/{i + 1}", target(f.socket), "ListContainers", request,
                 bench.scale(3.0)) for i, f in enumerate(fakes)]
    group += [job(f"proxied/{i + 1}", target(p.listen), "ListContainers", request,
                  bench.scale(3.0)) for i, p in enumerate(proxies)]
    # The best any fan-out can do here: the client asks the runtimes itself, all at once.
    group += [dict(job(f"together/{count}", target(fakes[0].socket), "ListContainers", request,
                       bench.scale(3.0)), also=[target(f.socket) for f in fakes[1:count]])
              for count in (2, 3)]
    raw = loadgen([group])
    rows = []
    for count in (1, 2, 3):
        slowest = max(raw[f"direct/{i}"]["p50_ms"] for i in range(1, count + 1))
        proxied = raw[f"proxied/{count}"]
        together = raw.get(f"together/{count}", raw["direct/1"])
        rows.append({"runtimes": count, "items": per * count, "slowest_direct_p50_ms": slowest,
                     "direct": [raw[f"direct/{i}"] for i in range(1, count + 1)],
                     "direct_together": together, "proxied": proxied,
                     "ratio": proxied["p50_ms"] / slowest,
                     "ratio_together": proxied["p50_ms"] / together["p50_ms"]})
    results["fanout"] = rows
    targets.append(judge("fanout", rows[-1]["ratio"],
                         f"fake runtimes, {per} containers each"))
    for proxy in proxies:
        bench.stop_proxy(proxy)
    for fake in fakes:
        bench.stop_fake(fake)
