"""Daemons we start and stop by pid: pid files with the start time, so that a recycled pid
is never signalled; process listing; lazy unmounts."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def proc_start_time(pid: int) -> int | None:
    """Start time in clock ticks (stat field 22), to tell our pid from a recycled one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(pid: int, start: int | None = None) -> bool:
    try:  # reap it if it is our own child (up() and down() in one test process)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


def spawn(argv: list[str], log: Path, pidfile: Path) -> int:
    """Start a daemon in its own session (so it outlives us and our signals) and record it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    pidfile.write_text(f"{proc.pid} {proc_start_time(proc.pid)}\n")
    return proc.pid


def read_pidfile(path: Path) -> tuple[int, int | None] | None:
    try:
        pid, start = path.read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid), (None if start == "None" else int(start))


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_procs() -> dict[int, tuple[int, list[str]]]:
    """pid -> (ppid, argv) for every process we can see."""
    procs = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int(p.joinpath("stat").read_text().rpartition(")")[2].split()[1])
            argv = p.joinpath("cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        procs[int(p.name)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return procs


def stop(pids: list[tuple[int, int | None]],
         signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGKILL)) -> None:
    """Signal all, wait (bounded) for all; escalate. Only pids whose start time still
    matches are touched, so a recycled pid is never hit."""
    for sig in signals:
        live = [(pid, start) for pid, start in pids if alive(pid, start)]
        for pid, _ in live:
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(alive(*p) for p in live) and time.monotonic() < deadline:
            time.sleep(0.05)


def unmount_under(dir: Path) -> None:
    """Lazily unmount every mount point under dir, deepest first."""
    prefix = str(dir) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
        if point.startswith(prefix) or point == str(dir):
            points.append(point)
    for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
        subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL)

