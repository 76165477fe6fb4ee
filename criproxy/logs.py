"""Logging set-up shared by the front and the workers.

`-v N` keeps the original's meaning: request lines are logged only when the
verbosity reaches the level the routing table gives their method.

Every line starts with its syslog priority as `<N>` (sd-daemon(3)'s
convention): supervisord's log relay (criproxy/process/logrelay.py) reads it to give
the journal the line's priority, and strips it everywhere else.
"""
from __future__ import annotations

import logging
import sys

_verbosity = 0

# syslog priorities: crit, err, warning, info, debug.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))


def priority(levelno: int) -> int:
    """The syslog priority of a Python logging level."""
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7


class PriorityFormatter(logging.Formatter):
    """Prefixes every line of a record (a traceback too) with its priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def setup(role: str, verbosity: int) -> None:
    """Log to stderr (supervisord relays it); every line names its process."""
    global _verbosity
    _verbosity = verbosity
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PriorityFormatter(
        f"%(asctime)s %(levelname).1s {role}[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 6 else logging.INFO)


def enabled(level: int) -> bool:
    return _verbosity >= level
