"""The front's side of -runtimesDir: it follows what the registrar published.

supervisord's registrar (process/registrar.py) decides which registered
runtimes there are and starts their workers; it publishes that list in the
runtime dir. The front reads it when it starts (so a restarted front routes
to every registered runtime from its first call) and again whenever it is
replaced (an inotify watch on the runtime dir, read only for that file):
a runtime that joins gets a WorkerLink and is routed to; one that left is
routed to no more.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from criproxy.inotify import IN_MOVED_TO, DirectoryWatch
from criproxy.registrations import PUBLISHED, Registration, published_registrations
from criproxy.settings import Config, ConfigError

log = logging.getLogger("criproxy.front")


class Routing(Protocol):
    def join(self, registration: Registration) -> None: ...

    async def leave(self, name: str) -> None: ...

    def set_handlers(self, registration: Registration) -> None: ...


class Registered:
    def __init__(self, front: Routing, config: Config) -> None:
        self.front = front
        self.rundir = Path(config.rundir)
        self.enabled = bool(config.runtimes_dir)
        self.runtimes: dict[str, Registration] = {}
        self._watch: DirectoryWatch | None = None
        self._leaving: set[asyncio.Task] = set()

    def join_published(self) -> None:
        """At start: every runtime registered now (before the links start)."""
        if self.enabled:
            self._apply()

    def watch(self) -> None:
        if not self.enabled:
            return
        self._watch = DirectoryWatch(str(self.rundir), IN_MOVED_TO)
        asyncio.get_running_loop().add_reader(self._watch.fd, self._on_change)
        self._apply()  # what changed between the first read and the watch

    def unwatch(self) -> None:
        if self._watch is not None:
            asyncio.get_running_loop().remove_reader(self._watch.fd)
            self._watch.close()
            self._watch = None

    def _on_change(self) -> None:
        assert self._watch is not None
        names = self._watch.drain()
        if names is None or PUBLISHED in names:
            self._apply()

    def _apply(self) -> None:
        try:
            wanted = published_registrations(self.rundir)
        except ConfigError as err:
            log.warning("%s; the registered runtimes stay as they were", err)
            return
        for name in [n for n in self.runtimes if n not in wanted]:
            log.warning("runtime %s left (no longer registered): no longer routed to", name)
            self._leave_soon(name)
        for name, registration in wanted.items():
            before = self.runtimes.get(name)
            if before is None:
                log.info("runtime %s registered (%s): routed to from now on", name,
                         registration.socket)
                self.front.join(registration)
            elif before.handlers != registration.handlers:
                self.front.set_handlers(registration)
        self.runtimes = wanted

    def _leave_soon(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self.front.leave(name))
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)
