"""The front's end of one worker's ZeroMQ link (see protocol.py for the wire).

A WorkerLink knows whether its runtime can take calls right now. Calls to a
runtime that is not up fail at once with UNAVAILABLE; calls in flight when
the worker goes away fail at once too, instead of waiting for their deadline.
When to ping the worker, and when its silence means it is lost: liveness.py.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import struct
import time
from typing import Any, AsyncIterator, Callable

import grpc
import zmq

from criproxy.front.liveness import Liveness
from criproxy.settings import Config, Runtime
from criproxy.wire import answerlimit, protocol, tracecontext
from criproxy.wire.aiowait import wait_event
from criproxy.wire.protocol import RuntimeState
from criproxy.wire.zmqloop import LoopSocket

log = logging.getLogger("criproxy.front")

_STREAM_QUEUE = 1024
_FROM_WORKER = frozenset({protocol.PONG, protocol.REPLY, protocol.ERROR, protocol.ITEM,
                          protocol.END})
# A (re)made connection to a worker: ping it at once (libzmq 4.3 reports the
# handshake; older ones only the connection).
_CONNECTED = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)
_PING = [protocol.pack({"t": protocol.PING})]
_BAD_ANSWER_LOG_EVERY = 60.0


# gRPC sends a status message percent-encoded in a trailer, and clients refuse
# trailers over 8-16 KiB (grpc core: RESOURCE_EXHAUSTED, the real status lost).
_MESSAGE_LIMIT = 4096


def bounded_message(message: str, limit: int = _MESSAGE_LIMIT) -> str:
    """`message` with its middle elided, so that its percent-encoded form stays
    within `limit` bytes; its start and its end (often the explanation) are kept."""
    if len(message) * 12 <= limit:  # 4 UTF-8 bytes of 3 encoded bytes each, at worst
        return message
    head = _fitting(message, limit * 2 // 3)
    tail = _fitting(message[::-1], limit // 3 - 64)
    if head + tail >= len(message):
        return message
    elided = len(message) - head - tail
    return f"{message[:head]} ...({elided} characters elided)... {message[len(message) - tail:]}"


def _fitting(text: str, budget: int) -> int:
    """How many leading characters of `text` fit in `budget` percent-encoded bytes."""
    size = 0
    for index, char in enumerate(text):
        size += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode(errors="replace"))
        if size > budget:
            return index
    return len(text)


class CallError(Exception):
    """A call failed with this gRPC status; passed to kubelet as it is (bounded)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        message = bounded_message(message)
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


class _Pending:
    """A call or stream waiting for the worker's answer."""

    def __init__(self, stream: bool) -> None:
        self.sent_at = time.monotonic()
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.items: asyncio.Queue | None = asyncio.Queue(_STREAM_QUEUE) if stream else None
        self.deadline: asyncio.TimerHandle | None = None


class WorkerLink:
    _ids = itertools.count(secrets.randbits(48) << 16)

    def __init__(self, config: Config, runtime: Runtime, ctx: zmq.Context) -> None:
        self.runtime = runtime
        self.config = config
        self.state = RuntimeState.CONNECTING
        self.reason = "waiting for the worker's first heartbeat"
        self.since = time.time()
        self.worker_pid: int | None = None
        self.incarnation: str | None = None
        self.restarts = 0
        self.cri_version = ""
        self.last_error = ""
        self.bad_answers = 0
        self.last_bad_answer = ""
        self._bad_answer_logged = 0.0
        self._liveness = Liveness(config, self._send_ping, self._calls_waiting,
                                  lambda: self.state == RuntimeState.DOWN, self._worker_lost)
        self._pending: dict[int, _Pending] = {}
        self._sock = ctx.socket(zmq.DEALER)
        self._link: LoopSocket | None = None
        self._monitor: LoopSocket | None = None
        self._heartbeat: asyncio.Task | None = None
        self._up = asyncio.Event()
        self._started_at = 0.0
        self._settled = asyncio.Event()  # set once the runtime was first up or down
        # Called after every state change (the front updates gRPC health).
        self.on_state_change: Callable[[WorkerLink], None] | None = None

    @property
    def label(self) -> str:
        return self.runtime.label

    @property
    def is_up(self) -> bool:
        return self.state == RuntimeState.UP

    def start(self) -> None:
        # IMMEDIATE: never queue a request for a worker that is not connected;
        # it would reach a later incarnation long after its caller gave up.
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        monitor = self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | _CONNECTED)
        self._monitor = LoopSocket(monitor, self._on_monitor_event)
        self._sock.connect(self.config.worker_endpoint(self.runtime))
        self._link = LoopSocket(self._sock, self._on_frames)
        self._started_at = time.monotonic()
        self._heartbeat = asyncio.create_task(self._liveness.run())

    async def close(self) -> None:
        assert self._heartbeat is not None and self._link and self._monitor
        self._heartbeat.cancel()
        await asyncio.gather(self._heartbeat, return_exceptions=True)
        self._fail_pending("the front is shutting down")
        self._sock.disable_monitor()
        self._monitor.close()
        self._link.close()

    # --- state ---------------------------------------------------------------

    def _transition(self, state: RuntimeState, reason: str) -> None:
        if state == self.state and reason == self.reason:
            return
        # A runtime going down is the operator's business (journalctl -p warning).
        level = logging.WARNING if state == RuntimeState.DOWN else logging.INFO
        log.log(level, "runtime %s: %s -> %s: %s", self.label, self.state.value, state.value,
                reason)
        if state != RuntimeState.UP:
            self.last_error = reason
        self.state, self.reason, self.since = state, reason, time.time()
        if state != RuntimeState.CONNECTING:
            self._settled.set()
        if state == RuntimeState.UP:
            self._up.set()
        else:
            self._up.clear()
        if self.on_state_change is not None:
            self.on_state_change(self)

    def _worker_lost(self, reason: str) -> None:
        self._liveness.reset()
        self._transition(RuntimeState.DOWN, reason)
        self._fail_pending(reason)

    def _fail_pending(self, reason: str, older_than: float | None = None) -> None:
        error = CallError(grpc.StatusCode.UNAVAILABLE, f"runtime {self.label}: {reason}")
        for request_id, pending in list(self._pending.items()):
            if older_than is None or pending.sent_at < older_than:
                self._finish(request_id, pending, error)

    def _forget(self, request_id: int) -> _Pending | None:
        """Stop waiting for a call's answer (and disarm its deadline)."""
        pending = self._pending.pop(request_id, None)
        if pending is not None and pending.deadline is not None:
            pending.deadline.cancel()
        return pending

    def _finish(self, request_id: int, pending: _Pending, outcome: Any) -> None:
        self._forget(request_id)
        if pending.items is not None:
            _put_nowait_final(pending.items, outcome)
        elif not pending.future.done():
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    async def wait_up(self) -> None:
        await self._up.wait()

    async def wait_settled(self) -> None:
        """Until the runtime was first up or known down, or -startWait ran out."""
        await self._wait_first_start(None)

    def start_wait_left(self) -> float:
        """How long a call may still wait for this runtime's first start."""
        if self._settled.is_set():
            return 0.0
        return max(0.0, self._started_at + self.config.start_wait - time.monotonic())

    async def _wait_first_start(self, timeout: float | None) -> None:
        """Right after criproxy starts, a call to a runtime still connecting (its
        worker not reported yet, or dialing) waits until it is up or known down
        (-startWait, within the call's deadline): kubelet starts working as soon as
        Version answers, and the primary's answer comes first. Later, a runtime
        that is not up fails calls at once."""
        remaining = self.start_wait_left()
        if timeout is not None:
            remaining = min(remaining, timeout)
        if remaining > 0:
            await wait_event(self._settled, remaining)  # if not, _check_up says why

    # --- the worker's socket -------------------------------------------------

    def _send_ping(self) -> bool:
        assert self._link is not None
        try:
            self._link.send(_PING)
        except zmq.Again:
            return False
        return True

    def _calls_waiting(self) -> bool:
        """Unary calls in flight (a stream may wait for events for hours)."""
        return any(pending.items is None for pending in self._pending.values())

    def _on_monitor_event(self, frames: list[bytes]) -> None:
        # zmq.utils.monitor would parse it too, at the price of loading zmq.asyncio.
        event = struct.unpack("=Hi", frames[0][:6])[0]
        if event == zmq.EVENT_DISCONNECTED:
            self._worker_lost("worker disconnected (exited or restarting)")
        elif event & _CONNECTED:
            self._liveness.reset()  # ping the (new) worker now, not at the next heartbeat

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 1:
                raise protocol.ProtocolError(f"{len(frames)} frames, want 1")
            message = protocol.unpack(frames[0])
        except protocol.ProtocolError as err:
            log.warning("runtime %s: dropping a malformed frame: %s", self.label, err)
            return
        if message["t"] not in _FROM_WORKER:
            log.warning("runtime %s: dropping a %s frame: only the front sends those",
                        self.label, message["t"])
            return
        self._liveness.heard()
        self._on_message(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        if message["t"] == protocol.PONG:
            self._on_pong(message)
            return
        pending = self._pending.get(message["id"])
        if pending is None:
            return  # its caller already got an answer (deadline, lost worker)
        kind = message["t"]
        if kind == protocol.ITEM and pending.items is not None:
            self._queue_item(message["id"], pending, message["b"])
        elif kind == protocol.REPLY:
            self._finish(message["id"], pending, message["b"])
        elif kind == protocol.ERROR:
            self._finish(message["id"], pending, self._error(message))
        elif kind == protocol.END:
            self._finish(message["id"], pending, None)

    def _error(self, message: dict[str, Any]) -> CallError:
        """The worker's (code, message); an answer over -maxAnswerBytes is a bad one."""
        error = CallError(status_code(message["c"]), message["s"])
        if error.code == grpc.StatusCode.INTERNAL and \
                answerlimit.is_too_big(self.label, error.message):
            self.note_bad_answer(error.message)
        return error

    def _queue_item(self, request_id: int, pending: _Pending, item: bytes) -> None:
        """Queue a stream item; a reader that fell this far behind loses its stream."""
        assert pending.items is not None
        try:
            pending.items.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("runtime %s: stream %d reader too slow, dropping it", self.label,
                        request_id)
            self._finish(request_id, pending, CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"runtime {self.label}: stream reader too slow, {_STREAM_QUEUE} events queued"))

    def _on_pong(self, message: dict[str, Any]) -> None:
        self._liveness.answered()
        if message["inc"] != self.incarnation:
            self._on_new_incarnation(message)
        self.cri_version = message.get("v", "")
        self._transition(RuntimeState(message["st"]), message.get("r", ""))

    def _on_new_incarnation(self, message: dict[str, Any]) -> None:
        if self.incarnation is not None:
            self.restarts += 1
            # Calls sent before this worker started went to the old one and
            # will never be answered.
            started = time.monotonic() - float(message.get("up", 0))
            self._fail_pending("worker restarted", older_than=started)
        log.info("runtime %s: worker pid %s, incarnation %s", self.label, message["pid"],
                 message["inc"])
        self.incarnation, self.worker_pid = message["inc"], message["pid"]

    # --- calls ---------------------------------------------------------------

    def _check_up(self) -> None:
        if not self.is_up:
            raise CallError(grpc.StatusCode.UNAVAILABLE,
                            f"runtime {self.label} is {self.state.value}: {self.reason}")

    def _send(self, message: dict[str, Any], stream: bool) -> tuple[int, _Pending]:
        self._check_up()
        request_id = next(self._ids)
        message["id"] = request_id
        assert self._link is not None
        try:
            self._link.send([protocol.pack(message)])
        except zmq.Again:
            raise CallError(grpc.StatusCode.UNAVAILABLE,
                            f"runtime {self.label}: worker not connected") from None
        pending = _Pending(stream)
        self._pending[request_id] = pending
        if not stream:  # a stream's answer may be hours away: it proves nothing
            self._liveness.owe(pending.sent_at)
        return request_id, pending

    def _cancel(self, request_id: int) -> None:
        if self._forget(request_id) is not None:
            self._send_cancel(request_id)

    def _send_cancel(self, request_id: int) -> None:
        assert self._link is not None
        try:
            self._link.send([protocol.pack({"t": protocol.CANCEL, "id": request_id})])
        except zmq.ZMQError:
            pass  # the worker is gone; nothing left to cancel

    def _expire(self, request_id: int, method: str, timeout: float) -> None:
        pending = self._pending.get(request_id)
        if pending is not None:
            self._finish(request_id, pending, CallError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"runtime {self.label} did not answer {method} within {timeout:.3g}s"))
            self._send_cancel(request_id)

    async def call(self, method: str, body: bytes, timeout: float | None) -> bytes:
        """One unary call; raises CallError with the runtime's own status."""
        if not self.is_up:
            started = time.monotonic()
            await self._wait_first_start(timeout)
            if timeout is not None:
                timeout = max(timeout - (time.monotonic() - started), 0.001)
        request_id, pending = self._send(tracecontext.attach(
            {"t": protocol.CALL, "m": method, "b": body, "d": timeout}), stream=False)
        if timeout is not None:
            # A timer on the future itself: asyncio.wait_for would add a task per call.
            pending.deadline = asyncio.get_running_loop().call_later(
                timeout, self._expire, request_id, method, timeout)
        try:
            return await pending.future
        finally:
            self._cancel(request_id)

    async def stream(self, method: str, body: bytes) -> AsyncIterator[bytes]:
        """A server stream; ends normally, or raises CallError."""
        request_id, pending = self._send(tracecontext.attach(
            {"t": protocol.STREAM, "m": method, "b": body, "d": None}), stream=True)
        assert pending.items is not None
        try:
            while True:
                item = await pending.items.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._cancel(request_id)

    def note_bad_answer(self, message: str) -> None:
        """The runtime answered what criproxy cannot take (bytes that do not decode,
        a refused streaming URL, more than -maxAnswerBytes): counted, shown in status,
        and logged at most once a minute (a relist a second would flood the log)."""
        self.bad_answers += 1
        self.last_bad_answer = message
        now = time.monotonic()
        if now - self._bad_answer_logged >= _BAD_ANSWER_LOG_EVERY:
            self._bad_answer_logged = now
            log.warning("%s (%d bad answers so far)", message, self.bad_answers)

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.runtime.name, "label": self.label, "socket": self.runtime.socket,
                "state": self.state.value, "reason": self.reason, "since": self.since,
                "worker_pid": self.worker_pid, "restarts": self.restarts,
                "last_error": self.last_error, "cri_version": self.cri_version,
                "in_flight": len(self._pending), "bad_answers": self.bad_answers,
                "last_bad_answer": self.last_bad_answer}


def _put_nowait_final(queue: asyncio.Queue, outcome: Any) -> None:
    """The end of a stream must reach the reader even if the queue is full."""
    while True:
        try:
            queue.put_nowait(outcome)
            return
        except asyncio.QueueFull:
            queue.get_nowait()
