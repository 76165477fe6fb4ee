"""Hardening (issue 8): garbage sent straight to a worker's ZeroMQ socket.

A root client (only root can open the socket: it lives in the 0700 runtime
dir, mode 0600) connects a DEALER to alt's worker and sends malformed and
truncated frames. Each is dropped with a log line; the worker keeps serving
the front (same pid, alt stays up, calls to alt still work). A well-formed
call for a method the runtime does not have is answered with an error
envelope.
"""
from __future__ import annotations

import time
from typing import Iterator

import grpc
import msgpack
import pytest
import zmq
from cri_api.v1 import api_pb2 as cri

from criproxy.settings import load_settings_file
from criproxy.wire import protocol
from tests.process.cluster import Cluster, start_cluster, stop_cluster

RT = "/runtime.v1.RuntimeService/"
VERSION = RT + "Version"
WAIT = 30.0  # generous: the machine is shared


def pack(message: object) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


@pytest.fixture(scope="module")
def wc() -> Iterator[Cluster]:
    cluster = start_cluster()
    cluster.pids = pids(cluster)  # type: ignore[attr-defined]
    yield cluster
    stop_cluster(cluster)


@pytest.fixture(scope="module")
def dealer(wc: Cluster) -> Iterator[zmq.Socket]:
    """A root client on alt's worker socket, named as the proxy names it."""
    config = load_settings_file(str(wc.proxy.rundir / "settings.json"))
    [alt] = [r for r in config.runtimes if r.name == "alt"]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{config.worker_socket(alt)}")
    yield sock
    sock.close()
    ctx.term()


def pids(cluster: Cluster) -> dict[str, int]:
    return cluster.proxy.pids(("primary", "alt", "vm.cloud"))


def alt_log_lines(cluster: Cluster, offset: int) -> list[str]:
    worker = f"worker-alt[{cluster.pids['alt']}]"  # type: ignore[attr-defined]
    return [line for line in cluster.proxy.log()[offset:].splitlines() if worker in line]


def wait_for_log(cluster: Cluster, offset: int, text: str) -> str:
    deadline = time.monotonic() + WAIT
    while True:
        lines = [line for line in alt_log_lines(cluster, offset) if text in line]
        if lines:
            return lines[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line of alt's worker says {text!r}; it logged:\n"
                                 + "\n".join(alt_log_lines(cluster, offset))[-3000:])
        time.sleep(0.05)


def answers(sock: zmq.Socket, wanted: set[int], timeout: float = WAIT) -> dict[int, dict]:
    """Read envelopes (ignoring pongs) until every id in `wanted` was answered."""
    got: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while not wanted <= set(got) and time.monotonic() < deadline:
        if sock.poll(100):
            frames = sock.recv_multipart()
            assert len(frames) == 1, frames
            message = protocol.unpack(frames[0])
            if message["t"] != protocol.PONG:
                got[message["id"]] = message
    return got


def assert_alt_serves(cluster: Cluster) -> None:
    """alt's worker still takes the front's calls: alt's own NOT_FOUND comes back."""
    stub = cluster.proxy.runtime_stub()
    with pytest.raises(grpc.RpcError) as caught:
        stub.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id="alt__no-such-pod"),
                              timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    assert cluster.fakes["alt"].entries("PodSandboxStatus")[-1]["request"] == {
        "pod_sandbox_id": "no-such-pod"}
    assert cluster.proxy.runtime_status("alt")["state"] == "up"
    assert pids(cluster) == cluster.pids  # type: ignore[attr-defined]


# (name, frames, what alt's worker logs)
BAD = [
    ("not msgpack", [b"\xc1garbage"], "undecodable frame (8 bytes)"),
    ("truncated msgpack", [pack({"t": "call", "id": 1, "m": VERSION, "b": b""})[:-3]],
     "undecodable frame"),
    ("empty frame", [b""], "undecodable frame (0 bytes)"),
    ("msgpack list", [pack([1, 2, 3])], "frame is a list, not a map"),
    ("msgpack string", [pack("call")], "frame is a str, not a map"),
    ("msgpack nil", [pack(None)], "frame is a NoneType, not a map"),
    ("no type", [pack({"id": 1})], "unknown message type None"),
    ("unknown type", [pack({"t": "launch-missiles"})], "unknown message type 'launch-missiles'"),
    ("type is a list", [pack({"t": ["call"]})], "unknown message type ['call']"),
    ("type is a map", [pack({"t": {"call": 1}})], "unknown message type {'call': 1}"),
    ("type is bytes", [pack({"t": b"call"})], "unknown message type b'call'"),
    ("missing fields", [pack({"t": "call", "id": 2})], "call message lacks m, b"),
    ("missing id", [pack({"t": "cancel"})], "cancel message lacks id"),
    ("b as str", [pack({"t": "call", "id": 3, "m": VERSION, "b": "str"})],
     "call message has ill-typed b"),
    ("id as str", [pack({"t": "call", "id": "3", "m": VERSION, "b": b""})],
     "call message has ill-typed id"),
    ("m as bytes", [pack({"t": "stream", "id": 4, "m": VERSION.encode(), "b": b""})],
     "stream message has ill-typed m"),
    ("d as str", [pack({"t": "call", "id": 5, "m": VERSION, "b": b"", "d": "soon"})],
     "call message has ill-typed d"),
    ("int map key", [pack({1: 2})], "undecodable frame"),
    ("deep nesting", [b"\x91" * 100_000 + b"\xc0"], "undecodable frame (100001 bytes)"),
    ("8 MiB of garbage", [b"\xc1" * (8 << 20)], f"undecodable frame ({8 << 20} bytes)"),
    ("two frames", [pack({"t": "ping"}), pack({"t": "ping"})],
     "dropping a message of 3 frames (want 2)"),
    ("empty first frame", [b"", pack({"t": "call", "id": 6, "m": VERSION, "b": b""})],
     "dropping a message of 3 frames (want 2)"),
    ("a front-bound reply", [pack({"t": "reply", "id": 7, "inc": "x", "b": b""})],
     "dropping a reply message: workers do not take it"),
]


def test_unpack_refuses_a_type_that_is_not_a_string() -> None:
    """Regression: an unhashable `t` escaped unpack() as TypeError and ended the
    worker's receive loop: alt went down for good while its process lived on."""
    for kind in (["call"], {"call": 1}, b"call", 1, None, 1.5):
        with pytest.raises(protocol.ProtocolError, match="unknown message type"):
            protocol.unpack(pack({"t": kind, "id": 1, "m": VERSION, "b": b""}))


@pytest.mark.parametrize("name,frames,logged", BAD, ids=[case[0] for case in BAD])
def test_bad_frame_is_dropped_with_a_log_line(wc: Cluster, dealer: zmq.Socket, name: str,
                                              frames: list[bytes], logged: str) -> None:
    offset = len(wc.proxy.log())
    dealer.send_multipart(frames)
    line = wait_for_log(wc, offset, logged)
    assert " W " in line or "WARN" in line, line
    # Nothing answers a dropped frame (pongs aside, and no call in it was started).
    assert answers(dealer, {-1}, timeout=0.5) == {}
    assert_alt_serves(wc)


def test_call_for_an_unknown_method_is_answered_with_an_error(wc: Cluster,
                                                              dealer: zmq.Socket) -> None:
    calls = {
        101: {"t": "call", "m": "/runtime.v1.RuntimeService/NoSuchMethod", "b": b""},
        102: {"t": "stream", "m": "/no.such.Service/Method", "b": b""},
        103: {"t": "call", "m": "", "b": b"", "d": 5.0},
        104: {"t": "call", "m": "not a path \u2603\x00", "b": b"\xff"},
        105: {"t": "call", "m": VERSION, "b": b"\xff\xff\xff\xff"},  # undecodable request
        106: {"t": "call", "m": VERSION, "b": b"", "d": float("nan")},
        107: {"t": "call", "m": VERSION, "b": b"", "d": -1},
        108: {"t": "stream", "m": RT + "GetContainerEvents", "b": b"", "d": 0.001},
    }
    for request_id, message in calls.items():
        dealer.send(pack({**message, "id": request_id}))
    got = answers(dealer, set(calls))
    assert set(got) == set(calls), f"unanswered: {set(calls) - set(got)}"
    for request_id, reply in got.items():
        assert reply["t"] == protocol.ERROR, (request_id, reply)
        code = grpc.StatusCode  # a clear code, never an unexpected exception's
        assert reply["c"] not in (code.UNKNOWN.value[0], code.INTERNAL.value[0]), reply
    assert got[101]["c"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert got[102]["c"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert got[105]["c"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # And a good call on the same socket is answered.
    dealer.send(pack({"t": "call", "id": 109, "m": VERSION, "b": b"", "d": WAIT}))
    reply = answers(dealer, {109})[109]
    assert reply["t"] == protocol.REPLY, reply
    assert cri.VersionResponse.FromString(reply["b"]).runtime_name == "alt"
    assert_alt_serves(wc)


def test_everything_at_once_then_still_serving(wc: Cluster, dealer: zmq.Socket) -> None:
    offset = len(wc.proxy.log())
    for _ in range(20):
        for _name, frames, _logged in BAD:
            dealer.send_multipart(frames)
    wait_for_log(wc, offset, "dropping a reply message")
    assert_alt_serves(wc)
    stub = wc.proxy.runtime_stub()
    listed = stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=WAIT)
    assert listed is not None
    assert pids(wc) == wc.pids  # type: ignore[attr-defined]
