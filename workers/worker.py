"""A worker: serves the front's requests for one runtime over ZeroMQ.

Each call runs as its own asyncio task, so a slow runtime call never delays
another one, nor the heartbeat answers that the receive loop gives directly.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from typing import Any

import grpc
import zmq

from criproxy.ops import spans
from criproxy.settings import Config, Runtime
from criproxy.wire import protocol, tracecontext
from criproxy.wire.zmqloop import LoopSocket
from workers.runtime_connection import CallFailed, RuntimeConnection

log = logging.getLogger("criproxy.worker")

# Fronts remembered to be told of state changes; one runs at a time, a restarted
# one is a new peer.
_PEERS_KEPT = 4


class Worker:
    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.runtime = runtime
        self.endpoint = config.worker_endpoint(runtime)
        self.socket_path = config.worker_socket(runtime)
        self.incarnation = secrets.token_hex(8)
        self.started = time.monotonic()
        self.connection = RuntimeConnection(runtime, config.max_answer_bytes)
        self.tracer = spans.load_tracer(config.otlp_endpoint, "worker", runtime.label)
        self._tasks: dict[tuple[bytes, int], asyncio.Task] = {}
        self._stop = asyncio.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._link: LoopSocket | None = None
        # The fronts heard from (a front's restart makes a new peer), newest last:
        # told of every change of the runtime's state without being asked.
        self._peers: dict[bytes, None] = {}

    def _bind(self) -> None:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.bind(self.endpoint)
        os.chmod(self.socket_path, 0o600)

    @classmethod
    async def serve(cls, config: Config, runtime: Runtime) -> None:
        """Build the worker inside the event loop (grpc.aio binds to it) and run it."""
        await cls(config, runtime).run()

    async def run(self) -> None:
        self._bind()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        log.info("worker for runtime %s (%s) serving %s, incarnation %s", self.runtime.label,
                 self.runtime.address, self.endpoint, self.incarnation)
        self._link = LoopSocket(self._sock, self._on_frames)
        self.connection.on_change = self._tell_fronts
        watcher = asyncio.create_task(self.connection.watch())
        await self._stop.wait()
        log.info("worker for runtime %s stopping", self.runtime.label)
        self._link.close()
        for task in (watcher, *self._tasks.values()):
            task.cancel()
        await asyncio.gather(watcher, *self._tasks.values(), return_exceptions=True)
        await self.connection.close()
        if self.tracer is not None:
            self.tracer.close()
        self._ctx.destroy(linger=0)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("dropping a message of %d frames (want 2)", len(frames))
            return
        peer, frame = frames
        if peer not in self._peers:
            self._peers[peer] = None
            while len(self._peers) > _PEERS_KEPT:
                del self._peers[next(iter(self._peers))]
        try:
            message = protocol.unpack(frame)
        except protocol.ProtocolError as err:
            log.warning("dropping a malformed frame: %s", err)
            return
        try:
            self._dispatch(peer, message)
        except Exception:  # noqa: BLE001 - one bad message must not deafen the worker
            log.exception("dropping a %s message that could not be handled",
                          str(message.get("t"))[:100])

    def _dispatch(self, peer: bytes, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == protocol.PING:
            self._send(peer, self._pong())
        elif kind in (protocol.CALL, protocol.STREAM):
            self._start_task(peer, message)
        elif kind == protocol.CANCEL:
            task = self._tasks.get((peer, message["id"]))
            if task is not None:
                task.cancel()
        else:
            log.warning("dropping a %s message: workers do not take it", kind)

    def _start_task(self, peer: bytes, message: dict[str, Any]) -> None:
        key = (peer, message["id"])
        run = self._serve_call if message["t"] == protocol.CALL else self._serve_stream
        task = asyncio.create_task(run(peer, message))
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    def _tell_fronts(self) -> None:
        """The runtime's state changed: an unasked pong to every front heard from,
        so that the front need not ask all the time (a gone peer's is dropped)."""
        if self._link is None or self._link.sock.closed:
            return
        pong = self._pong()
        for peer in list(self._peers):
            self._send(peer, pong)

    def _pong(self) -> dict[str, Any]:
        conn = self.connection
        return {"t": protocol.PONG, "inc": self.incarnation, "pid": os.getpid(),
                "up": time.monotonic() - self.started, "st": conn.state.value,
                "r": conn.reason, "v": conn.cri_version}

    def _send(self, peer: bytes, message: dict[str, Any]) -> None:
        assert self._link is not None
        try:
            self._link.send([peer, protocol.pack(message)])
        except zmq.ZMQError as err:
            log.warning("cannot send %s to the front: %s", message["t"], err)

    def _error(self, request_id: int, code: grpc.StatusCode, text: str) -> dict[str, Any]:
        return {"t": protocol.ERROR, "id": request_id, "inc": self.incarnation,
                "c": code.value[0], "s": text}

    def _span(self, message: dict[str, Any]) -> tracecontext.Span:
        """This worker's span of a call, or the front's trace context passing through."""
        return tracecontext.begin(self.tracer, message["m"], tracecontext.from_envelope(message))

    async def _serve_call(self, peer: bytes, message: dict[str, Any]) -> None:
        request_id = message["id"]
        try:
            with self._span(message) as span:
                body = await self.connection.call(message["m"], message["b"], message.get("d"),
                                                  span.metadata)
        except CallFailed as err:
            self._send(peer, self._error(request_id, err.code, err.message))
            return
        except Exception as err:  # a bug must still answer, or the caller waits
            log.exception("call %s failed", message["m"])
            self._send(peer, self._error(request_id, grpc.StatusCode.INTERNAL, repr(err)))
            return
        self._send(peer, {"t": protocol.REPLY, "id": request_id, "inc": self.incarnation,
                          "b": body})

    async def _serve_stream(self, peer: bytes, message: dict[str, Any]) -> None:
        request_id = message["id"]
        try:
            with self._span(message) as span:
                async for item in self.connection.stream(message["m"], message["b"],
                                                         message.get("d"), span.metadata):
                    self._send(peer, {"t": protocol.ITEM, "id": request_id,
                                      "inc": self.incarnation, "b": item})
        except CallFailed as err:
            self._send(peer, self._error(request_id, err.code, err.message))
            return
        self._send(peer, {"t": protocol.END, "id": request_id, "inc": self.incarnation})
