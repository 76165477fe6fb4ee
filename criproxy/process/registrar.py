"""A supervisord plugin that turns -runtimesDir into worker programs.

It watches the registration directory with inotify (a dispatcher in
supervisord's own poll loop, so nothing runs while nothing changes), and on
every change looks again (criproxy/registrations.py says what registers):

- a new registration gets a worker program of its own, `runtime-NAME`, made
  from the same [program:worker] section as the -connect workers; nothing
  else restarts;
- a registration whose socket entry is gone stays, down, for -leaveAfter: a
  restarting runtime removes and re-creates its socket; after that the
  runtime leaves: its worker is stopped and its program removed;
- a refused entry (bad name, name or handler taken, not a socket, owned by
  another user, a directory others can write, one runtime more than
  -maxRuntimes) is logged once and published.

What it decided is published in the runtime dir (registrations.publish) for
the front, `criproxy status` and `criproxy doctor`. Leaving is checked on
supervisord's 5-second tick, which also makes the watch again if the
directory was removed.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from supervisor import events
from supervisor.medusa import asyncore_25 as asyncore
from supervisor.options import ProcessGroupConfig, UnhosedConfigParser

from criproxy import registrations
from criproxy.inotify import DirectoryWatch
from criproxy.process.eventplugin import EventPlugin, install
from criproxy.registrations import Refusal, Registration
from criproxy.settings import ConfigError, load_settings_file

PROGRAM_PREFIX = "runtime-"
_WORKER_SECTION = "program:worker"
_INDEX_ARGUMENT = "--runtime-index %(process_num)d"


def program_name(runtime: str) -> str:
    return PROGRAM_PREFIX + runtime


class _WatchDispatcher:
    """The inotify fd as supervisord's loop sees a dispatcher."""

    def __init__(self, registrar: "Registrar", watch: DirectoryWatch) -> None:
        self.registrar, self.watch = registrar, watch

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        if self.watch.drain() is None:
            self.registrar.unwatch()
        self.registrar.look()

    def handle_error(self) -> None:
        self.registrar.log(f"watching {self.watch.path} failed; looking again on the next tick")
        self.registrar.unwatch()


class Registrar(EventPlugin):
    def __init__(self, supervisord: Any, settings_file: str) -> None:
        super().__init__([(events.Tick5Event, self._on_tick)])
        self._supervisord = supervisord
        self.config = load_settings_file(settings_file)
        self.directory = Path(self.config.runtimes_dir)
        self.rundir = Path(self.config.rundir)
        self._taken_names, self._taken_handlers = registrations.taken(self.config)
        self.known: dict[str, Registration] = {}
        self._refused: dict[str, str] = {}
        self._problem = ""
        self._watch_problem = ""
        self._published: tuple | None = None
        self._leaving: set[str] = set()  # programs being stopped, removed once stopped
        self._dispatcher: _WatchDispatcher | None = None

    def log(self, text: str, warn: bool = True) -> None:
        logger = self._supervisord.options.logger
        (logger.warn if warn else logger.info)(f"criproxy registrar: {text}")

    # --- watching -------------------------------------------------------------

    def start(self) -> None:
        self.watch()
        self.look()

    def watch(self) -> None:
        try:
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            watch = DirectoryWatch(str(self.directory))
        except OSError as err:
            self._watch_problem = f"cannot watch runtimes dir {self.directory}: {err}"
            return
        self._watch_problem = ""
        self._dispatcher = _WatchDispatcher(self, watch)
        asyncore.socket_map[watch.fd] = self._dispatcher

    def unwatch(self) -> None:
        if self._dispatcher is not None:
            asyncore.socket_map.pop(self._dispatcher.watch.fd, None)
            self._dispatcher.watch.close()
            self._dispatcher = None

    def forget(self) -> None:
        """A reload: supervisord closed every fd from 5 up already; drop ours unclosed."""
        if self._dispatcher is not None:
            fd = self._dispatcher.watch.fd
            if asyncore.socket_map.get(fd) is self._dispatcher:
                del asyncore.socket_map[fd]
            self._dispatcher = None

    def needs_tick(self) -> bool:
        """Only a runtime that may leave, a program still stopping, or a watch to
        make again needs a look on the tick; every other change comes as an inotify
        event (wakeup.py keeps supervisord's clock for those)."""
        return self._dispatcher is None or bool(self._leaving) or \
            any(r.missing_since is not None for r in self.known.values())

    def _on_tick(self, _event: Any) -> None:
        if not self.needs_tick():
            return
        if self._dispatcher is None:
            self.watch()
        self.look()

    # --- deciding -------------------------------------------------------------

    def look(self) -> None:
        """Scan, decide, act, publish; whatever goes wrong is logged, and looked at
        again on the next change or tick: it runs in supervisord's own loop, which
        an exception would end, and every program with it."""
        try:
            self._look()
        except Exception as err:  # noqa: BLE001 - see above
            self.log(f"cannot act on {self.directory} now: {type(err).__name__}: {err}")

    def _look(self) -> None:
        found = registrations.scan(self.directory, self._taken_names, self._taken_handlers)
        self._set_problem(found.problem or self._watch_problem)
        now = time.time()
        kept = {name: self._decide(name, found.registered.get(name), now)
                for name in self.known}
        kept = {name: reg for name, reg in kept.items() if reg is not None}
        # After the leaving: a place a runtime left is free for a newcomer at once.
        newcomers, over = registrations.within_limit(found.registered, set(kept),
                                                     self.config.max_runtimes)
        self._note_refusals(found.refused + over)
        for name, reg in newcomers.items():
            self._decide(name, reg, now)  # logs the registration
        self.known = dict(sorted({**kept, **newcomers}.items()))
        self._sync_programs()
        self._publish()

    def _publish(self) -> None:
        """Only what changed: the front wakes for every new list."""
        refused = [Refusal(e, r) for e, r in sorted(self._refused.items())]
        current = (tuple(self.known.values()), tuple(refused), self._problem)
        if current != self._published:
            registrations.publish(self.rundir, self.directory, list(self.known.values()),
                                  refused, self._problem)
            self._published = current

    def _decide(self, name: str, seen: Registration | None, now: float) -> Registration | None:
        before = self.known.get(name)
        if seen is not None:
            if before is None:
                self.log(f"runtime {name} registered ({seen.socket}"
                         f"{self._handlers_text(seen)}); starting its worker", warn=False)
            elif before.missing_since is not None:
                self.log(f"runtime {name}: its socket entry is back after "
                         f"{now - before.missing_since:.1f}s; it stays", warn=False)
            return seen
        assert before is not None
        if before.missing_since is None:
            self.log(f"runtime {name}: {before.socket} is gone; the runtime is down, and "
                     f"leaves unless it is back within {self.config.leave_after:g}s")
            return Registration(before.name, before.socket, before.handlers, now)
        if now - before.missing_since >= self.config.leave_after:
            self.log(f"runtime {name} left: {before.socket} has been gone for "
                     f"{now - before.missing_since:.0f}s; stopping its worker, and its pods "
                     "are no longer listed")
            return None
        return before

    @staticmethod
    def _handlers_text(registration: Registration) -> str:
        if not registration.handlers:
            return ""
        return "; RuntimeClass handlers " + ", ".join(map(str, registration.handlers))

    def _note_refusals(self, refused: list[Refusal]) -> None:
        current = {r.entry: r.reason for r in refused}
        for entry, reason in current.items():
            if self._refused.get(entry) != reason:
                self.log(f"refusing {self.directory / entry}: {reason}")
        self._refused = current

    def _set_problem(self, problem: str) -> None:
        if problem and problem != self._problem:
            self.log(f"{problem}; no runtime registers there until this is fixed")
        elif self._problem and not problem:
            self.log(f"runtimes dir {self.directory} is usable again", warn=False)
        self._problem = problem

    # --- programs ---------------------------------------------------------------

    def _sync_programs(self) -> None:
        """A program for each known runtime; a runtime back while its program was
        still stopping gets a new one once the old one is removed."""
        groups = self._supervisord.process_groups
        for program in [p for p in groups if p.startswith(PROGRAM_PREFIX)]:
            if program[len(PROGRAM_PREFIX):] not in self.known or program in self._leaving:
                self._remove_program(program)
        for name in self.known:
            if program_name(name) not in groups:
                self._add_program(name)

    def _add_program(self, name: str) -> None:
        try:
            self._supervisord.add_process_group(self._group_config(name))
        except (ValueError, ConfigError) as err:
            self.log(f"cannot make a worker program for runtime {name}: {err}")

    def _remove_program(self, program: str) -> None:
        """Stop it; remove it once stopped (this look or a later tick's)."""
        group = self._supervisord.process_groups[program]
        if program not in self._leaving:
            self._leaving.add(program)
            group.stop_all()
        if self._supervisord.remove_process_group(program):
            self._leaving.discard(program)

    def _group_config(self, name: str) -> ProcessGroupConfig:
        """[program:worker] of criproxy's own supervisord.conf, for this runtime alone."""
        options = self._supervisord.options
        rendered = UnhosedConfigParser()
        rendered.read(options.configfile)
        section = dict(rendered.items(_WORKER_SECTION))
        if _INDEX_ARGUMENT not in section["command"]:
            raise ConfigError(f"[{_WORKER_SECTION}] command has no {_INDEX_ARGUMENT!r}")
        section["command"] = section["command"].replace(_INDEX_ARGUMENT, f"--registered {name}")
        section.update(process_name="%(program_name)s", numprocs="1")
        program = program_name(name)
        parser = UnhosedConfigParser()
        parser.read_dict({f"program:{program}": section})
        processes = options.processes_from_section(parser, f"program:{program}", program)
        return ProcessGroupConfig(options, program, int(section.get("priority", 10)), processes)


_active: Registrar | None = None


def make_registrar(supervisord: Any, settings: str) -> object:
    """supervisord's rpcinterface factory; a reload replaces the previous registrar
    (supervisord runs its groups anew from the configuration, and this one adds
    the registered runtimes again)."""
    global _active
    if _active is not None:
        _active.forget()
    _active = Registrar(supervisord, settings)
    if _active.config.runtimes_dir:
        install("registrar", _active)
        _active.start()
    return _active
