"""Logging set-up shared by the front and the workers.

`-v N` keeps the original's meaning: request lines are logged only when the
verbosity reaches the level the routing table gives their method.
"""
from __future__ import annotations

import logging
import sys

_verbosity = 0


def setup(role: str, verbosity: int) -> None:
    """Log to stderr (supervisord forwards it); every line names its process."""
    global _verbosity
    _verbosity = verbosity
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname).1s {role}[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 6 else logging.INFO)


def enabled(level: int) -> bool:
    return _verbosity >= level
