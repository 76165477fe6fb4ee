"""The soak's verdict: its checks, the figures as a table, the same in JSON, and for
each failure the evidence from criproxy's log (lines naming the ids concerned, and
its warnings and errors around the moment)."""
from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

from bench.soak.pleg import Relist, failing_stretches

MAX_STRETCH = 10.0      # seconds: kubelet's PLEG tolerates 3 min; a fault here costs 1-5 s
LIFECYCLE_SHARE = 0.95  # of the scheduled pods: each lives 20+ s, so only a pod that could
                        # not be started in its whole life misses (faults cost seconds)
LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d{3}) (\w)")


@dataclasses.dataclass
class Check:
    name: str
    value: object
    limit: str
    ok: bool


def bare(oid: str) -> str:
    return oid.rpartition("__")[2]


def log_lines_naming(log: list[str], ids: list[str], per_id: int = 6) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for oid in ids[:8]:
        key = bare(oid.split()[0])[:16]
        found[oid] = [ln[:400] for ln in log if key in ln][:per_id]
    return found


def log_lines_around(log: list[str], wall: str, seconds: float = 3.0,
                     levels: str = "WE") -> list[str]:
    """criproxy's warnings and errors within `seconds` of `wall` (HH:MM:SS.mmm)."""
    h, m, s = wall.split(":")
    t = int(h) * 3600 + int(m) * 60 + float(s)
    out = []
    for line in log:
        match = LOG_TIME.match(line)
        if match and match[5] in levels:
            lt = int(match[1]) * 3600 + int(match[2]) * 60 + int(match[3]) + int(match[4]) / 1000
            if abs(lt - t) <= seconds:
                out.append(line[:400])
    return out[:15]


def relist_figures(relists: list[Relist]) -> dict:
    ok = [r for r in relists if not r.error]
    bad = [r for r in ok if r.bad]
    stretches = failing_stretches(relists)
    return {"relists": len(relists), "failed": len(relists) - len(ok), "bad": len(bad),
            "missing": sum(bool(r.missing) for r in ok),
            "shown_gone": sum(bool(r.shown_gone) for r in ok),
            "wrong_state": sum(bool(r.wrong_state) for r in ok),
            "p50_ms": _ms(statistics.median(r.seconds for r in ok)) if ok else None,
            "max_ms": _ms(max(r.seconds for r in ok)) if ok else None,
            "longest_failing_s": max((s["seconds"] for s in stretches), default=0.0),
            "stretches": stretches,
            "bad_relists": [dataclasses.asdict(r) for r in bad[:50]]}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def checks(fig: dict) -> list[Check]:
    rl, left, life, growth = fig["relists"], fig["leftovers"], fig["lifecycles"], fig["growth"]
    out = [
        Check("relists lacking a live pod/container", rl["missing"], "0", rl["missing"] == 0),
        Check("relists showing a removed pod/container", rl["shown_gone"], "0",
              rl["shown_gone"] == 0),
        Check("relists with a live pod/container in a wrong state", rl["wrong_state"], "0",
              rl["wrong_state"] == 0),
        Check("longest failing relist stretch (s)", rl["longest_failing_s"],
              f"<= {MAX_STRETCH:.0f}", rl["longest_failing_s"] <= MAX_STRETCH),
        Check("longest failing stretch of a runtime's calls (s)", fig["call_stretch_max_s"],
              f"<= {MAX_STRETCH:.0f}", fig["call_stretch_max_s"] <= MAX_STRETCH),
        Check("left in a runtime, removed by the client", len(left["removed"]), "0",
              not left["removed"]),
        Check("left in a runtime, never seen created", len(left["never_seen"]), "0",
              not left["never_seen"]),
        Check("left in a runtime, client could not remove", len(left["not_removed"]), "0",
              not left["not_removed"]),
        Check("lifecycles completed", f"{life['completed']}/{life['scheduled']}",
              f">= {life['target']}", life["completed"] >= life["target"]),
        Check("faults that did not recover", len(fig["fault_errors"]), "0",
              not fig["fault_errors"]),
        Check("harness errors", fig["harness_errors"], "0", fig["harness_errors"] == 0),
    ]
    for name, m in growth["metrics"].items():
        if "growth" in m:
            out.append(Check(f"growth of {name}, first→last third",
                             f"{m['first']}→{m['last']} ({m['growth']:+})",
                             f"<= +{m['threshold']}", m["ok"]))
        else:   # faults too dense for quiet samples: only a targeted run may skip this
            out.append(Check(f"growth of {name}", m["why"], "", fig["dense_faults"]))
    return out


def table(fig: dict, results: list[Check]) -> str:
    lines = [f"{'check':<52} {'value':>22} {'limit':>8}  verdict"]
    for c in results:
        lines.append(f"{c.name:<52} {str(c.value):>22} {c.limit:>8}  "
                     f"{'PASS' if c.ok else 'FAIL'}")
    rl, calls = fig["relists"], fig["calls"]
    lines += ["", f"run {fig['minutes']} min, {rl['relists']} relists ({rl['failed']} failed, "
              f"p50 {rl['p50_ms']} ms, max {rl['max_ms']} ms), "
              f"{sum(sum(c.values()) for c in calls.values())} client calls",
              "", f"{'method':<18} {'OK':>6} {'failed (codes)'}"]
    for method, codes in sorted(calls.items()):
        bad = {k: v for k, v in codes.items() if k != "OK"}
        lines.append(f"{method:<18} {codes.get('OK', 0):>6} "
                     f"{' '.join(f'{k}={v}' for k, v in sorted(bad.items()))}")
    lines += ["", f"{'#':>2} {'fault':<17} {'target':<8} {'at':<13} {'s':>5} "
              f"{'relist fails':>12}  detail"]
    for f in fig["faults"]:
        lines.append(f"{f['index']:>2} {f['kind']:<17} {f['target']:<8} {f['wall']:<13} "
                     f"{f['seconds']:>5} {f['relist_failures']:>12}  "
                     f"{f['error'] or f['detail']}")
    slow = [x for x in fig["call_stretches"] if x["seconds"] > 5]
    if slow:
        lines += ["", "calls to a runtime failing for more than 5 s in a row:"]
        lines += [f"  {x['runtime']:<8} from {x['wall']} for {x['seconds']} s: {x['first_error']}"
                  for x in slow]
    life = fig["lifecycles"]
    lines += ["", f"lifecycles: {life['completed']} completed of {life['scheduled']} scheduled; "
              f"adopted after a lost answer: {len(life['adopted'])}; killed and recreated: "
              f"{len(life['killed_and_recreated'])}; reopened by housekeeping: "
              f"{len(life['reopened_by_housekeeping'])}; time to running p50 "
              f"{life['time_to_running_p50_s']} s, max {life['time_to_running_max_s']} s"]
    g = fig["growth"]
    lines += ["", f"resources ({g['eligible']} of {g['samples']} samples outside faults; "
              f"{g['first_third']} in the first third, {g['last_third']} in the last):"]
    for name, m in g["metrics"].items():
        if "growth" in m:
            lines.append(f"  {name:<13} {m['first']:>8} -> {m['last']:>8}  "
                         f"({m['growth']:+}, first-third spread {m['first_spread']})")
    for role, m in g["pss_by_role"].items():
        lines.append(f"  PSS {role:<22} {m['first']} -> {m['last']} MB")
    return "\n".join(lines)


def evidence(fig: dict, log_text: str) -> dict:
    """For each failure: criproxy's log lines about it."""
    log = log_text.splitlines()
    out: dict = {"bad_relists": [], "leftovers": {}, "stretches": []}
    for r in fig["relists"]["bad_relists"][:10]:
        ids = r["missing"] + r["shown_gone"] + r["wrong_state"]
        out["bad_relists"].append({"wall": r["wall"], "missing": r["missing"],
                                   "shown_gone": r["shown_gone"],
                                   "wrong_state": r["wrong_state"],
                                   "log_naming": log_lines_naming(log, ids),
                                   "log_around": log_lines_around(log, r["wall"])})
    left = fig["leftovers"]
    ids = left["removed"] + left["never_seen"] + left["not_removed"]
    out["leftovers"] = log_lines_naming(log, ids)
    for s in fig["relists"]["stretches"] + fig["call_stretches"]:
        if s["seconds"] > MAX_STRETCH:
            out["stretches"].append({**s, "log_around": log_lines_around(log, s["wall"], 12)})
    return out


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
