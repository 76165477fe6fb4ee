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
import zmq
from google.protobuf import text_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from criproxy import logs
from criproxy.front.dispatch import Dispatcher, routed_to
from criproxy.front.registered import Registered
from criproxy.front.routing import METHODS, Method, Rule
from criproxy.front.workerlink import CallError, WorkerLink
from criproxy.ops import metrics, spans
from criproxy.ops.metrics_endpoint import Endpoint
from criproxy.ops import status as status_file
from criproxy.process import readiness
from criproxy.process.instance import refuse_live_socket
from criproxy.record import podrecord
from criproxy.registrations import Registration
from criproxy.settings import Config, ConfigError
from criproxy.wire import tracecontext
from criproxy.wire.aiowait import wait_event

log = logging.getLogger("criproxy.front")

# kubelet's own limit; a bigger request is refused with RESOURCE_EXHAUSTED.
MAX_MESSAGE = 16 * 1024 * 1024
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
_DUMP_LIMIT = 4096
# gRPC health service names: "" is the proxy (up while the primary runtime is),
# HEALTH_PREFIX + label each runtime.
HEALTH_PREFIX = "criproxy.runtime/"
_FAN_OUTS = {m.name for m in METHODS.values() if m.route.rule == Rule.FAN_OUT}
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RoutingHandler(grpc.GenericRpcHandler):
    """Serves every method of the routing table with raw (undecoded) bytes."""

    def __init__(self, dispatcher: Dispatcher, tracer: tracecontext.Tracer | None = None,
                 activity: asyncio.Event | None = None) -> None:
        self.dispatcher = dispatcher
        self.tracer = tracer
        # Set by every call: the status writer sleeps on it while nothing happens.
        self.activity = activity or asyncio.Event()
        # Built once: grpc asks for a handler on every call.
        self._handlers = {path: self._handler(method) for path, method in METHODS.items()}

    def _handler(self, method: Method) -> grpc.RpcMethodHandler:
        if method.route.rule == Rule.STREAM_MERGE:
            return grpc.unary_stream_rpc_method_handler(functools.partial(self._stream, method))
        return grpc.unary_unary_rpc_method_handler(functools.partial(self._unary, method))

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = self._handlers.get(details.method)  # type: ignore[attr-defined]
        if handler is None:
            return grpc.unary_unary_rpc_method_handler(
                functools.partial(_unimplemented, details.method))  # type: ignore[attr-defined]
        return handler

    async def _unary(self, method: Method, raw: bytes,
                     context: grpc.aio.ServicerContext) -> bytes:
        started = time.monotonic()
        routed: list[str] = []
        routed_to.set(routed)
        span = tracecontext.received(self.tracer, method.path, context.invocation_metadata())
        code = grpc.StatusCode.UNKNOWN  # what grpc answers for an unexpected exception
        failure: CallError | None = None
        metrics.request_started()
        if not self.activity.is_set():
            self.activity.set()
        try:
            answer = await self.dispatcher.unary(method, raw, context.time_remaining())
            code = grpc.StatusCode.OK
        except CallError as err:
            code, failure = err.code, err
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            # Counted before kubelet gets the answer, so a scrape after it sees it.
            metrics.request_done(method.name, routed, code, time.monotonic() - started)
            span.finish(code, failure.message if failure else "", routed)
        if failure is not None:
            _log_failure(method, failure, started, raw)
            await context.abort(failure.code, failure.message)
        _log_success(method, raw, answer, started)
        return answer

    async def _stream(self, method: Method, raw: bytes,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        started = time.monotonic()
        routed_to.set([])
        span = tracecontext.received(self.tracer, method.path, context.invocation_metadata())
        if logs.enabled(method.route.log_level):
            log.info("%s: subscriber joined", method.name)
        metrics.subscriber_joined()
        if not self.activity.is_set():
            self.activity.set()
        outcome = (grpc.StatusCode.CANCELLED, "the subscriber went away")
        try:
            async for item in self.dispatcher.stream_merge(method, raw):
                yield item
            outcome = (grpc.StatusCode.OK, "")
        except CallError as err:
            outcome = (err.code, err.message)
            _log_failure(method, err, started, raw)
            await context.abort(err.code, err.message)
        finally:
            span.finish(*outcome)
            metrics.subscriber_left()
            if logs.enabled(method.route.log_level):
                log.info("%s: subscriber left after %.1fs", method.name,
                         time.monotonic() - started)


async def _unimplemented(path: str, _raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                        f"criproxy does not route {path}: it is not in its routing table")
    return b""


def _log_failure(method: Method, err: CallError, started: float, raw: bytes) -> None:
    """Level 2: one line per failed call; from the method's level on, with its request."""
    if not logs.enabled(2):
        return
    request = (f" request: {{{_dump(method.request, raw)}}}"
               if logs.enabled(max(3, method.route.log_level)) else "")
    log.warning("%s -> %s: %s: %s (%.1f ms)%s", method.name,
                ",".join(routed_to.get([])) or "-", err.code.name, err.message,
                (time.monotonic() - started) * 1000, request)


def _log_success(method: Method, raw: bytes, answer: bytes, started: float) -> None:
    """One line per call, from the method's level on (List calls only at 5)."""
    if not logs.enabled(method.route.log_level):
        return
    log.info("%s -> %s: OK (%.1f ms) request: {%s} response: {%s}", method.name,
             ",".join(routed_to.get([])), (time.monotonic() - started) * 1000,
             _dump(method.request, raw), _dump(method.response, answer))


def _dump(message_class: type, raw: bytes) -> str:
    try:
        message = message_class.FromString(raw)
    except Exception as err:  # noqa: BLE001 - a log line must not fail the call
        return f"<{len(raw)} undecodable bytes: {err}>"
    text = text_format.MessageToString(message, as_one_line=True)
    return text if len(text) <= _DUMP_LIMIT else text[:_DUMP_LIMIT] + f"... ({len(text)} chars)"


def _bind_path(config: Config) -> str:
    """Remove a stale socket left by a crash; refuse to remove anything else."""
    path = Path(config.listen)
    refuse_live_socket(path)
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
        self.ctx = zmq.Context()
        self.links = {r.name: WorkerLink(config, r, self.ctx) for r in config.runtimes}
        self.registered = Registered(self, config)
        self._started = False  # links made before run() are started by it
        self.server = grpc.aio.server(options=_SERVER_OPTIONS)
        # Before the RoutingHandler, which answers every method it does not route
        # UNIMPLEMENTED: handlers are consulted in the order they were added.
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.tracer = spans.load_tracer(config.otlp_endpoint, "front")
        self.dispatcher = Dispatcher(config, self.links)
        # Something `criproxy status` shows changed: a call, a runtime's state, a link.
        self._status_changed = asyncio.Event()
        self.server.add_generic_rpc_handlers(
            [RoutingHandler(self.dispatcher, self.tracer, self._status_changed)])
        self._health_changed = asyncio.Event()
        metrics.watch_links(self.links.values())
        for link in self.links.values():
            self._watch_link(link)
        self.registered.join_published()
        self.metrics = Endpoint(
            config.metrics_address,
            group_id=grp.getgrnam(config.socket_group).gr_gid if config.socket_group else -1)
        self._stop = asyncio.Event()

    def _watch_link(self, link: WorkerLink) -> None:
        link.on_state_change = self._on_state_change
        metrics.declare_runtime(link.label, sorted(_FAN_OUTS), podrecord.LISTS)

    def _on_state_change(self, _link: WorkerLink) -> None:
        self._health_changed.set()
        self._status_changed.set()

    def join(self, registration: Registration) -> None:
        """A registered runtime joins: its link, routed to from now on."""
        link = WorkerLink(self.config, registration.runtime, self.ctx)
        self._watch_link(link)
        self.dispatcher.add_runtime(link, registration.handlers)
        if self._started:
            link.start()
        self._on_state_change(link)

    def set_handlers(self, registration: Registration) -> None:
        self.dispatcher.set_handlers(registration.name, registration.handlers)

    async def leave(self, name: str) -> None:
        link = self.dispatcher.remove_runtime(name)
        metrics.forget_runtime(link.label)
        await self.health.set(HEALTH_PREFIX + link.label, _NOT_SERVING)
        await link.close()
        self._status_changed.set()

    @classmethod
    async def serve(cls, config: Config) -> None:
        """Build the front inside the event loop (grpc.aio binds to it) and run it."""
        await cls(config).run()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        # A listen socket that cannot be made is a boot failure (ConfigError):
        # restarting the front cannot help. Bound before the links start.
        address = _bind_path(self.config)
        try:
            self.server.add_insecure_port(address)
        except RuntimeError as err:
            raise ConfigError(f"-listen {self.config.listen}: cannot listen there: {err}") from None
        for link in self.links.values():
            link.start()
        self._started = True
        self.registered.watch()
        await self._publish_health()
        await self.server.start()
        _secure_socket(self.config)
        log.info("front serving %s for runtimes %s", self.config.listen,
                 ", ".join(f"{r.label}={r.socket}" for r in self.config.runtimes))
        self.metrics.on_change = self._status_changed.set
        self.metrics.start()
        tasks = [asyncio.create_task(self._write_status_forever()),
                 asyncio.create_task(self._health_forever()),
                 asyncio.create_task(self._ready_then_watchdog())]
        await self._stop.wait()
        await self._shutdown(tasks)

    async def _ready_then_watchdog(self) -> None:
        """READY=1 once every runtime settled; then watchdog pings while the front answers."""
        await readiness.announce_ready(
            [link.wait_settled() for link in self.links.values()], self._runtime_summary)
        interval = readiness.watchdog_interval()
        if interval is not None:
            await readiness.watchdog_forever(self._answer_own_health_check, interval)

    def _runtime_summary(self) -> str:
        return f"serving {self.config.listen}; runtimes: " + ", ".join(
            f"{link.label} {link.state.value}" for link in self.links.values())

    async def _answer_own_health_check(self, timeout: float) -> None:
        """A health check over a fresh connection: the listen socket, grpc and this loop."""
        async with grpc.aio.insecure_channel("unix:" + self.config.listen) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString)
            await check(health_pb2.HealthCheckRequest(), timeout=timeout)

    async def _shutdown(self, tasks: list[asyncio.Task]) -> None:
        log.info("front stopping; letting requests finish for up to %.1fs", self.config.drain)
        reporter, *others = tasks
        for task in others:
            task.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.drain)
        reporter.cancel()
        await self.metrics.close()
        self.registered.unwatch()
        for link in list(self.links.values()):
            await link.close()
        if self.tracer is not None:
            self.tracer.close()
        self.ctx.destroy(linger=0)
        for path in (Path(self.config.listen), self.config.status_file):
            path.unlink(missing_ok=True)

    async def _health_forever(self) -> None:
        """gRPC health follows runtime state changes (WorkerLink.on_state_change)."""
        while True:
            await self._health_changed.wait()
            self._health_changed.clear()
            await self._publish_health()

    async def _publish_health(self) -> None:
        """Service "" serves while the primary is up; HEALTH_PREFIX + label per runtime."""
        for name, link in list(self.links.items()):
            serving = _SERVING if link.is_up else _NOT_SERVING
            if name == "":
                await self.health.set("", serving)
            await self.health.set(HEALTH_PREFIX + link.label, serving)

    async def _write_status_forever(self) -> None:
        """At most once a second while anything changes (calls, whose rates it shows,
        until those are back to zero; states); at least every status.REFRESH."""
        while True:
            self._status_changed.clear()
            wrote = time.monotonic()
            if self.write_status():
                await wait_event(self._status_changed, status_file.REFRESH)
            await asyncio.sleep(max(0.0, wrote + 1.0 - time.monotonic()))

    def _runtime_status(self, name: str, link: WorkerLink, owned: dict[str, int]) -> dict:
        return {**link.snapshot(), **self.dispatcher.record.snapshot(name),
                **self.dispatcher.claims.snapshot(name), "pods_owned": owned.get(name, 0)}

    def write_status(self) -> bool:
        """Publish runtime states for `criproxy status` (atomic replace); True when
        nothing is moving (no request in the rates' window, no call in flight)."""
        rates = metrics.recent_rates()
        owned = self.dispatcher.owners.snapshot()
        status = {"front_pid": os.getpid(), "listen": self.config.listen, "time": time.time(),
                  "runtimes": [self._runtime_status(name, link, owned)
                               for name, link in self.links.items()],
                  "metrics": self.metrics.bound or None, "metrics_error": self.metrics.error,
                  "requests": rates}
        tmp = self.config.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.config.status_file)
        return not any(r["rate"] or r["error_rate"] for r in rates.values()) and \
            not any(r["in_flight"] for r in status["runtimes"])
