"""Target 3: the front ⇄ worker wire (criproxy/wire/protocol.py), both directions.

Frames are raw bytes or envelopes built field by field (every message type of
protocol.py, each field of the right type or not, extra keys), packed as
msgpack and now and then damaged. Invariants:
- protocol.unpack returns a checked envelope or raises ProtocolError, nothing
  else; what it returns has what its consumers index (required keys, types,
  a pong's state one of RuntimeState's);
- a well-typed envelope survives pack → unpack unchanged;
- the trace context it carries (tracecontext.from_envelope) is valid or None,
  never an exception;
- the front's receiving end (WorkerLink._on_frames), holding a call and a
  stream of that id, takes any frame without raising.

Input: mode, then the frame or the builder's bytes.
"""
from __future__ import annotations

import math
import sys
from typing import Any

import msgpack
import zmq

from criproxy.front.workerlink import WorkerLink, _Pending
from criproxy.wire import protocol, tracecontext
from criproxy.wire.protocol import RuntimeState
from fuzz import builder, harness
from fuzz.provider import Provider

RAW, BUILT, BUILT_DAMAGED = 0, 1, 2
KINDS = (protocol.CALL, protocol.STREAM, protocol.CANCEL, protocol.PING, protocol.REPLY,
         protocol.ERROR, protocol.ITEM, protocol.END, protocol.PONG)
FIELDS = {
    protocol.CALL: ("id", "m", "b", "d", "tc"), protocol.STREAM: ("id", "m", "b", "d", "tc"),
    protocol.CANCEL: ("id",), protocol.PING: (),
    protocol.REPLY: ("id", "inc", "b"), protocol.ERROR: ("id", "inc", "c", "s"),
    protocol.ITEM: ("id", "inc", "b"), protocol.END: ("id", "inc"),
    protocol.PONG: ("inc", "pid", "up", "st", "r", "v"),
}
IDS = (7, 0, -1, 1 << 47, (1 << 64) - 1, -(1 << 63))


def _good(p: Provider, key: str) -> Any:
    if key == "id":
        return p.pick(IDS)
    if key == "m":
        return p.pick(harness.METHOD_PATHS + ["", "/x.Y/Z"])
    if key in ("b",):
        return p.take(p.int_in(0, 64))
    if key == "d":
        return p.pick((None, 2.0, 0, -1.0, 1e308, float("inf"), float("nan")))
    if key == "inc":
        return p.pick(("a1b2c3d4e5f60718", "other", ""))
    if key == "c":
        return p.pick((0, 2, 5, 14, 16, 17, -1, 1 << 40))
    if key in ("s", "r"):
        return p.text(30)
    if key == "pid":
        return p.pick((1234, 0, -5))
    if key == "up":
        return p.pick((0.5, 0, -3.0, float("inf"), float("nan"), 1e300))
    if key == "st":
        return p.pick([s.value for s in RuntimeState])
    if key == "v":
        return p.pick(("v1", "v1alpha2", ""))
    if key == "tc":
        parent = p.pick(("00-" + "a" * 32 + "-" + "b" * 16 + "-01", "garbage",
                         "00-" + "0" * 32 + "-" + "b" * 16 + "-01", "01-" + "c" * 32 + "-"
                         + "d" * 16 + "-00-extra"))
        context: dict[Any, Any] = {tracecontext.TRACEPARENT: parent}
        if p.bool():
            context[tracecontext.TRACESTATE] = p.pick(("k=v", "a=1,b=2", "bad", "k=" + "v" * 600,
                                                      ",".join(f"k{n}=v" for n in range(40))))
        return context
    raise KeyError(key)


def _bad(p: Provider) -> Any:
    return p.pick((None, True, 1.5, "s", b"b", [1], {"k": 1}, {1: 2}, 1 << 63,
                   msgpack.ExtType(5, b"x")))


def build(p: Provider) -> tuple[dict[Any, Any], bool]:
    """An envelope, and whether every field in it is well typed."""
    kind = p.pick(KINDS) if p.int_in(0, 7) else p.pick((None, 3, "", "CALL", [1]))
    message: dict[Any, Any] = {"t": kind}
    well_typed = isinstance(kind, str)
    for key in FIELDS.get(kind, ()) if isinstance(kind, str) else ():
        choice = p.int_in(0, 9)
        if choice == 0:
            continue  # missing
        if choice == 1:
            message[key] = _bad(p)
            well_typed = False
        else:
            message[key] = _good(p, key)
    if p.chance(4):
        message[p.pick(("x", 1, "b", "tc"))] = _bad(p)
        well_typed = False
    return message, well_typed


def test_one_input(data: bytes) -> None:
    p = Provider(data)
    mode = p.byte() % 3
    built: dict[Any, Any] | None = None
    if mode == RAW:
        frame = p.rest()
    else:
        built, well_typed = build(p)
        try:
            frame = protocol.pack(built)
        except (TypeError, ValueError, OverflowError):
            return  # msgpack cannot encode it (e.g. an int past 64 bits): no frame
        if mode == BUILT_DAMAGED:
            frame = builder.flip(p, frame)
            built = None
        elif not well_typed:
            built = None
    try:
        message = protocol.unpack(frame)
    except protocol.ProtocolError:
        message = None
    if message is not None:
        check_envelope(message)
        if built is not None and not _has_nan(built) and all(
                key in message for key in protocol._REQUIRED[built["t"]]):
            assert message == built, f"pack/unpack changed {built!r:.300} into {message!r:.300}"
    harness.run(_front_takes(frame))


def _has_nan(message: dict[Any, Any]) -> bool:
    return any(isinstance(v, float) and math.isnan(v) for v in message.values())


def check_envelope(message: dict[str, Any]) -> None:
    kind = message["t"]
    for key in protocol._REQUIRED[kind]:
        assert key in message, (kind, key)
    for key, kinds in protocol._TYPES.items():
        if key in message:
            assert isinstance(message[key], kinds), (kind, key, message[key])
    if kind == protocol.PONG:
        assert message["st"] in {s.value for s in RuntimeState}, message["st"]
        assert isinstance(message.get("up", 0), (int, float)), message.get("up")
        assert isinstance(message.get("r", ""), str) and isinstance(message.get("v", ""), str)
    carried = tracecontext.from_envelope(message)
    if carried is not None:
        assert tracecontext.parse_traceparent(carried[tracecontext.TRACEPARENT]) == \
            carried[tracecontext.TRACEPARENT]


_ctx = zmq.Context.instance()
_link: WorkerLink | None = None


async def _front_takes(frame: bytes) -> None:
    global _link
    if _link is None:
        cfg = harness.config(0)
        _link = WorkerLink(cfg, cfg.runtimes[1], _ctx)
    link = _link
    link.incarnation, link._pending = None, {}
    for request_id, stream in ((7, False), ((1 << 47), True)):
        link._pending[request_id] = _Pending(stream)
    link._on_frames([frame])
    for pending in link._pending.values():
        if pending.future.done():
            pending.future.exception()


def main() -> None:
    from fuzz.run import fuzz_main
    fuzz_main(sys.modules[__name__])


if __name__ == "__main__":
    main()
