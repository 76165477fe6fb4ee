"""A plain ZeroMQ socket driven by the asyncio loop, for the front and the workers.

pyzmq's asyncio sockets wrap every send and receive in futures and poller
bookkeeping; the benchmark measured that at 15-20 % of a proxied call's CPU
(bench/README.md). Here the loop watches the socket's ZMQ_FD and a callback
takes whole messages as they come.

ZMQ_FD is edge-triggered: it signals a change of ZMQ_EVENTS, and any send or
receive may consume that change. So after each send, and after each wake-up,
ZMQ_EVENTS is read again until no message is waiting.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import zmq

log = logging.getLogger("criproxy.zmq")

# Messages taken per turn of the loop, so that a flood on one socket cannot
# starve the other callbacks (gRPC, heartbeats) of the same loop.
_BATCH = 64


class LoopSocket:
    """Calls `on_frames(frames)` for each message that arrives on `sock`."""

    def __init__(self, sock: zmq.Socket, on_frames: Callable[[list[bytes]], None]) -> None:
        self.sock = sock
        self._on_frames = on_frames
        self._loop = asyncio.get_running_loop()
        self._draining = False
        self._drain_scheduled = False
        self._fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        # A socket that has queued commands before anyone read ZMQ_EVENTS does
        # not signal its FD again (a monitor socket then never reports a lost
        # peer): read ZMQ_EVENTS once to arm it.
        self._schedule_drain()

    def send(self, frames: list[bytes]) -> None:
        """Send without blocking; raises zmq.Again when ZeroMQ cannot queue it."""
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        finally:
            self._schedule_drain()  # a refused send may have consumed an edge too

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and not self._draining:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self.sock.closed:
            return
        self._draining = True
        try:
            for _ in range(_BATCH):
                if not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                self._take_one()
        finally:
            self._draining = False
        self._schedule_drain()  # more may be waiting: finish on the next turn

    def _take_one(self) -> None:
        try:
            frames = self.sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            self._on_frames(frames)
        except Exception:  # noqa: BLE001 - one bad message must not deafen the socket
            log.exception("dropping a message that could not be handled")

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self.sock.close(linger=0)
