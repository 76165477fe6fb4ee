"""`criproxy status`: what the running instance's front last published."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from criproxy.registrations import read_published
from criproxy.settings import ConfigError

# The front rewrites its status file within a second of a change (a call, a
# runtime's state), and at least every REFRESH seconds while nothing happens.
REFRESH = 30.0
# Older than this, with the front's pid alive, means a front that hangs.
STALE_AFTER = 2 * REFRESH + 5.0


def read_status(rundir: str) -> dict[str, Any]:
    return json.loads((Path(rundir) / "status.json").read_text())


def staleness(status: dict[str, Any], now: float) -> str:
    """Why `status` is not a running front's, or "" when it is: its pid gone, or
    older than STALE_AFTER (a front that stopped reporting)."""
    try:
        os.kill(int(status["front_pid"]), 0)
    except PermissionError:
        pass  # alive, another user's
    except (OSError, ValueError, KeyError, TypeError):
        return f"the front (pid {status.get('front_pid')}) is not running"
    age = now - status.get("time", 0)
    if age > STALE_AFTER:
        return f"the front has not reported for {age:.0f}s"
    return ""


def format_registrations(published: dict[str, Any], now: float) -> list[str]:
    """What the registrar decided about -runtimesDir (criproxy/registrations.py)."""
    if not published.get("directory"):
        return []
    lines = [f"REGISTERED in {published['directory']}"]
    if published.get("problem"):
        lines.append(f"  refused, nothing registers: {published['problem']}")
    for runtime in published.get("runtimes", []):
        gone = runtime.get("missing_since")
        lines.append(f"  {runtime['name']:<14} {runtime['socket']}" + (
            f"  (socket gone for {now - gone:.0f}s: down, leaves unless it is back)"
            if gone else ""))
    for refusal in published.get("refused", []):
        lines.append(f"  refused {refusal['entry']}: {refusal['reason']}")
    if len(lines) == 1:
        lines.append("  none")
    return lines


def format_status(status: dict[str, Any], now: float) -> str:
    lines = [f"front pid {status['front_pid']} serving {status['listen']} "
             f"(status {now - status['time']:.1f}s old)",
             f"{'RUNTIME':<16} {'STATE':<11} {'PID':>7} {'RESTARTS':>8} {'CRI':<4} "
             f"{'LISTS':<22} {'SOCKET':<36} LAST ERROR"]
    for r in status["runtimes"]:
        lines.append(f"{r['label']:<16} {r['state']:<11} {str(r['worker_pid'] or '-'):>7} "
                     f"{r['restarts']:>8} {r['cri_version'] or '-':<4} {_lists(r, now - status['time']):<22} "
                     f"{r['socket']:<36} {r['last_error'] or '-'}")
        if r.get("bad_answers"):
            lines.append(f"{'':<16} misbehaving: {r['bad_answers']} bad answers (undecodable, "
                         f"too big, a stream URL off the node); last: {r['last_bad_answer']}")
        if r.get("foreign_claims"):
            lines.append(f"{'':<16} {claims_line(r)}")
    lines += _format_requests(status)
    if status.get("metrics"):
        lines.append(f"metrics: http {status['metrics']}/metrics")
    elif status.get("metrics_error"):
        lines.append(f"metrics: not served: {status['metrics_error']}")
    return "\n".join(lines)


def claims_line(runtime: dict[str, Any]) -> str:
    """A runtime that answered about other runtimes' pods (front/claims.py)."""
    return (f"claims pods of {', '.join(runtime['claims_pods_of'])}: "
            f"{runtime['foreign_claims']} items about them dropped; "
            f"last: {runtime['last_foreign_claim']}")


def _lists(runtime: dict[str, Any], since_written: float) -> str:
    """Where the runtime's part of List answers comes from now (its last answer has
    aged since the status was written)."""
    age = runtime.get("last_answer_age")
    if age is not None:
        age += since_written
    if runtime.get("lists_left_out"):
        return "left out"
    if runtime.get("serving_last_answer") and age is not None:
        return f"last answer, {age:.0f}s old"
    return "fresh" if age is not None else "no answer yet"


_ROW_NAMES = {"*": "* (several)", "none": "none (refused)"}


def _format_requests(status: dict[str, Any]) -> list[str]:
    """Request rate, error rate and p99 per runtime, as the front measured them."""
    requests = status.get("requests")
    if requests is None:
        return []
    window = max((r["window"] for r in requests.values()), default=0.0)
    lines = [f"REQUESTS over the last {window:.0f}s",
             f"{'RUNTIME':<16} {'REQ/S':>8} {'ERR/S':>8} {'ERR%':>6} {'P99':>10}"]
    # A runtime's row only while it is one of the front's: not one that left.
    for label in [r["label"] for r in status["runtimes"]] + list(_ROW_NAMES):
        rates = requests.get(label, {"rate": 0.0, "error_rate": 0.0, "p99": None})
        if label in _ROW_NAMES and not rates["rate"]:
            continue  # show the rows for several/no runtime only when they had traffic
        share = 100 * rates["error_rate"] / rates["rate"] if rates["rate"] else 0.0
        p99 = "-" if rates["p99"] is None else _duration(rates["p99"])
        lines.append(f"{_ROW_NAMES.get(label, label):<16} {rates['rate']:>8.2f} "
                     f"{rates['error_rate']:>8.2f} {share:>5.1f}% {p99:>10}")
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.2f}s"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="criproxy status")
    parser.add_argument("-rundir", "--rundir", default="/run/criproxy")
    args = parser.parse_args(argv)
    try:
        status = read_status(args.rundir)
    except (OSError, ValueError) as err:
        print(f"criproxy status: no running criproxy in {args.rundir}: {err}")
        return 1
    now = time.time()
    print(format_status(status, now))
    try:
        print("\n".join(format_registrations(read_published(Path(args.rundir)), now)))
    except ConfigError as err:
        print(f"criproxy status: {err}")
    stale = staleness(status, now)
    if stale:
        print(f"criproxy status: {stale}")
        return 1
    return 0 if all(r["state"] == "up" for r in status["runtimes"]) else 1
