"""The Debian packages the real runtimes need, installed with apt-get when missing.

apt-get fails at once when another apt or dpkg run holds its locks, as unattended-upgrades
does for minutes on a fresh cloud VM's first boot. apt_install waits for them instead,
within a bound, saying who holds them."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

PACKAGES = {"containerd": "containerd", "ctr": "containerd", "runc": "runc",
            "crun": "crun", "unshare": "util-linux", "ip": "iproute2"}
CNI_BIN_DIR = "/usr/lib/cni"
BUSYBOX = Path("/bin/busybox")


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP (dynamic loader) program header."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # only 64-bit little-endian is expected
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = (struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum))
    return 3 not in types  # PT_INTERP == 3


# The locks apt-get and dpkg take (fcntl POSIX locks); the frontend one first.
DPKG_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock",
              "/var/cache/apt/archives/lock")
APT_LOCK_TIMEOUT = 900.0  # seconds: unattended-upgrades at first boot takes minutes


def ensure_packages(lock_timeout: float = APT_LOCK_TIMEOUT) -> None:
    """apt-get install what is missing; 'apt-get update' only then (it is slow)."""
    missing = {pkg for cmd, pkg in PACKAGES.items() if not shutil.which(cmd)}
    if not shutil.which("containerd-shim-runc-v2"):
        missing.add("containerd")
    if not Path(CNI_BIN_DIR, "bridge").exists():
        missing.add("containernetworking-plugins")
    if not BUSYBOX.exists() or not is_static_elf(BUSYBOX):
        missing.add("busybox-static")
    if missing:
        apt_install(missing, lock_timeout)


def lock_holders(paths: Iterable[str]) -> dict[str, int]:
    """path -> pid of a process holding a lock on it (from /proc/locks; -1 for an open
    file description lock, whose owner /proc/locks does not name)."""
    wanted = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        wanted[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = path
    held: dict[str, int] = {}
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return held
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        try:
            pid, where = int(fields[4]), fields[5]
            major, minor, inode = where.split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except (IndexError, ValueError):
            continue
        if key in wanted:
            held.setdefault(wanted[key], pid)
    return held


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def wait_for_apt_locks(timeout: float, paths: Iterable[str] | None = None,
                       poll: float = 1.0, say: Callable[[str], None] | None = None) -> float:
    """Wait until no process holds apt's and dpkg's locks, at most `timeout` seconds;
    say so once per holder. Returns the seconds waited; TimeoutError past the bound."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    paths = tuple(DPKG_LOCKS if paths is None else paths)
    started = time.monotonic()
    told: set[int] = set()
    while True:
        held = lock_holders(paths)
        if not held:
            return time.monotonic() - started
        waited = time.monotonic() - started
        path, pid = next(iter(held.items()))
        if waited >= timeout:
            raise TimeoutError(f"the apt/dpkg lock {path} is still held by PID {pid} "
                               f"({process_name(pid)}) after {timeout:.0f} s")
        if pid not in told:
            told.add(pid)
            say(f"waiting for the apt/dpkg lock ({path} held by PID {pid} "
                f"{process_name(pid)}), at most {timeout - waited:.0f} s more")
        time.sleep(min(poll, max(0.0, timeout - waited)))


def apt_install(packages: Iterable[str], lock_timeout: float | None = APT_LOCK_TIMEOUT) -> None:
    """apt-get update, then install `packages` without recommends, non-interactively;
    first wait (at most `lock_timeout` s; None: not at all) for another apt or dpkg run to
    end, and have apt-get wait the rest of that bound for the locks it takes itself."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-q"]
    if lock_timeout is not None:
        waited = wait_for_apt_locks(lock_timeout)
        apt += ["-o", f"DPkg::Lock::Timeout={max(1, round(lock_timeout - waited))}"]
    subprocess.run([*apt, "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*apt, "install", "-y", "--no-install-recommends", *sorted(packages)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
