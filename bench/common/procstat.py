"""CPU time and memory of a process tree, from /proc."""
from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support.harness import process_tree as tree

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime (fields 14 and 15 of /proc/PID/stat) in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) in kB. RSS counts a shared page in every process that maps it;
    PSS splits it between them, so PSS sums to the memory the tree really uses."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def role(pid: int, root: int) -> str:
    """What a criproxy process is: supervisord, front or worker-LABEL (its process title)."""
    if pid == root:
        return "supervisord"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return f"pid {pid}"
    words = argv[0].split()
    if words[:2] == ["criproxy:", "front"]:
        return "front"
    if words[:2] == ["criproxy:", "worker"]:
        return "worker-" + words[2]
    return " ".join(a for a in argv if a)[:40]


class TreeSample:
    """CPU seconds and memory of every process of a tree at one moment."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.taken = time.monotonic()
        self.cpu: dict[int, float] = {}
        self.memory: dict[int, tuple[int, int]] = {}
        self.roles: dict[int, str] = {}
        for pid in tree(root):
            try:
                self.cpu[pid] = cpu_seconds(pid)
                self.memory[pid] = memory_kb(pid)
                self.roles[pid] = role(pid, root)
            except OSError:
                continue

    def total_memory_mb(self) -> tuple[float, float]:
        rss = sum(m[0] for m in self.memory.values()) / 1024
        pss = sum(m[1] for m in self.memory.values()) / 1024
        return rss, pss


def cpu_between(before: TreeSample, after: TreeSample) -> dict[str, float]:
    """CPU seconds each process used between two samples (by role)."""
    used: dict[str, float] = {}
    for pid, seconds in after.cpu.items():
        used[after.roles[pid]] = used.get(after.roles[pid], 0.0) + seconds - before.cpu.get(pid, 0.0)
    return used
