"""What a `criproxy doctor` check finds, and the socket probe its checks share.

criproxy/ops/doctor.py and criproxy/ops/doctor_systemd.py both import this
module, and doctor.py imports doctor_systemd.py; neither imports the other back.
"""
from __future__ import annotations

import dataclasses
import socket
import stat
from pathlib import Path

TIMEOUT = 3.0
OK, WARN, FAIL = "ok", "WARN", "FAIL"


@dataclasses.dataclass
class Finding:
    level: str
    text: str
    fix: str = ""

    def __str__(self) -> str:
        line = f"{self.level:<4} {self.text}"
        return line + (f"\n     fix: {self.fix}" if self.fix else "")


def probe_socket(path: str) -> str:
    """Why nothing accepts connections at `path`; empty if something does."""
    p = Path(path)
    if not p.exists():
        return f"{path} does not exist"
    if not stat.S_ISSOCK(p.stat().st_mode):
        return f"{path} is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return f"nothing listens on {path} (a stale socket)"
    except OSError as err:
        return f"cannot connect to {path}: {err.strerror or err}"
    finally:
        probe.close()
    return ""
