"""The targets (TARGETS, judge) and the text report: one table per figure, then
PASS/MISS per target."""
from __future__ import annotations

from typing import Any

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
