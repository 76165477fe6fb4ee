"""Target 1: kubelet's requests through the front.

Every method of the routing table (criproxy/front/routing.py METHODS), with a
request built from its descriptor (fuzz/builder.py) or taken as raw bytes, goes
through the real Dispatcher over in-process links answering from a model of a
runtime (fuzz/harness.py). Invariants:
- the answer is bytes that decode as the method's response, or a CallError
  whose code is one for a caller's mistake or a runtime's state, never UNKNOWN
  or INTERNAL (the model runtimes answer well); no other exception escapes;
- no input takes longer than harness.TIME_BOUND;
- nothing reaches a runtime that ROUTING.md does not name for that request,
  and an id routed by its prefix reaches its runtime unprefixed;
- a merged List holds only objects of the runtimes, each with its prefix.

Input: setup, runtime states, method, mode (raw, built, built and damaged;
whether every runtime answered both Lists before its state was set; whether a
second call follows; whether runtimes marked down are slow instead; whether a
registered runtime joins or a named one leaves before the second call), then the builder's bytes (or the request itself when
the mode says raw).
"""
from __future__ import annotations

import sys

from cri_api.v1 import api_pb2 as v1
from cri_api.v1alpha2 import api_pb2 as old_api
from google.protobuf.message import DecodeError

from criproxy.front.routing import METHODS, Rule
from criproxy.front.workerlink import CallError
from criproxy.settings import HandlerRoute, Runtime
from fuzz import builder, harness
from fuzz.mutator import message_mutator
from fuzz.provider import Provider

RAW, BUILT, BUILT_DAMAGED = 0, 1, 2
LIST_SANDBOXES = METHODS["/runtime.v1.RuntimeService/ListPodSandbox"]
LIST_CONTAINERS = METHODS["/runtime.v1.RuntimeService/ListContainers"]


def header(setup: int, states: int, path: str, mode: int, prelist: bool = False,
           then: bool = False, slow: bool = False, membership: bool = False) -> bytes:
    """The first bytes of an input (fuzz/seeds.py writes seeds with it)."""
    flags = prelist << 4 | then << 5 | slow << 6 | membership << 7
    flags += (mode - flags) % 3  # flags % 3 is the mode
    return bytes([setup, states, harness.METHOD_PATHS.index(path), flags])


def _request(p: Provider, method, mode: int, v1alpha2: bool = False) -> bytes:  # type: ignore[no-untyped-def]
    """A request: raw, or built from the descriptor of its CRI version's message
    (v1alpha2's are a wire-compatible subset of v1's)."""
    if mode == RAW:
        return p.rest()
    message_class = getattr(old_api, method.request.__name__, method.request) if v1alpha2 \
        else method.request
    raw = builder.encode(p, builder.build(p, message_class))
    return builder.flip(p, raw) if mode == BUILT_DAMAGED else raw


def test_one_input(data: bytes) -> None:
    p = Provider(data)
    cfg = harness.config(p.byte())
    states = p.byte()
    path = harness.METHOD_PATHS[p.byte() % len(harness.METHOD_PATHS)]
    method, older = METHODS[path], "v1alpha2" in path
    flags = p.byte()
    mode, prelist, then = flags % 3, bool(flags & 0x10), bool(flags & 0x20)
    slow, membership = bool(flags & 0x40), bool(flags & 0x80)
    calls = []
    if then:  # a second call after the first: a raw first one comes with its length
        second = METHODS[harness.UNARY_PATHS[p.byte() % len(harness.UNARY_PATHS)]]
        first = p.take(p.int_in(0, 0xFFFF)) if mode == RAW else _request(p, method, mode, older)
        calls.append((method, first))
        calls.append((second, _request(p, second, mode)))
    else:
        calls.append((method, _request(p, method, mode, older)))
    if any(m.route.rule == Rule.STREAM_MERGE for m, _ in calls):
        states &= ~1  # the primary's stream ends the merged one (harness.FakeLink)
    # With `prelist`, every runtime answers both Lists first (the record then holds
    # them), and only then do the input's runtimes go down.
    dispatcher, links, journal = harness.make_dispatcher(cfg, 0 if prelist else states,
                                                         slow=slow)
    topology = harness.Topology(list(cfg.runtimes), cfg.runtime_handlers)
    if membership and p.bool():  # registered from the start: it leaves before call 2
        _join_or_leave(p, dispatcher, links, journal, topology)
    if prelist:
        for listing in (LIST_SANDBOXES, LIST_CONTAINERS):
            harness.run(dispatcher.unary(listing, b"", 5.0))
        for i, runtime in enumerate(cfg.runtimes):
            down = i > 0 and bool(states >> (2 * i) & 1)
            links[runtime.name].up = not down or slow
            links[runtime.name].slow = down and slow
            links[runtime.name].cri_version = "v1alpha2" if states >> (2 * i + 1) & 1 else "v1"
    for number, (call_method, raw) in enumerate(calls):
        if number and membership:
            _join_or_leave(p, dispatcher, links, journal, topology)
        del journal[:]
        try:
            request = call_method.request.FromString(raw)
        except DecodeError:
            request = None
        outcome = harness.run(_call(dispatcher, call_method, raw))
        check(topology, call_method, request, outcome, links, journal)


GPU = Runtime("gpu", "/run/criproxy-runtimes/gpu.sock")
GPU_HANDLERS = (HandlerRoute("nvidia", "gpu", "nvidia"),)


def _join_or_leave(p: Provider, dispatcher, links, journal, topology) -> None:  # type: ignore[no-untyped-def]
    """A registered runtime (-runtimesDir: gpu, handler nvidia) joins, or leaves
    when it is there (only registered runtimes leave), between two calls."""
    if "gpu" not in links:
        dispatcher.add_runtime(harness.FakeLink(GPU, journal), GPU_HANDLERS)
        topology.runtimes.append(GPU)
        topology.runtime_handlers += GPU_HANDLERS
    else:
        dispatcher.remove_runtime("gpu")
        topology.runtimes[:] = [r for r in topology.runtimes if r.name != "gpu"]
        topology.runtime_handlers = tuple(h for h in topology.runtime_handlers
                                          if h.runtime != "gpu")


async def _call(dispatcher, method, raw):  # type: ignore[no-untyped-def]
    try:
        if method.route.rule == Rule.STREAM_MERGE:
            items = []
            try:
                async for item in dispatcher.stream_merge(method, raw):
                    items.append(item)
                    if len(items) > 100:
                        break
            except CallError as err:
                if err.code.name != "UNIMPLEMENTED" or not items and "model" not in err.message:
                    return err
            return items
        return await dispatcher.unary(method, raw, 5.0)
    except CallError as err:
        return err


def check(cfg, method, request, outcome, links, journal) -> None:  # type: ignore[no-untyped-def]
    if isinstance(outcome, CallError):
        assert outcome.code in harness.CALLER_CODES, \
            f"{method.name} answered {outcome.code.name} for a caller's input: {outcome.message}"
        assert isinstance(outcome.message, str)
    if request is None:
        assert isinstance(outcome, CallError) and outcome.code.name == "INVALID_ARGUMENT", \
            f"{method.name}: undecodable request answered {outcome!r:.200}"
        assert not journal, f"{method.name}: undecodable request forwarded: {journal}"
        return
    allowed = harness.expected_receivers(cfg, method, request)
    for runtime, name, body in journal:
        if name != method.name:
            assert name == "ListPodSandbox" and method.route.images_follow_pod, \
                f"{method.name} made a {name} call to {runtime!r}"
            continue
        assert allowed is None or runtime in allowed, \
            f"{method.name} reached runtime {runtime!r}; ROUTING.md names {allowed}"
        if method.route.rule == Rule.BY_ID:
            key = getattr(request, method.route.key)
            bare = key[len(runtime) + 2:] if runtime else key
            sent = getattr(method.request.FromString(body), method.route.key)
            assert sent == bare, f"{method.name}: {key!r} reached {runtime!r} as {sent!r}"
    if isinstance(outcome, bytes):
        answer = method.response.FromString(outcome)
        if method.name == "ListPodSandbox":
            _owned(cfg, links, [s.id for s in answer.items], "sandboxes")
        elif method.name == "ListContainers":
            _owned(cfg, links, [c.id for c in answer.containers], "containers")
    elif isinstance(outcome, list):
        for item in outcome:
            event = v1.ContainerEventResponse.FromString(item)
            _owned(cfg, links, [event.container_id], "containers")


def _owned(cfg, links, ids, kind) -> None:  # type: ignore[no-untyped-def]
    for shown in ids:
        runtime = harness.id_owner(cfg, shown)
        bare = shown[len(runtime) + 2:] if runtime else shown
        assert bare in getattr(links[runtime].model, kind), \
            f"{shown!r} is none of runtime {runtime!r}'s {kind}"


def _message_of(head: bytes) -> type | None:
    """The request class of a raw single-call input (for fuzz/mutator.py)."""
    if head[3] % 3 != RAW or head[3] & 0x20:
        return None
    return METHODS[harness.METHOD_PATHS[head[2] % len(harness.METHOD_PATHS)]].request


custom_mutator = message_mutator(4, _message_of)


def main() -> None:
    from fuzz.run import fuzz_main
    fuzz_main(sys.modules[__name__])


if __name__ == "__main__":
    main()
