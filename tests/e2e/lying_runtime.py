"""A man in the middle that makes a real runtime lie (tests/e2e/test_e2e_tenants.py).

It serves CRI on a unix socket and forwards every call, byte for byte, to a real
runtime's socket: unary calls and the GetContainerEvents stream, of any CRI
version (it never decodes, so runtime.v1 and runtime.v1alpha2 paths pass
alike). What it is told to say is appended to the runtime's answers of one
method: protobuf concatenation, so a serialized ListPodSandboxResponse of one
item appended to the real answer adds that item to it. Runs in the test's
process; the test switches its lies on and off.
"""
from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc

STREAMING = "GetContainerEvents"   # the only server-streaming CRI method
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
# A deadline further off than this is grpc's way of saying "none".
NO_DEADLINE = 24 * 3600.0
# Headers grpc sets itself on every call; the forwarded call gets its own.
OWN_HEADERS = ("user-agent", "grpc-", ":")


def method_of(path: str) -> str:
    """/runtime.v1.RuntimeService/ListPodSandbox -> ListPodSandbox."""
    return path.rpartition("/")[2]


def forwarded_metadata(context: grpc.ServicerContext) -> list[tuple[str, str | bytes]]:
    """The caller's metadata (kubelet's trace context, say), less grpc's own headers."""
    return [(key, value) for key, value in context.invocation_metadata()
            if not key.startswith(OWN_HEADERS)]


def remaining(context: grpc.ServicerContext) -> float | None:
    left = context.time_remaining()
    return None if left is None or left > NO_DEADLINE else left


class LyingRuntime(grpc.GenericRpcHandler):
    def __init__(self, socket: Path, upstream: str) -> None:
        self.socket = socket
        self._upstream = grpc.insecure_channel(upstream, options=GRPC_OPTIONS)
        # Each open event stream holds a thread for as long as it runs.
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                                   options=GRPC_OPTIONS)
        self._server.add_generic_rpc_handlers((self,))
        self._server.add_insecure_port(f"unix://{socket}")
        self._lock = threading.Lock()
        self._lies: dict[str, bytes] = {}

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> LyingRuntime:
        self._server.start()
        return self

    def stop(self) -> None:
        # No grace: open event streams would hold the stop up; cancelling them
        # cancels their forwarded streams too.
        self._server.stop(grace=None).wait()
        self._upstream.close()
        self.socket.unlink(missing_ok=True)

    def lie(self, additions: dict[str, bytes]) -> None:
        """From now on, append additions[METHOD] to every answer of METHOD."""
        with self._lock:
            self._lies = dict(additions)

    def tell_truth(self) -> None:
        self.lie({})

    def _addition(self, path: str) -> bytes:
        with self._lock:
            return self._lies.get(method_of(path), b"")

    # --- forwarding ----------------------------------------------------------------

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = details.method
        if method_of(path) == STREAMING:
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: self._stream(path, request, context))
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._unary(path, request, context))

    def _unary(self, path: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        forward = self._upstream.unary_unary(path)
        try:
            answer = forward(request, metadata=forwarded_metadata(context),
                             timeout=remaining(context))
        except grpc.RpcError as err:
            context.abort(err.code(), err.details() or "")
        return answer + self._addition(path)

    def _stream(self, path: str, request: bytes,
                context: grpc.ServicerContext) -> Iterator[bytes]:
        call = self._upstream.unary_stream(path)(
            request, metadata=forwarded_metadata(context), timeout=remaining(context))
        context.add_callback(call.cancel)  # the caller went: so does the forwarded stream
        try:
            for event in call:
                yield event + self._addition(path)
        except grpc.RpcError as err:
            if context.is_active():
                context.abort(err.code(), err.details() or "")
