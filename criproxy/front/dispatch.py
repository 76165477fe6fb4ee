"""Carrying out the routing table's rules: pick runtimes, rewrite, forward.

Primary requests and answers that need no rewriting travel as the bytes
kubelet sent and the runtime answered; only named runtimes' messages are
decoded and re-encoded. Lists merged from every runtime: fanout.py; merged
event streams: eventstream.py (both mixed into the Dispatcher).
"""
from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
from typing import Awaitable, Callable

import grpc
from cri_api.v1 import api_pb2 as v1
from google.protobuf.message import DecodeError, Message

from criproxy.front import imagepods
from criproxy.front.callerrors import BadAnswer, check_version, parse
from criproxy.front.claims import ForeignClaims
from criproxy.front.eventstream import EventStreams
from criproxy.front.fanout import ListFanOut
from criproxy.front.naming import PRIMARY, Names
from criproxy.front.rewrite import ForeignObject, add_prefixes, strip_prefixes
from criproxy.front.routing import (METHODS, RUNTIME_SERVICE, Digest, Method, Rule, field_value,
                                    target_runtime_annotation)
from criproxy.front.slim import slim_class
from criproxy.front.slowlists import SlowLists
from criproxy.front.streamurl import BadStreamUrl, StreamUrls, default_stream_base
from criproxy.front.workerlink import CallError, WorkerLink
from criproxy.record.owners import PodOwners
from criproxy.record.podrecord import PodRecord
from criproxy.settings import Config, HandlerRoute

log = logging.getLogger("criproxy.front")

# Which runtimes served the current request, for its log line.
routed_to: contextvars.ContextVar[list[str]] = contextvars.ContextVar("routed_to")

# A pod an image call names but the record lacks is looked for in fresh
# answers, unless the record's are this recent.
_POD_LOOKUP_REFRESH = 1.0
LIST_SANDBOXES = METHODS[RUNTIME_SERVICE + "ListPodSandbox"]


class Dispatcher(ListFanOut, EventStreams):
    def __init__(self, config: Config, links: dict[str, WorkerLink]) -> None:
        self.config = config
        self.links = links  # in -connect order, primary first, then registered ones
        self._registered_handlers: dict[str, tuple[HandlerRoute, ...]] = {}
        self.names = Names(list(links), config.runtime_handlers)
        self.record = PodRecord(config)
        self.owners = PodOwners(config.rundir, list(links))
        self.claims = ForeignClaims(self.owners, self.record.newest_sandbox, self._label)
        self.slow_lists = SlowLists()
        # (runtime, List) -> its last unfiltered answer and how kubelet was shown it.
        self._shown_lists: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._merged_streams: set[asyncio.Queue] = set()
        self.stream_urls = StreamUrls(config.stream_url or default_stream_base(config.stream_port),
                                      config.stream_hosts)
        self._rules: dict[Rule, Callable[[Method, Message, bytes, float | None],
                                         Awaitable[bytes]]] = {
            Rule.PRIMARY: self._to_primary,
            Rule.STATUS: self._status,
            Rule.BROADCAST: self._broadcast,
            Rule.BY_ANNOTATION: self._by_annotation,
            Rule.BY_ID: self._by_id,
            Rule.BY_IMAGE: self._by_image,
            Rule.FAN_OUT: self._fan_out,
        }

    # --- runtimes that come and go (-runtimesDir) ---------------------------------

    def add_runtime(self, link: WorkerLink, handlers: tuple[HandlerRoute, ...]) -> None:
        self.links[link.runtime.name] = link
        if link.runtime.name not in self.record.runtimes:
            self.record.add_runtime(link.runtime)
        self.owners.runtime_joined(link.runtime.name)
        self.set_handlers(link.runtime.name, handlers)
        self._end_merged_streams(f"runtime {link.label} joined")

    def remove_runtime(self, name: str) -> WorkerLink:
        link = self.links.pop(name)
        self.record.remove_runtime(name)
        self.owners.runtime_left(name)
        self.claims.forget(name)
        self._shown_lists = {k: v for k, v in self._shown_lists.items() if k[0] != name}
        self.slow_lists.forget(name)
        self.set_handlers(name, ())
        self._end_merged_streams(f"runtime {link.label} left")
        return link

    def set_handlers(self, runtime: str, handlers: tuple[HandlerRoute, ...]) -> None:
        """The RuntimeClass handlers a registered runtime serves, beside -runtimeHandlers."""
        self._registered_handlers[runtime] = handlers
        registered = tuple(h for hs in self._registered_handlers.values() for h in hs)
        self.names = Names(list(self.links), self.config.runtime_handlers + registered)

    async def unary(self, method: Method, raw: bytes, timeout: float | None) -> bytes:
        request = parse(method.request, raw)
        return await self._rules[method.route.rule](method, request, raw, timeout)

    # --- single runtime -------------------------------------------------------

    async def _call(self, runtime: str, method: Method, body: bytes,
                    timeout: float | None) -> bytes:
        link = self.links[runtime]
        routed_to.get([]).append(link.label)
        check_version(link, method)
        return await link.call(method.path, body, timeout)

    async def _forward(self, runtime: str, method: Method, request: Message, raw: bytes,
                       timeout: float | None, images_follow_pod: bool = False,
                       whole: bool = False) -> bytes:
        changed = self._fit_request(runtime, request, images_follow_pod)
        body = raw if runtime == PRIMARY and not changed else request.SerializeToString()
        answer = await self._call(runtime, method, body, timeout)
        own = self._own_claims(runtime, method, answer)
        if own is None:
            raise CallError(grpc.StatusCode.NOT_FOUND,
                            f"runtime {self._label(runtime)} answered {method.name} about a "
                            "pod that another runtime owns (criproxy status says which)")
        shown = self._present(runtime, method, own, whole)
        self._observe(runtime, method, request, answer)
        return shown

    def _own_claims(self, runtime: str, method: Method, answer: bytes,
                    complete: bool = False) -> bytes | None:
        """The answer less its claims about other runtimes' pods (claims.py); None
        when it is all about one."""
        try:
            return self.claims.own_answer(runtime, method.name, method.response, answer,
                                          complete)
        except DecodeError as err:
            raise self._bad_answer(runtime, method, method.response, err) from None

    def _observe(self, runtime: str, method: Method, request: Message, answer: bytes) -> None:
        try:
            self.record.observe(runtime, method.name, request, answer)
        except DecodeError as err:
            raise self._bad_answer(runtime, method, method.response, err) from None
        if method.name == "RunPodSandbox":
            self.owners.place(request.config.metadata.uid, runtime)  # type: ignore[attr-defined]

    def _label(self, runtime: str) -> str:
        link = self.links.get(runtime)
        return link.label if link is not None else runtime or "primary"

    def _decode_answer(self, runtime: str, method: Method, message_class: type[Message],
                       answer: bytes) -> Message:
        try:
            return message_class.FromString(answer)
        except DecodeError as err:
            raise self._bad_answer(runtime, method, message_class, err) from None

    def _bad_answer(self, runtime: str, method: Method, message_class: type[Message],
                    err: Exception, problem: str = "bytes that do not decode as") -> BadAnswer:
        link = self.links[runtime]
        bad = BadAnswer(link.label, method,
                        f"{problem} {message_class.DESCRIPTOR.full_name}: {err}")
        link.note_bad_answer(bad.message)
        return bad

    def _fit_request(self, runtime: str, request: Message, images_follow_pod: bool) -> bool:
        """Strip our prefixes; refuse objects of another runtime than `runtime`."""
        try:
            return strip_prefixes(request, runtime, self.names, images_follow_pod)
        except ForeignObject as err:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            self._foreign_message(err, runtime)) from None

    def _foreign_message(self, err: ForeignObject, runtime: str) -> str:
        owner = self.links[err.owner].label if err.owner is not None else "none"
        return (f"{err.field} {err.value!r} belongs to runtime {owner}, but this request "
                f"goes to runtime {self.links[runtime].label}")

    def _present(self, runtime: str, method: Method, answer: bytes, whole: bool = False) -> bytes:
        """Turn a runtime's answer into what kubelet sees. `whole`: decode it in full
        first, the primary's too, for an answer merged with other runtimes' (one
        undecodable part makes the whole merged answer undecodable) or shown for
        them (a filtered List, an event). Decoded once: in full, or, when only
        prefixing is to do, just the fields it touches (see slim.py)."""
        full = whole or method.route.stream_url
        if runtime == PRIMARY and not method.route.stream_url:
            if whole:
                self._decode_answer(runtime, method, method.response, answer)
            return answer
        response = self._decode_answer(
            runtime, method, method.response if full else slim_class(method.response), answer)
        add_prefixes(response, runtime)
        if method.route.stream_url:
            try:
                response.url = self.stream_urls.shown(response.url)  # type: ignore[attr-defined]
            except BadStreamUrl as err:
                raise self._bad_answer(runtime, method, method.response, err,
                                       err.problem) from None
        return response.SerializeToString()

    async def _to_primary(self, method: Method, request: Message, raw: bytes,
                          timeout: float | None) -> bytes:
        return await self._call(PRIMARY, method, raw, timeout)

    async def _status(self, method: Method, request: Message, raw: bytes,
                      timeout: float | None) -> bytes:
        """The primary's status, offering kubelet every mapped RuntimeClass handler too."""
        answer = await self._call(PRIMARY, method, raw, timeout)
        if not self.names.handlers:
            return answer
        response = self._decode_answer(PRIMARY, method, method.response, answer)
        offered = {handler.name for handler in response.runtime_handlers}  # type: ignore[attr-defined]
        for route in self.names.handlers:
            if route.handler not in offered:
                response.runtime_handlers.add(name=route.handler)  # type: ignore[attr-defined]
        return response.SerializeToString()

    async def _by_annotation(self, method: Method, request: Message, raw: bytes,
                             timeout: float | None) -> bytes:
        """The annotation names the runtime; without one, the RuntimeClass handler does.

        The annotation wins when both are given: it is the older, explicit contract.
        """
        runtime = target_runtime_annotation(request)
        if not runtime:
            route = self.names.handler_route(request.runtime_handler)  # type: ignore[attr-defined]
            runtime = route.runtime if route else PRIMARY
        if runtime not in self.links:
            configured = ", ".join(n for n in self.links if n) or "none"
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"pod annotation kubernetes.io/target-runtime names runtime "
                            f"{runtime!r}, which is not configured (named runtimes: {configured})")
        return await self._forward(runtime, method, request, raw, timeout)

    async def _by_id(self, method: Method, request: Message, raw: bytes,
                     timeout: float | None) -> bytes:
        runtime, bare = self.names.split_id(field_value(request, method.route.key))
        follow = (method.route.images_follow_pod and
                  imagepods.placed_by_handler(self.record, runtime, bare))
        return await self._forward(runtime, method, request, raw, timeout, follow)

    async def _by_image(self, method: Method, request: Message, raw: bytes,
                        timeout: float | None) -> bytes:
        spec = field_value(request, method.route.key)
        pod_runtime = await self._pod_of_image_call(method, request, spec, timeout)
        if pod_runtime is not None:
            return await self._forward(pod_runtime, method, request, raw, timeout, True)
        runtime, _ = self.names.split_image(spec.image, spec.runtime_handler)
        if runtime is not None:
            return await self._forward(runtime, method, request, raw, timeout)
        if method.route.digest == Digest.FIRST_FOUND:
            return await self._first_found(method, raw, timeout)
        if method.route.digest == Digest.EVERY:
            return await self._broadcast(method, request, raw, timeout)
        return await self._forward(PRIMARY, method, request, raw, timeout)

    async def _pod_of_image_call(self, method: Method, request: Message, spec: Message,
                                 timeout: float | None) -> str | None:
        """A plain image name with no handler named: the runtime of the pod it is for.
        A pod the record does not know yet (e.g. just after a restart that lost the
        runtime dir) is looked for in the runtimes' own answers once more."""
        if (not method.route.images_follow_pod or not self.names.is_plain_image(spec.image)
                or self.names.handler_route(spec.runtime_handler)):  # type: ignore[attr-defined]
            return None
        matcher = imagepods.pod_matcher(request, spec)  # type: ignore[arg-type]
        if matcher is None:
            return None
        found = self.record.pod_runtime(matcher)
        if found is None and self.record.sandboxes_older_than(_POD_LOOKUP_REFRESH):
            try:
                await self._fan_out(LIST_SANDBOXES, v1.ListPodSandboxRequest(), b"", timeout)
            except CallError as err:
                log.warning("%s: cannot look for its pod: %s", method.name, err)
            found = self.record.pod_runtime(matcher)
        return found

    async def _first_found(self, method: Method, raw: bytes, timeout: float | None) -> bytes:
        """A digest names content any runtime may hold: ask each in turn."""
        for runtime, link in list(self.links.items()):
            if not link.is_up or runtime not in self.links:
                continue
            try:
                answer = await self._call(runtime, method, raw, timeout)
            except CallError as err:
                log.warning("%s: runtime %s: %s", method.name, link.label, err)
                continue
            try:
                found = self._decode_answer(runtime, method, method.response, answer)
            except BadAnswer as err:
                log.warning("%s: %s", method.name, err)
                continue
            if found.HasField("image"):  # type: ignore[attr-defined]
                return self._present(runtime, method, answer)
        return b""

    # --- several runtimes -----------------------------------------------------

    async def _broadcast(self, method: Method, request: Message, raw: bytes,
                         timeout: float | None) -> bytes:
        targets = [(name, link) for name, link in self.links.items() if link.is_up]
        if not targets:
            raise CallError(grpc.StatusCode.UNAVAILABLE, "no runtime is up")
        results = await asyncio.gather(
            *(self._forward(name, method, copy.deepcopy(request), raw, timeout)
              for name, _link in targets), return_exceptions=True)
        errors = [(link.label, r) for (_name, link), r in zip(targets, results)
                  if isinstance(r, BaseException)]
        if errors:
            raise _joined(errors)
        return b""

def _joined(errors: list[tuple[str, BaseException]]) -> CallError:
    first = errors[0][1]
    code = first.code if isinstance(first, CallError) else grpc.StatusCode.INTERNAL
    text = "; ".join(f"runtime {label}: {getattr(e, 'message', e)}" for label, e in errors)
    return CallError(code, text)
