"""Whether a worker still answers, found with as few pings as will do.

A worker that exits is noticed at once (its WorkerLink's socket monitor), and a
worker reports its runtime's changes itself (an unasked pong), so an idle link
costs one ping per -idleProbe. While calls are in flight, or until the worker
has answered since it (re)connected, it is pinged every -heartbeat: a worker
that owes an answer for -workerTimeout is lost. Pings are answered by the
worker's loop, never behind a runtime call: a hung runtime never makes its
worker look hung.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from criproxy.settings import Config
from criproxy.wire.aiowait import wait_event


class Liveness:
    """One worker's heartbeats; its WorkerLink says what it hears and sends.

    `ping` sends a ping (False: the worker is not connected), `calls_waiting`
    says whether unary calls are in flight, `is_down` whether the runtime counts
    as down already, and `lost(reason)` is called when the worker stayed silent."""

    def __init__(self, config: Config, ping: Callable[[], bool],
                 calls_waiting: Callable[[], bool], is_down: Callable[[], bool],
                 lost: Callable[[str], None]) -> None:
        self._config = config
        self._send_ping = ping
        self._calls_waiting = calls_waiting
        self._is_down = is_down
        self._lost = lost
        # When the oldest ping or call the worker has not answered since it was last
        # heard from was sent; None: nothing owed. Any frame from it clears it.
        self._owed_since: float | None = None
        # Heard from the worker since its connection was (re)made or it was lost.
        self.answering = False
        self._wake = asyncio.Event()
        self._idle = False  # the loop sleeps -idleProbe: wake it on a call

    def heard(self) -> None:
        """Any frame from the worker: it owes nothing any more."""
        self._owed_since = None

    def answered(self) -> None:
        """A pong: the worker answers since it (re)connected."""
        self.answering = True

    def owe(self, since: float) -> None:
        """A call was sent at `since`: heartbeats while it is in flight."""
        if self._owed_since is None:
            self._owed_since = since
        if self._idle:
            self._wake_up()

    def reset(self) -> None:
        """The connection was (re)made or lost: ping now, and every -heartbeat until
        the worker (or its successor) answers."""
        self.answering = False
        self._owed_since = None
        self._wake_up()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pinged_at = -1e9
        while True:
            self._judge()
            busy = self._calls_waiting() or not self.answering
            interval = self._config.heartbeat if busy else self._config.idle_probe
            now = time.monotonic()
            if now >= pinged_at + interval - 0.001:
                pinged_at = now
                if self._ping() and not busy:
                    # Judge the idle ping's answer in time, not at the next probe.
                    loop.call_later(self._config.worker_timeout + 0.05, self._judge)
            self._idle = not busy
            await wait_event(self._wake, max(0.001, pinged_at + interval - time.monotonic()))
            self._wake.clear()
            self._idle = False

    def _ping(self) -> bool:
        if not self._send_ping():
            return False  # not connected: the monitor says when it is
        if self._owed_since is None:
            self._owed_since = time.monotonic()
        return True

    def _judge(self) -> None:
        owed = self._owed_since
        if owed is None or self._is_down():
            return
        silent = time.monotonic() - owed
        if silent > self._config.worker_timeout:
            self._lost(f"worker silent for {silent:.1f}s")

    def _wake_up(self) -> None:
        self._idle = False
        self._wake.set()
