"""A supervisord plugin that wakes its main loop as soon as a signal arrives.

supervisord polls its file descriptors with a one-second timeout and acts on
the signals its handlers recorded (SIGTERM: stop everything; SIGCHLD: a
program exited) only when that poll returns. Python restarts a poll that a
signal interrupts, so every stop, and every restart of a crashed program,
waited up to a second per step for nothing. Here the signal wakes the poll:
Python writes a byte to a wakeup pipe (signal.set_wakeup_fd) for every signal,
and the pipe is one more dispatcher in supervisord's socket map, so the poll
returns at once and supervisord's loop reaps, and acts on the signal. The
same pipe starts the programs at once rather than after a first idle poll.
The handlers themselves still only record the signal; nothing else changes.

The same plugin lengthens that poll while nothing needs the clock: every
program RUNNING, STOPPED or FATAL, supervisord not stopping, no supervisorctl
connection open, no program added and not started yet, and no plugin waiting
for a tick (the keeper's retries, the
registrar's leave checks, the log relay's unfinished lines: see
`needs_tick()`). Then supervisord sleeps IDLE_POLL seconds between looks
instead of one, so an idle criproxy does not wake it every second; a signal,
a program's output or an inotify event still wakes it at once, and any
program in a state that goes by the clock (STARTING, BACKOFF, STOPPING,
EXITED) brings the one-second poll back.
"""
from __future__ import annotations

import os
import signal
from typing import Any

from supervisor.medusa import asynchat_25 as asynchat
from supervisor.medusa import asyncore_25 as asyncore
from supervisor.states import ProcessStates, SupervisorStates

from criproxy.process import eventplugin

# supervisord's poll timeout while nothing needs the clock (it is 1 s otherwise).
IDLE_POLL = 30.0
_STEADY = frozenset({ProcessStates.RUNNING, ProcessStates.STOPPED, ProcessStates.FATAL})


class SignalWakeup:
    """The read end of the wakeup pipe, as supervisord's loop sees a dispatcher."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        # supervisord's loop polls before it starts any program: without a
        # byte already waiting, every start of criproxy lost its first second.
        os.write(self.write_fd, b"\0")

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        """Drain the pipe; supervisord handles the recorded signals after the poll."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def handle_error(self) -> None:
        pass


_active: SignalWakeup | None = None


def settled(supervisord: Any) -> bool:
    """Nothing in supervisord needs its loop before something happens."""
    if supervisord.options.mood != SupervisorStates.RUNNING:
        return False
    for group in supervisord.process_groups.values():
        if any(_waits(process) for process in group.processes.values()):
            return False
    # A supervisorctl request in progress (a deferred answer is polled for).
    if any(isinstance(d, asynchat.async_chat) for d in asyncore.socket_map.values()):
        return False
    return not any(getattr(plugin, "needs_tick", lambda: True)()
                   for plugin in eventplugin.installed())


def _waits(process: Any) -> bool:
    """A program supervisord's loop acts on by the clock, or at its next turn: one
    starting, backing off, stopping, exited, or added (the registrar's) and never
    started yet."""
    state = process.get_state()
    if state not in _STEADY:
        return True
    return state == ProcessStates.STOPPED and not process.laststart and \
        bool(process.config.autostart)


def _lengthen_idle_polls(supervisord: Any) -> None:
    poller = supervisord.options.poller
    if getattr(poller, "criproxy_wrapped", False):
        return
    poll = poller.poll

    def idle_aware_poll(timeout: float) -> Any:
        if timeout >= 1 and settled(supervisord):
            timeout = IDLE_POLL
        return poll(timeout)

    poller.poll = idle_aware_poll
    poller.criproxy_wrapped = True


def make_wakeup(supervisord: Any) -> object:
    """supervisord's rpcinterface factory; a reload replaces the previous pipe. The
    reload closed its fds already (supervisord closes every fd from 5 up), and their
    numbers may be another's by now: forget them, never close them."""
    global _active
    if _active is not None and asyncore.socket_map.get(_active.read_fd) is _active:
        del asyncore.socket_map[_active.read_fd]
    _active = SignalWakeup()
    asyncore.socket_map[_active.read_fd] = _active
    _lengthen_idle_polls(supervisord)
    return object()
