"""A worker's one gRPC connection to its runtime, and that runtime's state.

The channel forwards request bytes without decoding them (no serializers).
Its state follows gRPC's connectivity: READY is UP; a refused or missing
socket (TRANSIENT_FAILURE) is DOWN; anything else is CONNECTING. Calls made
while the runtime is not UP fail at once with UNAVAILABLE naming the runtime,
instead of waiting for a socket that is not there. An answer over -maxAnswerBytes
is the runtime's bad answer (INTERNAL naming it: criproxy/wire/answerlimit.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Callable

import grpc
import grpc.aio

from criproxy.settings import Runtime
from criproxy.wire import answerlimit
from criproxy.wire.protocol import RuntimeState

log = logging.getLogger("criproxy.worker")

Metadata = tuple[tuple[str, str], ...]

# Requests are kubelet's, at most its own 16 MiB; answers are bounded by -maxAnswerBytes.
MAX_REQUEST = 64 * 1024 * 1024
# Reconnect quickly after a runtime restart: gRPC's default backoff grows to
# two minutes, which would keep a restarted runtime unused for that long. At
# most 0.5 s (0.6 s with gRPC's jitter) between tries, so that a runtime whose
# socket answers again is used within a second; while it is down that is two
# connect() calls a second.
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_REQUEST),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
_VERSION = "/runtime.{}.RuntimeService/Version"
# Newest first: a runtime that lacks v1 (UNIMPLEMENTED) may still speak v1alpha2.
_CRI_VERSIONS = ("v1", "v1alpha2")
# The CRI has about 50 methods; the bound only keeps stray names from growing it.
_CACHED_METHODS = 256
# How often a connected runtime that refused Version is asked again.
_REPROBE_AFTER = 0.5
# How long an UNAVAILABLE call waits to see whether the connection itself broke.
_CONNECTION_LOST_GRACE = 0.1


class CallFailed(Exception):
    """A runtime call failed; carries the gRPC code and message unchanged."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RuntimeConnection:
    def __init__(self, runtime: Runtime, max_answer_bytes: int) -> None:
        self.runtime = runtime
        self.max_answer_bytes = max_answer_bytes
        self.state = RuntimeState.CONNECTING
        self.reason = "starting"
        self.cri_version = ""
        self.since = time.monotonic()
        self._channel = grpc.aio.insecure_channel(runtime.address, options=[
            *_CHANNEL_OPTIONS, ("grpc.max_receive_message_length", max_answer_bytes)])
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        # Called after every state change (the worker tells the front at once).
        self.on_change: Callable[[], None] | None = None

    def _transition(self, state: RuntimeState, reason: str) -> None:
        if state == self.state and reason == self.reason:
            return
        log.info("runtime %s (%s): %s -> %s: %s", self.runtime.label, self.runtime.address,
                 self.state.value, state.value, reason)
        self.state, self.reason, self.since = state, reason, time.monotonic()
        if self.on_change is not None:
            self.on_change()

    async def watch(self) -> None:
        """Follow the channel's connectivity forever, keeping it connected."""
        last = None
        while True:
            current = self._channel.get_state(try_to_connect=True)
            if current != last or self._refused_version(current):
                await self._on_connectivity(current)
                last = current
            await self._next_change(current)

    def _refused_version(self, connectivity: grpc.ChannelConnectivity) -> bool:
        """Connected, but the runtime did not answer Version: a containerd that
        serves its socket before its CRI plugin has recovered its state answers
        "server is not initialized yet" for a moment, and the channel stays READY."""
        return connectivity == grpc.ChannelConnectivity.READY and \
            self.state == RuntimeState.DOWN

    async def _next_change(self, connectivity: grpc.ChannelConnectivity) -> None:
        """Until the channel's state changes; while it is connected to a runtime that
        refused Version, at most _REPROBE_AFTER, to ask again."""
        change = self._channel.wait_for_state_change(connectivity)
        if not self._refused_version(connectivity):
            await change
            return
        try:
            await asyncio.wait_for(change, _REPROBE_AFTER)
        except asyncio.TimeoutError:
            pass

    async def _on_connectivity(self, connectivity: grpc.ChannelConnectivity) -> None:
        if connectivity == grpc.ChannelConnectivity.READY:
            await self._confirm_up()
        elif connectivity == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            self._transition(RuntimeState.DOWN, f"cannot connect to {self.runtime.socket}")
        elif self.state != RuntimeState.DOWN:
            self._transition(RuntimeState.CONNECTING, f"connecting to {self.runtime.socket}")

    async def _confirm_up(self) -> None:
        """A connected socket is not yet a CRI runtime: find the CRI version it speaks."""
        for version in _CRI_VERSIONS:
            try:
                await self._raw_call(_VERSION.format(version), b"", timeout=5.0)
            except CallFailed as err:
                if err.code == grpc.StatusCode.UNIMPLEMENTED:
                    continue
                self._transition(RuntimeState.DOWN,
                                 f"Version failed: {err.code.name}: {err.message}")
                return
            self.cri_version = version
            self._transition(RuntimeState.UP, f"connected, speaks CRI {version}")
            return
        self._transition(RuntimeState.DOWN, "speaks neither CRI v1 nor v1alpha2")

    def _path(self, method: str) -> str:
        """The front always names v1 methods; a v1alpha2 runtime has them under its own."""
        if self.cri_version == "v1alpha2":
            return method.replace("/runtime.v1.", "/runtime.v1alpha2.", 1)
        return method

    def _check_up(self) -> None:
        if self.state != RuntimeState.UP:
            raise CallFailed(grpc.StatusCode.UNAVAILABLE,
                             f"runtime {self.runtime.label} ({self.runtime.socket}) is "
                             f"{self.state.value}: {self.reason}")

    async def call(self, method: str, body: bytes, timeout: float | None,
                   metadata: Metadata | None = None) -> bytes:
        """`metadata`: the call's trace context (criproxy/wire/tracecontext.py), nothing else."""
        self._check_up()
        return await self._raw_call(self._path(method), body, timeout, metadata)

    async def _raw_call(self, method: str, body: bytes, timeout: float | None,
                        metadata: Metadata | None = None) -> bytes:
        callable_ = self._unary.get(method)
        if callable_ is None:
            callable_ = self._channel.unary_unary(method)
            if len(self._unary) < _CACHED_METHODS:
                self._unary[method] = callable_
        try:
            return await callable_(body, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            raise await self._failed(method, err) from None

    async def _failed(self, method: str, err: grpc.aio.AioRpcError) -> CallFailed:
        """The runtime's own errors pass unchanged; a broken connection names the
        runtime, and so does an answer over -maxAnswerBytes, which is its fault."""
        details = err.details() or ""
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            size = answerlimit.refused_size(details, self.max_answer_bytes)
            if size is not None:
                return CallFailed(grpc.StatusCode.INTERNAL, answerlimit.too_big(
                    self.runtime.label, method, size, self.max_answer_bytes))
        if err.code() == grpc.StatusCode.UNAVAILABLE and not await self._still_connected():
            details = (f"runtime {self.runtime.label} ({self.runtime.socket}): "
                       f"connection lost: {details}")
        return CallFailed(err.code(), details)

    async def _still_connected(self) -> bool:
        """The runtime's own UNAVAILABLE leaves the channel READY; a runtime that exited
        mid-call ("Socket closed") does not, though the channel may lag a few ms."""
        ready = grpc.ChannelConnectivity.READY
        if self._channel.get_state() != ready:
            return False
        try:
            await asyncio.wait_for(self._channel.wait_for_state_change(ready),
                                   _CONNECTION_LOST_GRACE)
        except asyncio.TimeoutError:
            return True
        return self._channel.get_state() == ready

    async def stream(self, method: str, body: bytes, timeout: float | None,
                     metadata: Metadata | None = None) -> AsyncIterator[bytes]:
        self._check_up()
        call = self._channel.unary_stream(self._path(method))(body, timeout=timeout,
                                                              metadata=metadata)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise await self._failed(method, err) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()

