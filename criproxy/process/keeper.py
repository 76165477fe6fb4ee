"""A supervisord plugin that keeps every program alive, or stops them all.

Loaded inside supervisord's own process (as an rpcinterface factory, the
plugin hook supervisord offers), so it costs no process of its own:

- PROCESS_STATE_FATAL: supervisord gave up starting a program and never
  retries it by itself; the keeper starts it again `retry_after` seconds
  later (checked on supervisord's 5-second tick), for as long as it takes.
  Meanwhile the front reports that runtime as down.
- A program that cannot boot (bad configuration) writes its reason to the
  runtime dir's boot-failure file and exits with code 2; when such a program
  exits (BACKOFF or EXITED), a restart cannot help, so the keeper shuts
  supervisord down and `criproxy` exits with that reason and code 2.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from supervisor import events
from supervisor.rpcinterface import SupervisorNamespaceRPCInterface
from supervisor.states import SupervisorStates
from supervisor.xmlrpc import RPCError

from criproxy.process.eventplugin import EventPlugin, install
from criproxy.settings import BOOT_FAILURE_FILE


def _namespec(process: Any) -> str:
    return f"{process.group.config.name}:{process.config.name}"


class Keeper(EventPlugin):
    def __init__(self, supervisord: Any, rundir: Path, retry_after: float) -> None:
        super().__init__([(events.ProcessStateFatalEvent, self._on_fatal),
                          (events.ProcessStateExitedEvent, self._on_exit),
                          (events.ProcessStateBackoffEvent, self._on_exit),
                          (events.Tick5Event, self._on_tick)])
        self._supervisord = supervisord
        self._rundir = rundir
        self._retry_after = retry_after
        self._due: dict[str, float] = {}

    def _log(self, text: str) -> None:
        self._supervisord.options.logger.warn(f"criproxy keeper: {text}")

    def _on_fatal(self, event: Any) -> None:
        name = _namespec(event.process)
        self._log(f"{name} is FATAL; starting it again in {self._retry_after:g}s")
        self._due[name] = time.monotonic() + self._retry_after

    def needs_tick(self) -> bool:
        return bool(self._due)

    def _on_tick(self, _event: Any) -> None:
        now = time.monotonic()
        for name, due in list(self._due.items()):
            if due <= now:
                del self._due[name]
                self._restart(name)

    def _restart(self, name: str) -> None:
        try:
            SupervisorNamespaceRPCInterface(self._supervisord).startProcess(name, False)
            self._log(f"started {name} again")
        except RPCError as err:
            self._log(f"cannot start {name}: {err.text}")

    def _on_exit(self, event: Any) -> None:
        failure = self._rundir / BOOT_FAILURE_FILE
        if not failure.exists():
            return
        self._log(f"{_namespec(event.process)} cannot boot ({failure.read_text().strip()}); "
                  "stopping criproxy instead of restarting it")
        self._supervisord.options.mood = SupervisorStates.SHUTDOWN


def make_keeper(supervisord: Any, rundir: str, retry_after: str) -> Keeper:
    """supervisord's rpcinterface factory; a reload replaces the previous keeper."""
    keeper = Keeper(supervisord, Path(rundir), float(retry_after))
    install("keeper", keeper)
    return keeper
