"""The front process's own metrics: prometheus_client's process collector,
namespaced criproxy_front_process_, read from /proc when scraped."""
from __future__ import annotations

import os
from pathlib import Path

from criproxy.ops.exposition import Family, gauge

_PREFIX = "criproxy_front_process_"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_boot_time: float | None = None


def process_families() -> list[Family]:
    global _boot_time
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        if _boot_time is None:
            _boot_time = next(float(line.split()[1]) for line in
                              Path("/proc/stat").read_text().splitlines()
                              if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return []
    families = []
    for name, kind, help_text, value in (
            ("virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", float(fields[20])),
            ("resident_memory_bytes", "gauge", "Resident memory size in bytes.",
             float(fields[21]) * _PAGE),
            ("start_time_seconds", "gauge",
             "Start time of the process since unix epoch in seconds.",
             float(fields[19]) / _TICKS + _boot_time),
            ("cpu_seconds", "counter", "Total user and system CPU time spent in seconds.",
             (float(fields[11]) + float(fields[12])) / _TICKS)):
        family = Family(_PREFIX + name, kind, help_text)
        family.add((), value, "_total" if kind == "counter" else "")
        families.append(family)
    try:
        open_fds = float(len(os.listdir("/proc/self/fd")))
        family = gauge(_PREFIX + "open_fds", "Number of open file descriptors.")
        family.add((), open_fds)
        families.append(family)
        for line in Path("/proc/self/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                family = gauge(_PREFIX + "max_fds", "Maximum number of open file descriptors.")
                family.add((), float(line.split()[3]))
                families.append(family)
    except (OSError, ValueError, IndexError):
        pass
    return families
