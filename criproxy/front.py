"""The front: the gRPC server kubelet talks to, on the listen socket.

It looks every method up in the routing table and hands it to the dispatcher;
it never talks to a runtime itself, only to workers over ZeroMQ.
"""
from __future__ import annotations

import asyncio
import functools
import grp
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import AsyncIterator

import grpc
import grpc.aio
import zmq.asyncio
from google.protobuf import text_format

from criproxy import logs
from criproxy.dispatch import Dispatcher, routed_to
from criproxy.routing import METHODS, Method, Rule
from criproxy.settings import Config
from criproxy.workerlink import CallError, WorkerLink

log = logging.getLogger("criproxy.front")

# kubelet's own limit; a bigger request is refused with RESOURCE_EXHAUSTED.
MAX_MESSAGE = 16 * 1024 * 1024
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
_DUMP_LIMIT = 4096


class RoutingHandler(grpc.GenericRpcHandler):
    """Serves every method of the routing table with raw (undecoded) bytes."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = METHODS.get(details.method)  # type: ignore[attr-defined]
        if method is None:
            return grpc.unary_unary_rpc_method_handler(
                functools.partial(_unimplemented, details.method))  # type: ignore[attr-defined]
        if method.route.rule == Rule.STREAM_MERGE:
            return grpc.unary_stream_rpc_method_handler(functools.partial(self._stream, method))
        return grpc.unary_unary_rpc_method_handler(functools.partial(self._unary, method))

    async def _unary(self, method: Method, raw: bytes,
                     context: grpc.aio.ServicerContext) -> bytes:
        started = time.monotonic()
        routed_to.set([])
        try:
            answer = await self.dispatcher.unary(method, raw, context.time_remaining())
        except CallError as err:
            _log_failure(method, err, started)
            await context.abort(err.code, err.message)
        _log_success(method, raw, answer, started)
        return answer

    async def _stream(self, method: Method, raw: bytes,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        log.info("%s: subscriber joined", method.name)
        try:
            async for item in self.dispatcher.stream_merge(method, raw):
                yield item
        except CallError as err:
            _log_failure(method, err, time.monotonic())
            await context.abort(err.code, err.message)
        finally:
            log.info("%s: subscriber left", method.name)


async def _unimplemented(path: str, _raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                        f"criproxy does not route {path}: it is not in its routing table")
    return b""


def _log_failure(method: Method, err: CallError, started: float) -> None:
    if logs.enabled(2):
        log.warning("%s -> %s: %s: %s (%.1f ms)", method.name, ",".join(routed_to.get([])),
                    err.code.name, err.message, (time.monotonic() - started) * 1000)


def _log_success(method: Method, raw: bytes, answer: bytes, started: float) -> None:
    if not logs.enabled(method.route.log_level):
        return
    log.info("%s -> %s: OK (%.1f ms)\n  request: %s\n  response: %s", method.name,
             ",".join(routed_to.get([])), (time.monotonic() - started) * 1000,
             _dump(method.request, raw), _dump(method.response, answer))


def _dump(message_class: type, raw: bytes) -> str:
    text = text_format.MessageToString(message_class.FromString(raw), as_one_line=True)
    return text if len(text) <= _DUMP_LIMIT else text[:_DUMP_LIMIT] + f"... ({len(text)} chars)"


def _bind_path(config: Config) -> str:
    """Remove a stale socket left by a crash; refuse to remove anything else."""
    path = Path(config.listen)
    if path.is_symlink() or (path.exists() and not path.is_socket()):
        raise SystemExit(f"criproxy front: {path} exists and is not a socket; not removing it")
    if path.exists():
        path.unlink()
    return "unix:" + str(path)


def _secure_socket(config: Config) -> None:
    os.chmod(config.listen, 0o660)
    if config.socket_group:
        os.chown(config.listen, -1, grp.getgrnam(config.socket_group).gr_gid)


class Front:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = zmq.asyncio.Context()
        self.links = {r.name: WorkerLink(config, r, self.ctx) for r in config.runtimes}
        self.server = grpc.aio.server(options=_SERVER_OPTIONS)
        self.server.add_generic_rpc_handlers([RoutingHandler(Dispatcher(config, self.links))])
        self._stop = asyncio.Event()

    @classmethod
    async def serve(cls, config: Config) -> None:
        """Build the front inside the event loop (grpc.aio binds to it) and run it."""
        await cls(config).run()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        for link in self.links.values():
            link.start()
        self.server.add_insecure_port(_bind_path(self.config))
        await self.server.start()
        _secure_socket(self.config)
        log.info("front serving %s for runtimes %s", self.config.listen,
                 ", ".join(f"{r.label}={r.socket}" for r in self.config.runtimes))
        reporter = asyncio.create_task(self._write_status_forever())
        await self._stop.wait()
        await self._shutdown(reporter)

    async def _shutdown(self, reporter: asyncio.Task) -> None:
        log.info("front stopping; letting requests finish for up to %.1fs", self.config.drain)
        await self.server.stop(self.config.drain)
        reporter.cancel()
        for link in self.links.values():
            await link.close()
        self.ctx.destroy(linger=0)
        for path in (Path(self.config.listen), self.config.status_file):
            path.unlink(missing_ok=True)

    async def _write_status_forever(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(1.0)

    def write_status(self) -> None:
        """Publish runtime states for `criproxy status` (atomic replace)."""
        status = {"front_pid": os.getpid(), "listen": self.config.listen, "time": time.time(),
                  "runtimes": [link.snapshot() for link in self.links.values()]}
        tmp = self.config.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.config.status_file)
