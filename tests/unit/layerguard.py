"""The unit layer's rule, enforced: a unit test starts no process and opens no socket.

An audit hook (PEP 578) sees every process Python starts (subprocess, fork, exec,
spawn, system) and every address a Python socket binds or connects to; zmq's and
grpc's sockets live in C, so their entry points are watched instead. A forbidden
call raises `LayerViolation` where it is made, and is also recorded, so a test
that catches the exception still fails (tests/unit/conftest.py). After each test,
a socket left open or a child process left running fails it too: they would come
from a path none of the above sees.

Anonymous socket pairs (asyncio's self-pipe) are allowed: they reach nothing.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn",
                            "os.spawn", "os.exec", "os.system", "pty.spawn"})
SOCKET_EVENTS = frozenset({"socket.bind", "socket.connect"})


class LayerViolation(RuntimeError):
    """A unit test started a process or opened a socket: it belongs to tests/process/."""


class Guard:
    """Armed only while a unit test runs; an audit hook cannot be removed, so it stays
    installed and does nothing when disarmed."""

    def __init__(self) -> None:
        self.armed = False
        self.violations: list[str] = []

    def install(self) -> None:
        sys.addaudithook(self._audit)
        self._watch_c_sockets()

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed:
            return
        if event in PROCESS_EVENTS:
            self.refuse(f"started a process ({event} {_short(args)})")
        elif event in SOCKET_EVENTS:
            self.refuse(f"opened a socket ({event} {_short(args[1:])})")

    def refuse(self, what: str) -> None:
        self.violations.append(what)
        self.armed = False  # the failure's own report must not trip the guard
        try:
            raise LayerViolation(f"a unit test {what}: move it to tests/process/")
        finally:
            self.armed = True

    def _watch_c_sockets(self) -> None:
        import grpc
        import grpc.aio
        import zmq
        channels = ("server", "insecure_channel", "secure_channel")
        for label, owner, names in (("grpc", grpc, channels), ("grpc.aio", grpc.aio, channels),
                                    ("zmq.Socket", zmq.Socket, ("bind", "connect"))):
            for name in names:
                setattr(owner, name, self._watched(getattr(owner, name), f"{label}.{name}"))

    def _watched(self, function: Any, label: str) -> Any:
        def watched(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.refuse(f"opened a socket ({label})")
            return function(*args, **kwargs)
        return watched

    @contextmanager
    def around_test(self) -> Iterator[list[str]]:
        """Armed for the test's setup, call and teardown; yields what it left behind
        (filled in at the end): a socket still open, a child process still running."""
        sockets, children = open_sockets(), child_pids()
        left: list[str] = []
        self.violations.clear()
        self.armed = True
        try:
            yield left
        finally:
            self.armed = False
        left += [f"left a socket open ({s})" for s in sorted(open_sockets() - sockets)]
        left += [f"left a child process running (pid {p})"
                 for p in sorted(child_pids() - children)]


def open_sockets() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def child_pids() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                found |= {int(p) for p in f.read().split()}
        except OSError:
            continue
    return found


def _short(args: tuple[Any, ...]) -> str:
    return repr(args)[:120]


GUARD = Guard()
GUARD.install()
