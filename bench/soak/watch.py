"""criproxy's resources over the soak, and whether they grow.

Every `period` seconds: the PSS of criproxy's processes (supervisord, front, workers:
/proc/PID/smaps_rollup, which splits shared pages between them, so the sum is what
the tree really uses), their open fds, how many there are, and the files in
criproxy's runtime dir. Samples taken during a fault or within `settle` seconds
after it are left out; growth compares the median of the eligible samples of the
run's first third with that of its last third (a median: a sample that caught a
transient, e.g. a connection being made, does not decide).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time
from pathlib import Path

from bench.soak.node import Node

# What counts as growth. A quantity must grow by more than this from the first third's
# median to the last third's (see README of the soak in run.py for why).
THRESHOLDS = {
    # PSS: Python processes hold on to freed memory in pymalloc arenas and glibc's
    # heap, and a process restarted by a fault starts smaller and fills its caches
    # over its first minutes; 8 MB (about 8% of the tree's ~100 MB) is above that.
    # A leak of one 4 KB object per pod lifecycle grows by 5 MB an hour.
    "pss_mb": 8.0,
    # fds, processes and runtime-dir files are counts with no noise between quiet
    # moments: the medians must not move by more than a transient allows.
    "fds": 2,
    "processes": 0,
    "rundir_files": 0,
    # The record files hold each runtime's last answer: ~1 KB per pod or container, for
    # 8-10 live pods. 16 KB is some 8 pods more than that; pods removed but kept would
    # add ~2 KB per lifecycle, 40 KB a minute at the default churn.
    "rundir_kb": 16.0,
}


@dataclasses.dataclass
class Sample:
    at: float
    pss_mb: float
    rss_mb: float
    fds: int
    processes: int
    rundir_files: int
    rundir_kb: float
    by_role: dict[str, float]          # PSS MB by process title


def _pss_rss_kb(pid: int) -> tuple[int, int]:
    pss = rss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
    return pss, rss


def _role(pid: int) -> str:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"
    words = title.split()
    if words[:2] == ["criproxy:", "worker"] and len(words) > 2:
        return f"worker-{words[2]}"
    if words[:1] == ["criproxy:"] and len(words) > 1:
        return words[1]
    return "criproxy"        # supervisord before its title is set: `python -m criproxy`


def sample(node: Node) -> Sample | None:
    pids = node.criproxy_pids()
    if not pids:
        return None
    pss = rss = fds = 0
    by_role: dict[str, float] = {}
    for pid in pids:
        try:
            p, r = _pss_rss_kb(pid)
            n = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None        # a process ended while we looked: not a quiet moment
        pss, rss, fds = pss + p, rss + r, fds + n
        role = _role(pid)
        by_role[role] = round(by_role.get(role, 0.0) + p / 1024, 1)
    files, size = node.rundir_files()
    return Sample(time.monotonic(), round(pss / 1024, 1), round(rss / 1024, 1), fds,
                  len(pids), files, round(size / 1024, 1), by_role)


class Watch(threading.Thread):
    def __init__(self, node: Node, period: float = 5.0) -> None:
        super().__init__(name="watch", daemon=True)
        self.node = node
        self.period = period
        self.samples: list[Sample] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            try:
                taken = sample(self.node)
            except Exception:   # criproxy restarting under us
                taken = None
            if taken is not None:
                self.samples.append(taken)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def eligible(samples: list[Sample], faults: list, settle: float) -> list[Sample]:
    """Samples outside every fault and the `settle` seconds after it."""
    windows = [(f.start, (f.end or f.start) + settle) for f in faults]
    return [s for s in samples if not any(a <= s.at <= b for a, b in windows)]


def growth(samples: list[Sample], faults: list, start: float, end: float,
           settle: float) -> dict:
    good = eligible(samples, faults, settle)
    third = (end - start) / 3
    first = [s for s in good if s.at < start + third]
    last = [s for s in good if end - third <= s.at <= end]
    out: dict = {"samples": len(samples), "eligible": len(good),
                 "first_third": len(first), "last_third": len(last), "metrics": {}}
    for name, limit in THRESHOLDS.items():
        if not first or not last:
            out["metrics"][name] = {"ok": None, "why": "no quiet samples in a third"}
            continue
        a = round(statistics.median(getattr(s, name) for s in first), 2)
        b = round(statistics.median(getattr(s, name) for s in last), 2)
        spread = max(getattr(s, name) for s in first) - min(getattr(s, name) for s in first)
        out["metrics"][name] = {"first": a, "last": b, "growth": round(b - a, 2),
                                "first_spread": round(spread, 2), "threshold": limit,
                                "ok": round(b - a, 2) <= limit}
    roles = sorted({r for s in good for r in s.by_role})
    out["pss_by_role"] = {
        role: {"first": _median([s.by_role.get(role) for s in first]),
               "last": _median([s.by_role.get(role) for s in last])} for role in roles}
    return out


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None
