"""The front ⇄ worker wire protocol.

Transport: one ZeroMQ DEALER socket in the front per worker, connected to the
worker's ROUTER socket bound at `ipc://<rundir>/worker-<name>.ipc`. Never TCP:
whoever can write to a worker can start containers as root, so access is
guarded by the runtime dir's mode (0700).

Every message is one ZeroMQ frame holding one msgpack map. `t` is its type.

Front → worker:
  call    {t, id, m, b, d, [tc]}  unary call: request id (int, never reused
                                  by a front: random 48-bit base + counter),
                                  full gRPC method path, request bytes
                                  (forwarded undecoded), deadline as seconds
                                  remaining (float) or nil; optional tc: the
                                  call's W3C trace context, {"traceparent": str
                                  [, "tracestate": str]}, which the worker
                                  checks again and sends to the runtime as gRPC
                                  metadata (see tracecontext.py).
  stream  {t, id, m, b, d, [tc]}  same, for a server-streaming call.
  cancel  {t, id}           the caller went away; cancel that call/stream.
  ping    {t}               heartbeat: at once on a new connection, then every
                            `-heartbeat` seconds while calls to the worker wait
                            (or it has not answered since it connected), else
                            one per `-idleProbe` (front/workerlink.py).

Worker → front (every one carries `inc`, the worker's incarnation: a random
id chosen at process start, so the front notices a restarted worker):
  reply   {t, id, inc, b}         a unary call succeeded; b = response bytes.
  error   {t, id, inc, c, s}      a call (or stream) failed: c = gRPC status
                                  code number, s = message. Codes cross the hop
                                  unchanged, never collapsed into UNKNOWN.
  item    {t, id, inc, b}         one message of a stream.
  end     {t, id, inc}            a stream finished normally.
  pong    {t, inc, pid, up, st, r, v}  heartbeat answer, and sent unasked to the
                                  front that last pinged whenever the runtime's
                                  state changes: worker pid, seconds since the
                                  worker started, runtime state (a RuntimeState
                                  value), reason of the last state change, CRI
                                  version the runtime speaks.

Liveness: the front counts a worker down when its ipc connection drops (ZeroMQ
socket monitor) or when a ping went unanswered for `-workerTimeout` seconds (any
frame from the worker answers it). Either
way every call in flight to it fails at once with UNAVAILABLE; replies that
arrive later match no pending id and are dropped. Pongs are answered from the
worker's event loop, which never blocks on the runtime (all runtime calls are
asynchronous), so a slow runtime call never delays a heartbeat.

Malformed frames are logged and dropped by both sides.
"""
from __future__ import annotations

import enum
from typing import Any

import msgpack

CALL = "call"
STREAM = "stream"
CANCEL = "cancel"
PING = "ping"
REPLY = "reply"
ERROR = "error"
ITEM = "item"
END = "end"
PONG = "pong"

_REQUIRED: dict[str, tuple[str, ...]] = {
    CALL: ("id", "m", "b"),
    STREAM: ("id", "m", "b"),
    CANCEL: ("id",),
    PING: (),
    REPLY: ("id", "inc", "b"),
    ERROR: ("id", "inc", "c", "s"),
    ITEM: ("id", "inc", "b"),
    END: ("id", "inc"),
    PONG: ("inc", "pid", "st"),
}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": int, "m": str, "b": bytes, "d": (int, float, type(None)), "inc": str, "c": int,
    "s": str, "pid": int, "st": str, "tc": dict, "up": (int, float), "r": str, "v": str,
}


class RuntimeState(str, enum.Enum):
    """A runtime as its worker sees it; the front adds DOWN for a lost worker."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


_STATES = frozenset(state.value for state in RuntimeState)


class ProtocolError(Exception):
    """A frame that is not a valid envelope."""


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(frame: bytes) -> dict[str, Any]:
    """Decode and check one envelope; raise ProtocolError for anything else."""
    try:
        message = msgpack.unpackb(frame, raw=False)
    except Exception as err:  # msgpack raises several unrelated types
        raise ProtocolError(
            f"undecodable frame ({len(frame)} bytes): {type(err).__name__}: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame is a {type(message).__name__}, not a map")
    # A non-string `t` (a list or map is unhashable) must not escape as TypeError:
    # it would end the caller's receive loop.
    kind_of = message.get("t")
    required = _REQUIRED.get(kind_of) if isinstance(kind_of, str) else None
    if required is None:
        raise ProtocolError(f"unknown message type {kind_of!r:.100}")
    missing = [key for key in required if key not in message]
    if missing:
        raise ProtocolError(f"{message['t']} message lacks {', '.join(missing)}")
    wrong = [key for key, kind in _TYPES.items()
             if key in message and not isinstance(message[key], kind)]
    if wrong:
        raise ProtocolError(f"{message['t']} message has ill-typed {', '.join(wrong)}")
    if "st" in message and message["st"] not in _STATES:
        raise ProtocolError(f"{message['t']} message has unknown state {message['st']!r:.100}")
    return message
