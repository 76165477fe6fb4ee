"""One criproxy per listen socket and per runtime dir.

A second criproxy started by mistake (a second unit, a hand-run test) must
stop at once with a one-line reason, not unlink the first one's socket and
take kubelet over, nor share its runtime dir (worker sockets, record files).
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from criproxy.settings import ConfigError

LOCK_FILE = "criproxy.lock"
_held: list[int] = []  # lock fds, open for the life of the process


def refuse_live_socket(path: Path) -> None:
    """A -listen path may be replaced only if it is a socket nobody serves (left by a
    crash); anything else is refused."""
    if path.is_symlink() or (path.exists() and not path.is_socket()):
        raise ConfigError(f"-listen {path} exists and is not a socket; not removing it")
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return  # nobody listens: a stale socket
    finally:
        probe.close()
    raise ConfigError(f"-listen {path} is served by a running process (another criproxy?); "
                      "not taking it over")


def hold_rundir(rundir: Path) -> None:
    """Lock the runtime dir for as long as this process lives (the lock ends with it,
    however it ends, so a crash never leaves a stale lock behind)."""
    fd = os.open(rundir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"criproxy already runs with -rundir {rundir}") from None
    _held.append(fd)
