"""Unit tests: front ⇄ worker envelopes."""
from __future__ import annotations

import msgpack
import pytest

from criproxy.wire import protocol


def test_round_trip() -> None:
    message = {"t": protocol.CALL, "id": 7, "m": "/runtime.v1.RuntimeService/Version",
               "b": b"\x00\x01", "d": 1.5}
    assert protocol.unpack(protocol.pack(message)) == message


@pytest.mark.parametrize("frame, error", [
    (b"\xc1", "undecodable"),
    (msgpack.packb([1, 2]), "not a map"),
    (msgpack.packb({"t": "bogus"}), "unknown message type"),
    (msgpack.packb({"t": "call", "id": 1}), "lacks m, b"),
    (b"", "undecodable"),
    (msgpack.packb({"t": "call", "id": "1", "m": "/x", "b": b""}), "ill-typed id"),
    (msgpack.packb({"t": "call", "id": 1, "m": "/x", "b": "text"}, use_bin_type=True),
     "ill-typed b"),
])
def test_malformed_frames_are_refused(frame: bytes, error: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=error):
        protocol.unpack(frame)


PONG = {"t": "pong", "inc": "a1", "pid": 5, "st": "up"}


@pytest.mark.parametrize("extra, error", [
    ({"st": "upp"}, "unknown state"),
    ({"up": "3"}, "ill-typed up"),
    ({"r": 1}, "ill-typed r"),
    ({"v": None}, "ill-typed v"),
])
def test_a_pong_the_front_could_not_read_is_refused(extra: dict, error: str) -> None:
    """The front's WorkerLink reads a pong's state as a RuntimeState, `up` as a
    number, `r` and `v` as strings: anything else raised from its receive loop
    (found by fuzz/target_wire.py)."""
    assert protocol.unpack(protocol.pack({**PONG, "up": 0.5, "r": "", "v": "v1"}))
    with pytest.raises(protocol.ProtocolError, match=error):
        protocol.unpack(protocol.pack({**PONG, **extra}))
