"""Figures 1 and 3 again against two real containerd instances (scripts/runtimes.py),
which needs root; the cgroups its pods leave are removed afterwards."""
from __future__ import annotations

import importlib.util
from typing import Any

from bench.common.populate import populate
from bench.common.rig import CD_ALT, REPO, Bench, loadgen, target
from bench.suite.exp_calls import alternate_rows, list_jobs, pairs, unary_jobs
from bench.suite.report import judge


def load_runtimes_module() -> Any:
    spec = importlib.util.spec_from_file_location("runtimes", REPO / "scripts" / "runtimes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


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
        runtimes.remove_cgroup_tree(cgroup_root)
