#!/usr/bin/env python3
"""Compare benchmark runs: every target's value, and the main figures, side by side.

    .venv/bin/python bench/suite/compare.py bench/results/A.json bench/results/B.json [...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable


def _rows(results: dict[str, Any]) -> dict[str, float]:
    """Flatten the figures worth comparing into name -> value."""
    out: dict[str, float] = {}
    for runtime in ("fake", "containerd"):
        for row in results.get(f"latency_{runtime}", []):
            key = f"latency {runtime} {row['call']} {row['items']}"
            out[key + " direct p50 ms"] = row["direct"]["p50_ms"]
            out[key + " proxied p50 ms"] = row["proxied"]["p50_ms"]
    for row in results.get("throughput", []):
        out[f"throughput {row['clients']} clients proxied/direct"] = row["ratio"]
        out[f"throughput {row['clients']} clients proxied calls/s"] = row["proxied"]["calls_per_s"]
    for row in results.get("alternate", []):
        out[f"alternate {row['call']} named-primary ms"] = row["named_minus_primary_ms"]
        out[f"alternate {row['call']} named/direct"] = row["named_over_direct"]
    for row in results.get("fanout", []):
        out[f"fanout {row['runtimes']} proxied/slowest"] = row["ratio"]
        if "ratio_together" in row:
            out[f"fanout {row['runtimes']} proxied/all at once"] = row["ratio_together"]
    node = results.get("node")
    if node:
        for key in ("idle_cpu_pct", "load_cpu_pct", "peak_rss_mb", "peak_pss_mb"):
            out[f"node {key}"] = node[key]
    iso = results.get("isolation")
    if iso:
        out["isolation frozen/normal p99"] = iso["ratio"]
    return out


def main(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    names = [Path(p).stem for p in paths]
    width = max(12, *(len(n) for n in names))
    print(f"{'':56s}" + "".join(f"{n:>{width + 2}s}" for n in names))
    for label, getter in (("machine busy before start %",
                           lambda r: 100 * r["meta"].get("busy_before", float("nan"))),):
        print(f"{label:56s}" + "".join(f"{_get(getter, r):>{width + 2}}" for r in runs))
    figures = [_rows(r["results"]) for r in runs]
    for key in sorted(set().union(*figures)):
        print(f"{key:56s}" + "".join(f"{_fmt(f.get(key)):>{width + 2}}" for f in figures))
    print("\ntargets")
    targets = [{(t["target"], "containerd" if "containerd" in t["note"] else "fake"): t
                for t in r["targets"]} for r in runs]
    for key in sorted(set().union(*targets)):
        cells = []
        for t in targets:
            hit = t.get(key)
            cells.append("-" if hit is None else
                         f"{'PASS' if hit['pass'] else 'MISS'} {hit['value']:.2f}")
        print(f"{key[0] + ' (' + key[1] + ')':56s}" + "".join(f"{c:>{width + 2}}" for c in cells))


def _get(getter: Callable[[dict], float], run: dict) -> str:
    try:
        return _fmt(getter(run))
    except (KeyError, TypeError):
        return "-"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:])
