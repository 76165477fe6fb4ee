#!/usr/bin/env python3
"""Soak: pod churn through criproxy for minutes, with a fault every minute (issue 21).

    make soak                                   # SOAK_MINUTES=10 by default
    SOAK_MINUTES=60 .venv/bin/python bench/soak/run.py
    .venv/bin/python bench/soak/run.py --minutes 2 --fault-every 20 --keep

Two real containerd runtimes (scripts/runtimes.py) behind criproxy: the primary, and
`alt.soak`, reached by annotation and by the RuntimeClass handler `althandler`. A
kubelet-like client (client.py, calls.py) churns pods with a running
container on both, relisting every second as kubelet's PLEG (pleg.py); a fault
strikes every minute in turn (faults.py); criproxy's resources are sampled
(watch.py). At the end the client deletes every pod, each runtime is asked
directly what it still holds, and the verdict is printed and written to
bench/results/soak-<timestamp>.json (report.py). Exit code 1 if a check fails,
2 if the run could not be made. Needs root. Everything it starts is stopped at the
end, whatever happens (and a run longer than its budget is cut short).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH.parent))

from bench.soak.calls import Calls  # noqa: E402
from bench.soak.client import Churn  # noqa: E402
from bench.soak.faults import KINDS, Faults  # noqa: E402
from bench.soak.node import Node  # noqa: E402
from bench.soak.pleg import Pleg  # noqa: E402
from bench.soak.report import (LIFECYCLE_SHARE, checks, evidence, relist_figures, table,  # noqa: E402
                               write_json)
from bench.soak.state import Expect  # noqa: E402
from bench.soak.watch import Watch, growth  # noqa: E402
from tests.support.harness import short_dir  # noqa: E402

REMOVE_ALL_WITHIN = 180.0   # seconds for the client to delete every pod at the end


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float,
                    default=float(os.environ.get("SOAK_MINUTES") or 10),
                    help="length of the churn (default: $SOAK_MINUTES, else 10)")
    ap.add_argument("--live", type=int, default=8, help="pods kept alive (default 8)")
    ap.add_argument("--interval", type=float, default=3.0,
                    help="seconds between new pods (default 3)")
    ap.add_argument("--fault-every", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--faults", type=lambda v: tuple(v.split(",")), default=KINDS,
                    help=f"which faults, in turn (default: all: {','.join(KINDS)})")
    ap.add_argument("--settle", type=float, default=15.0,
                    help="seconds after a fault left out of the resource samples")
    ap.add_argument("--list-budget", type=float, default=2.0, help="criproxy's -listBudget")
    ap.add_argument("--freeze", type=float, default=6.0,
                    help="seconds a runtime stays frozen (longer than -listBudget)")
    ap.add_argument("--verbosity", type=int, default=3, help="criproxy's -v (default 3)")
    ap.add_argument("--repo", type=Path,
                    help="the criproxy source tree to run (default: this checkout)")
    ap.add_argument("--json", type=Path, help="default bench/results/soak-<timestamp>.json")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (/tmp/soak-*)")
    return ap.parse_args()


def on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> int:
    args = parse()
    if set(args.faults) - set(KINDS):
        print(f"soak: unknown fault in --faults; known: {','.join(KINDS)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("soak: needs root (it runs two containerd instances)", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or BENCH / "results" / f"soak-{stamp}.json"
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.minutes * 60 + REMOVE_ALL_WITHIN + 600))   # the whole run's budget
    node = Node(short_dir("soak-"), args.list_budget, args.verbosity, args.repo)
    calls = faults = None
    print(f"soak: {args.minutes:g} min in {node.base}, results to {out}", flush=True)
    try:
        node.up()
        calls = Calls(node.listen)
        faults = Faults(node, calls, args.freeze, args.faults)
        fig = soak(args, node, calls, faults)
        results = checks(fig)
        fig["checks"] = [c.__dict__ for c in results]
        fig["ok"] = all(c.ok for c in results)
        log = node.proxy.log() if node.proxy else ""
        fig["evidence"] = evidence(fig, log)
        if not fig["ok"]:
            shutil.copyfile(node.proxy.log_path, out.with_suffix(".criproxy.log"))
            fig["criproxy_log"] = str(out.with_suffix(".criproxy.log"))
        write_json(out, fig)
        print(table(fig, results))
        print(f"\n{'PASS' if fig['ok'] else 'FAIL'}: figures in {out}")
        return 0 if fig["ok"] else 1
    finally:
        signal.alarm(0)
        if faults is not None:
            faults.thaw()
        if calls is not None:
            calls.close()
        node.down(keep=args.keep)


def soak(args: argparse.Namespace, node: Node, calls: Calls, faults: Faults) -> dict:
    expect = Expect()
    churn = Churn(calls, expect, node.logs, node.cgroup_root, args.live, args.interval)
    pleg = Pleg(calls, expect, churn.housekeep)
    watch = Watch(node)
    stop_churn = threading.Event()
    churner = threading.Thread(target=churn.run, args=(stop_churn,), name="churn", daemon=True)
    start = time.monotonic()
    end = start + args.minutes * 60
    for thread in (pleg, watch, churner):
        thread.start()
    try:
        index, next_fault = 0, start + args.fault_every
        while time.monotonic() < end:
            if (not args.no_faults and time.monotonic() >= next_fault
                    and next_fault < end - args.settle):
                fault = faults.run(index)
                print(f"  {fault.wall} fault {index}: {fault.kind} {fault.target}: "
                      f"{fault.error or fault.detail}", flush=True)
                index += 1
                next_fault += args.fault_every
            time.sleep(0.2)
        churned = time.monotonic()
        churn.delete_all()
        deadline = churned + REMOVE_ALL_WITHIN
        while churn.pending() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3.0)   # relists after the last removal: nothing removed may show again
    finally:
        stop_churn.set()
        churner.join(60)
        pleg.stop()
        watch.stop()
        churn.close()
    held = node.held()
    return figures(args, churn, calls, expect, pleg, watch, faults, held, start, end)


def figures(args: argparse.Namespace, churn: Churn, calls: Calls, expect: Expect, pleg: Pleg,
            watch: Watch, faults: Faults, held: dict, start: float, end: float) -> dict:
    life = churn.figures()
    ttr = life.pop("time_to_running_s")
    life.update(target=int(life["scheduled"] * LIFECYCLE_SHARE),
                time_to_running_p50_s=round(statistics.median(ttr), 2) if ttr else None,
                time_to_running_max_s=max(ttr, default=None))
    everything = {i for rt in held.values() for ids in rt.values() for i in ids}
    gone, seen = set(expect.gone), set(expect.seen)
    leftovers = {"held": held, "removed": sorted(everything & gone),
                 "not_removed": sorted((everything & seen) - gone),
                 "never_seen": sorted(everything - seen)}
    settle = args.settle
    fault_rows = []
    for f in faults.done:
        during = [r for r in pleg.relists if f.start <= r.at <= f.end + settle]
        fault_rows.append({"index": f.index, "kind": f.kind, "target": f.target,
                           "wall": f.wall, "seconds": round(f.end - f.start, 1),
                           "relist_failures": sum(bool(r.error) for r in during),
                           "detail": f.detail, "error": f.error})
    codes = {m: dict(c) for m, c in calls.stats.codes.items()}
    stretches = calls.stats.all_stretches()
    return {
        "minutes": args.minutes, "args": {k: str(v) for k, v in vars(args).items()},
        "relists": relist_figures(pleg.relists),
        "calls": codes,
        "call_p50_ms": {m: round(statistics.median(v) * 1000, 1)
                        for m, v in calls.stats.ok_seconds.items() if v},
        "call_errors": calls.stats.errors,
        "call_stretches": stretches,
        "call_stretch_max_s": max((x["seconds"] for x in stretches), default=0.0),
        "cancelled_calls": calls.cancelled,
        "faults": fault_rows,
        "fault_errors": [f for f in fault_rows if f["error"]],
        "harness_errors": codes.get("sync", {}).get("HARNESS", 0),
        "lifecycles": life,
        "leftovers": leftovers,
        "growth": growth(watch.samples, faults.done, start, end, settle),
        # Faults closer than this leave no quiet samples; growth is then not judged.
        "dense_faults": args.fault_every < 2 * settle + 10,
        "samples": [s.__dict__ for s in watch.samples],
    }


if __name__ == "__main__":
    sys.exit(main())
