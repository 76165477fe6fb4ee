"""The Debian packages the real runtimes need, installed with apt-get when missing."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Iterable

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


def ensure_packages() -> None:
    """apt-get install what is missing; 'apt-get update' only then (it is slow)."""
    missing = {pkg for cmd, pkg in PACKAGES.items() if not shutil.which(cmd)}
    if not shutil.which("containerd-shim-runc-v2"):
        missing.add("containerd")
    if not Path(CNI_BIN_DIR, "bridge").exists():
        missing.add("containernetworking-plugins")
    if not BUSYBOX.exists() or not is_static_elf(BUSYBOX):
        missing.add("busybox-static")
    if missing:
        apt_install(missing)


def apt_install(packages: Iterable[str], lock_timeout: float | None = None) -> None:
    """apt-get update, then install `packages` without recommends, non-interactively;
    with `lock_timeout`, wait that long for another dpkg run to finish."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-q"]
    if lock_timeout is not None:
        apt += ["-o", f"DPkg::Lock::Timeout={int(lock_timeout)}"]
    subprocess.run([*apt, "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*apt, "install", "-y", "--no-install-recommends", *sorted(packages)],
                   check=True, env=env, stdout=subprocess.DEVNULL)

