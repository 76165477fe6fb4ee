#!/usr/bin/env python3
"""criproxy benchmark: every figure direct-to-runtime and through criproxy, in one run.

    .venv/bin/python bench/run.py                 # everything (`make bench`), ~6 min
    .venv/bin/python bench/run.py --quick         # shorter durations, ~2 min
    .venv/bin/python bench/run.py --only latency,node --no-containerd

Prints the tables and PASS/MISS per target on stdout and writes the same as
JSON to bench/results/<timestamp>.json (and the text to .txt). bench/README.md
says what each figure means. Must run as root for the containerd part (it
starts two containerd instances with scripts/runtimes.py); --no-containerd
skips it.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import grpc  # noqa: E402
from cri_api.v1 import api_pb2 as pb  # noqa: E402
from cri_api.v1 import api_pb2_grpc as rpc  # noqa: E402

import procstat  # noqa: E402
from tests.fakeruntime import READY_MESSAGE, FakeRuntime  # noqa: E402
from tests.harness import Proxy, short_dir, start_proxy  # noqa: E402

RT = "/runtime.v1.RuntimeService/"
ALT = "alt.cloud"              # the named runtime of the fake set-ups
CD_ALT = "crun.test"           # the named runtime of the containerd set-ups
UID_LABEL = "io.kubernetes.pod.uid"
EXPERIMENTS = ("latency", "throughput", "alternate", "fanout", "node", "isolation")

# ------------------------------------------------------------------ targets

TARGETS = {
    "overhead": ("primary unary call overhead p50 (proxied - direct)", "<=", 0.5, "ms"),
    "throughput": ("throughput at 16 clients, proxied / direct", ">=", 0.5, "x"),
    "alternate": ("ListContainers 1000 alternate-runtime items, proxied / direct p50", "<=", 2.0, "x"),
    "fanout": ("ListContainers over 3 runtimes / slowest single direct p50", "<=", 1.5, "x"),
    "cpu": ("kubelet-like load, 110 pods: all criproxy processes", "<=", 3.0, "% of a core"),
    "rss": ("kubelet-like load, 110 pods: total RSS, 2 runtimes", "<=", 150.0, "MB"),
    "isolation": ("healthy-runtime p99 with another frozen / none frozen", "<=", 1.2, "x"),
}


def judge(key: str, value: float, note: str = "") -> dict[str, Any]:
    text, op, limit, unit = TARGETS[key]
    ok = value <= limit if op == "<=" else value >= limit
    return {"target": key, "what": text, "value": value, "limit": limit, "op": op,
            "unit": unit, "pass": bool(ok), "note": note}


# ------------------------------------------------------------------ processes


@dataclass
class Bench:
    args: argparse.Namespace
    base: Path
    fakes: list[FakeRuntime] = field(default_factory=list)
    proxies: list[Proxy] = field(default_factory=list)
    state: dict[str, Any] | None = None  # the latency set-up, reused by the next experiments

    def scale(self, seconds: float) -> float:
        return seconds * (0.3 if self.args.quick else 1.0)

    def fake(self, name: str) -> FakeRuntime:
        """A fake runtime (bench/fake.py: the tests' fake without its journal)."""
        socket, log_path = self.base / f"{name}.sock", self.base / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(BENCH / "fake.py"), "--socket", str(socket),
                 "--journal", os.devnull, "--name", name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        fake = FakeRuntime(name, socket, Path(os.devnull), log_path, proc)
        self.fakes.append(fake)
        deadline = time.monotonic() + 20
        while READY_MESSAGE.encode() not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake {name} did not start:\n{log_path.read_text()}")
            time.sleep(0.02)
        return fake

    def proxy(self, tag: str, connect: str, labels: list[str], *extra: str,
              repo: Path = REPO) -> Proxy:
        workdir = self.base / f"px-{tag}"
        workdir.mkdir()
        proxy = start_proxy(connect, *self.args.proxy_args.split(), *extra, workdir=workdir,
                            wait_for=labels, verbosity=self.args.verbosity, repo=repo)
        self.proxies.append(proxy)
        return proxy

    def stop_proxy(self, proxy: Proxy) -> None:
        proxy.stop()
        self.proxies.remove(proxy)

    def stop_fake(self, fake: FakeRuntime) -> None:
        fake.stop()
        self.fakes.remove(fake)

    def close(self) -> None:
        for proxy in list(self.proxies):
            with contextlib.suppress(Exception):
                proxy.stop()
        for fake in list(self.fakes):
            with contextlib.suppress(Exception):
                fake.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def target(path: Path | str) -> str:
    return f"unix://{path}"


def loadgen(groups: list[list[dict]], rounds: int = 4, warmup: int = 20) -> dict[str, Any]:
    spec = {"groups": groups, "rounds": rounds, "warmup": warmup}
    done = subprocess.run([sys.executable, str(BENCH / "loadgen.py")], input=json.dumps(spec),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed:\n{done.stderr}")
    return json.loads(done.stdout)


def job(job_id: str, where: str, method: str, request: Any, seconds: float,
        concurrency: int = 1, timeout: float = 10.0) -> dict[str, Any]:
    return {"id": job_id, "target": where, "method": RT + method,
            "request": base64.b64encode(request.SerializeToString()).decode(),
            "duration": seconds, "concurrency": concurrency, "timeout": timeout}


# ------------------------------------------------------------------ populating runtimes


@dataclass
class Pod:
    id: str
    uid: str
    containers: list[str]


def pod_config(name: str, uid: str, index: int, cgroup_root: str | None) -> pb.PodSandboxConfig:
    """Labels and annotations as kubelet sets them, so messages have a realistic size."""
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace="bench", attempt=0),
        hostname=name, log_directory=f"/var/log/pods/bench_{name}_{uid}",
        labels={UID_LABEL: uid, "io.kubernetes.pod.name": name,
                "io.kubernetes.pod.namespace": "bench", "app": f"app-{index % 7}"},
        annotations={"kubernetes.io/config.seen": "2024-01-01T00:00:00.000000000Z",
                     "kubernetes.io/config.source": "api"})
    if cgroup_root is not None:  # a real runtime: host network, a cgroup parent as kubelet's
        config.hostname = ""
        config.linux.cgroup_parent = f"{cgroup_root}/pod{uid}"
        config.linux.security_context.namespace_options.network = pb.NODE
    return config


def container_config(pod: pb.PodSandboxConfig, index: int, image: str,
                     command: list[str]) -> pb.ContainerConfig:
    name = f"c{index}"
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0), image=pb.ImageSpec(image=image),
        command=command, log_path=f"{name}/0.log",
        labels={"io.kubernetes.container.name": name, UID_LABEL: pod.metadata.uid,
                "io.kubernetes.pod.name": pod.metadata.name,
                "io.kubernetes.pod.namespace": "bench"},
        annotations={"io.kubernetes.container.hash": f"{index:08x}",
                     "io.kubernetes.container.restartCount": "0",
                     "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
                     "io.kubernetes.container.terminationMessagePolicy": "File",
                     "io.kubernetes.pod.terminationGracePeriod": "30"})


def populate(socket: Path | str, count: int, per_pod: int, first: int = 0,
             image: str = "docker.io/library/busybox:latest", cgroup_root: str | None = None,
             command: list[str] | None = None, timeout: float = 60) -> list[Pod]:
    """Run `count` pods of `per_pod` started containers each, directly on a runtime."""
    made = []
    with grpc.insecure_channel(target(socket)) as channel:
        stub = rpc.RuntimeServiceStub(channel)
        for index in range(first, first + count):
            uid = uuid.uuid4().hex
            config = pod_config(f"pod-{index}", uid, index, cgroup_root)
            pod_id = stub.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                        timeout=timeout).pod_sandbox_id
            pod = Pod(pod_id, uid, [])
            for c in range(per_pod):
                cid = stub.CreateContainer(pb.CreateContainerRequest(
                    pod_sandbox_id=pod_id, sandbox_config=config,
                    config=container_config(config, c, image, command or ["sleep", "100000"])),
                    timeout=timeout).container_id
                stub.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=timeout)
                pod.containers.append(cid)
            made.append(pod)
    return made


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
        [sys.executable, str(BENCH / "kubelet.py"), "--target", target(proxy.listen),
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
        [sys.executable, str(BENCH / "kubelet.py"), "--target", target(proxy.listen),
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
    from loadgen import percentile
    ordered = sorted(values_ms)
    return {"calls": len(ordered), "errors": errors, "p50_ms": percentile(ordered, 50),
            "p99_ms": percentile(ordered, 99), "max_ms": ordered[-1] if ordered else float("nan")}


# ------------------------------------------------------------------ real containerd


def load_runtimes_module() -> Any:
    spec = importlib.util.spec_from_file_location("runtimes", REPO / "scripts" / "runtimes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def remove_cgroups(runtimes: Any, root: str) -> None:
    for mount in runtimes.cgroup_mounts():
        top = Path(mount + root)
        if top.is_dir():
            for path in sorted([p for p in top.rglob("*") if p.is_dir()] + [top],
                               key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()


def exp_containerd(bench: Bench, results: dict, targets: list, only: set[str]) -> None:
    runtimes = load_runtimes_module()
    rtdir = bench.base / "rt"
    cgroup_root = f"/criproxy-bench-{bench.base.name}"
    count = bench.args.containerd_pods
    started = []
    try:
        info = runtimes.up(rtdir)
        a, b = info["instances"]["a"], info["instances"]["b"]
        results["containerd_version"] = a["version"]
        pods = populate(a["socket"], count, 1, image=info["images"]["busybox"],
                        cgroup_root=cgroup_root, timeout=120)
        if "latency" in only:
            single = bench.proxy("cd", a["socket"], ["primary"])
            started.append(single)
            sides = {"direct": target(a["socket"]), "proxied": target(single.listen)}
            raw = loadgen(unary_jobs("cd", pods, sides["direct"], sides["proxied"],
                                     bench.scale(3.0)) + list_jobs("cd", count, sides,
                                                                   bench.scale(3.0)))
            results["latency_containerd"] = pairs(raw, "cd")
            unary = [r for r in results["latency_containerd"] if r["items"] == "-"]
            worst = max(unary, key=lambda r: r["overhead_p50_ms"])
            targets.append(judge("overhead", worst["overhead_p50_ms"],
                                 f"containerd, worst of {len(unary)} calls: {worst['call']}"))
            bench.stop_proxy(single)
        if "alternate" in only:
            as_primary = bench.proxy("cd-p", f"{a['socket']},{CD_ALT}:{b['socket']}",
                                     ["primary", CD_ALT])
            as_named = bench.proxy("cd-n", f"{b['socket']},{CD_ALT}:{a['socket']}",
                                   ["primary", CD_ALT])
            started += [as_primary, as_named]
            raw = loadgen(list_jobs("cdalt", count, {
                "direct": target(a["socket"]), "primary": target(as_primary.listen),
                "named": target(as_named.listen)}, bench.scale(3.0)))
            results["alternate_containerd"] = alternate_rows(raw, "cdalt")
    finally:
        for proxy in started:
            if proxy in bench.proxies:
                bench.stop_proxy(proxy)
        runtimes.down(rtdir)
        remove_cgroups(runtimes, cgroup_root)


# ------------------------------------------------------------------ report


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths)))]
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def report(meta: dict, results: dict, targets: list) -> str:
    out = [f"criproxy benchmark {meta['started']}: {meta['cores']} cores ({meta['cpu']}), "
           f"Python {meta['python']}, grpcio {meta['grpcio']}, protobuf {meta['protobuf']}, "
           f"pyzmq {meta['pyzmq']}, containerd {meta['containerd']}",
           f"load average before/after: {meta['loadavg_start']} / {meta.get('loadavg_end')}; "
           f"machine {100 * meta.get('busy_before', 0):.0f}% busy before the start"
           f"   proxy flags: {meta['proxy_args'] or '(defaults)'}   git {meta['git']}"]
    if meta.get("busy_before", 0) > 0.15:
        out.append("WARNING: other work was running on this machine: every figure is inflated, "
                   "the proxied ones most (they cross more processes); see bench/README.md")
    lat = [("fake", r) for r in results.get("latency_fake", [])] + \
          [("containerd", r) for r in results.get("latency_containerd", [])]
    if lat:
        out += ["", "1. Latency, one client, sequential calls (ms; overhead = proxied - direct)",
                table(["runtime", "call", "items", "direct p50", "proxied p50", "overhead p50",
                       "direct p99", "proxied p99", "overhead p99", "calls d/p"],
                      [[rt, r["call"], r["items"], r["direct"]["p50_ms"], r["proxied"]["p50_ms"],
                        _signed(r["overhead_p50_ms"]), r["direct"]["p99_ms"],
                        r["proxied"]["p99_ms"], _signed(r["overhead_p99_ms"]),
                        f"{r['direct']['calls']}/{r['proxied']['calls']}"] for rt, r in lat])]
    if "throughput" in results:
        out += ["", "2. Throughput, PodSandboxStatus, fake runtime (client: one grpc.aio process)",
                table(["clients", "direct calls/s", "proxied calls/s", "proxied/direct",
                       "direct p99 ms", "proxied p99 ms", "errors d/p", "client cores d/p",
                       "proxy CPU us/call"],
                      [[r["clients"], r["direct"]["calls_per_s"], r["proxied"]["calls_per_s"],
                        r["ratio"], r["direct"]["p99_ms"], r["proxied"]["p99_ms"],
                        f"{r['direct']['errors']}/{r['proxied']['errors']}",
                        f"{r['direct']['client_cores']:.2f}/{r['proxied']['client_cores']:.2f}",
                        _cpu_split(r.get("proxy_cpu_us_per_call", {}))]
                       for r in results["throughput"]]),
                "(client cores: the load client's own CPU use; proxy CPU: per proxied call, "
                "front + each worker)"]
    alt = [("fake", r) for r in results.get("alternate", [])] + \
          [("containerd", r) for r in results.get("alternate_containerd", [])]
    if alt:
        out += ["", "3. Alternate runtime: the same items served as the primary's or a named "
                    "runtime's (p50 ms, p99 in brackets)",
                table(["runtime", "call", "items", "direct", "via proxy, primary",
                       "via proxy, named", "named/direct", "named-primary"],
                      [[rt, r["call"], r["items"], _pp(r["direct"]), _pp(r["primary"]),
                        _pp(r["named"]), r["named_over_direct"],
                        _signed(r["named_minus_primary_ms"])] for rt, r in alt])]
    if "fanout" in results:
        out += ["", "4. Fan-out: ListContainers over N fake runtimes (1 primary + N-1 named), "
                    "p50 ms (p99)",
                table(["runtimes", "items", "direct, each runtime", "slowest direct",
                       "direct, all at once", "proxied", "proxied/slowest",
                       "proxied/all at once"],
                      [[r["runtimes"], r["items"],
                        " ".join(f"{d['p50_ms']:.2f}" for d in r["direct"]),
                        r["slowest_direct_p50_ms"], _pp(r["direct_together"]), _pp(r["proxied"]),
                        r["ratio"], r["ratio_together"]] for r in results["fanout"]]),
                "(direct, all at once: the client itself asks every runtime at the same time "
                "and waits for all; the floor for any fan-out on this machine)"]
    if "node" in results:
        n = results["node"]
        out += ["", f"5. Node cost: kubelet-like replay, {n['pods']} pods x 3 containers "
                    f"({n['pods'] - n['named_pods']} primary, {n['named_pods']} named), "
                    f"{n['load_seconds']:.0f} s; idle: {n['idle_seconds']:.0f} s without calls",
                table(["process", "idle CPU %", "load CPU %", "RSS MB", "PSS MB"],
                      [[p["role"], p["idle_pct"], p["load_pct"], p["rss_mb"], p["pss_mb"]]
                       for p in n["processes"]] +
                      [["total", n["idle_cpu_pct"], n["load_cpu_pct"], n["rss_mb"], n["pss_mb"]],
                       ["peak", "", "", n["peak_rss_mb"], n["peak_pss_mb"]]]),
                f"(CPU % of one core; the two fake runtimes used {n['runtimes_cpu_pct']:.1f}% "
                f"under the same load)",
                table(["kubelet call (proxied)", "calls", "errors", "p50 ms", "p99 ms"],
                      [[name, c["calls"], c["errors"], c["p50_ms"], c["p99_ms"]]
                       for name, c in n["calls"].items()])]
    if "isolation" in results:
        iso = results["isolation"]
        out += ["", f"6. Isolation: PodSandboxStatus to the healthy (primary) runtime, "
                    f"{iso['blocks']} blocks of {iso['block_seconds']:.1f} s per phase, while "
                    f"a kubelet replay also calls the other runtime (ms)",
                table(["phase", "direct p50", "direct p99", "proxied p50", "proxied p99",
                       "proxied max", "calls", "errors"],
                      [[phase, iso[phase]["direct"]["p50_ms"], iso[phase]["direct"]["p99_ms"],
                        iso[phase]["proxied"]["p50_ms"], iso[phase]["proxied"]["p99_ms"],
                        iso[phase]["proxied"]["max_ms"], iso[phase]["proxied"]["calls"],
                        iso[phase]["proxied"]["errors"]]
                       for phase in ("normal", "frozen")])]
    for name, error in results.get("errors", {}).items():
        out += ["", f"!! {name} failed: {error.strip().splitlines()[-1]}"]
    if targets:
        out += ["", "Targets",
                table(["", "target", "value", "limit", "note"],
                      [["PASS" if t["pass"] else "MISS", t["what"],
                        f"{t['value']:.2f} {t['unit']}", f"{t['op']} {t['limit']:g}", t["note"]]
                       for t in targets])]
    return "\n".join(out)


def _cpu_split(per_role: dict[str, float]) -> str:
    front = per_role.get("front", 0.0)
    workers = sum(v for k, v in per_role.items() if k.startswith("worker"))
    return f"{front:.0f} + {workers:.0f}"


def _pp(stats: dict) -> str:
    return f"{stats['p50_ms']:.2f} ({stats['p99_ms']:.2f})"


# ------------------------------------------------------------------ main


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
