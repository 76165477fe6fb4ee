"""Children of supervisord end when it does, even if it is killed with SIGKILL.

supervisord stops its programs when asked to, but a SIGKILLed supervisord
would leave the front and the workers running, still holding the sockets a
restarted criproxy needs. The kernel's parent-death signal closes that gap.
"""
from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask for SIGTERM when the parent dies; exit now if it already has."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request took effect
        raise SystemExit("criproxy: supervisord is gone; exiting")
