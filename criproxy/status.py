"""`criproxy status`: what the running instance's front last published."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

# The front rewrites its status file every second; older means it is not running.
STALE_AFTER = 5.0


def read_status(rundir: str) -> dict[str, Any]:
    return json.loads((Path(rundir) / "status.json").read_text())


def format_status(status: dict[str, Any], now: float) -> str:
    lines = [f"front pid {status['front_pid']} serving {status['listen']} "
             f"(status {now - status['time']:.1f}s old)",
             f"{'RUNTIME':<16} {'STATE':<11} {'PID':>7} {'RESTARTS':>8} {'CRI':<4} "
             f"{'SOCKET':<36} LAST ERROR"]
    for r in status["runtimes"]:
        lines.append(f"{r['label']:<16} {r['state']:<11} {str(r['worker_pid'] or '-'):>7} "
                     f"{r['restarts']:>8} {r['cri_version'] or '-':<4} {r['socket']:<36} "
                     f"{r['last_error'] or '-'}")
    return "\n".join(lines)


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
    if now - status["time"] > STALE_AFTER:
        print(f"criproxy status: the front has not reported for {now - status['time']:.0f}s")
        return 1
    return 0 if all(r["state"] == "up" for r in status["runtimes"]) else 1
