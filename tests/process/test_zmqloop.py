"""LoopSocket: a plain ZeroMQ socket driven by the asyncio loop (criproxy/wire/zmqloop.py).

ZMQ_FD is edge-triggered, so the ways a message can be missed are: a socket
whose FD was never armed, and an edge consumed by a send. Each has a test.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from typing import Callable, Iterator

import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from criproxy.wire.zmqloop import LoopSocket
from tests.support.harness import short_dir

WAIT = 5.0


@pytest.fixture
def endpoint() -> str:
    return f"ipc://{short_dir('zl-')}/peer.ipc"


def _echo_peer(endpoint: str) -> subprocess.Popen:
    """A ROUTER in another process that sends every message back."""
    code = ("import sys, zmq\n"
            "s = zmq.Context().socket(zmq.ROUTER); s.bind(sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "while True: s.send_multipart(s.recv_multipart())\n")
    peer = subprocess.Popen([sys.executable, "-c", code, endpoint], stdout=subprocess.PIPE,
                            text=True)
    assert peer.stdout is not None and peer.stdout.readline() == "ready\n"
    return peer


def test_a_monitor_reports_a_peer_killed_long_after_the_start(endpoint: str) -> None:
    """Regression: without arming the FD at the start, the disconnect never arrived,
    and the front only noticed a killed worker when its successor said hello."""
    async def scenario() -> dict:
        peer = _echo_peer(endpoint)
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        events: asyncio.Queue = asyncio.Queue()
        monitor = LoopSocket(dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED),
                             lambda frames: events.put_nowait(parse_monitor_message(frames)))
        dealer.connect(endpoint)
        link = LoopSocket(dealer, lambda frames: None)
        await asyncio.sleep(0.5)
        os.kill(peer.pid, signal.SIGKILL)
        peer.wait()
        try:
            return await asyncio.wait_for(events.get(), WAIT)
        finally:
            dealer.disable_monitor()
            monitor.close()
            link.close()
            ctx.destroy(linger=0)

    assert asyncio.run(scenario())["event"] == zmq.EVENT_DISCONNECTED


@contextlib.contextmanager
def echoed_link(endpoint: str, on_frames: Callable[[list[bytes]], None],
                send_queue: int = 1000) -> Iterator[LoopSocket]:
    """A LoopSocket (DEALER) connected to an echo peer; both gone afterwards."""
    peer = _echo_peer(endpoint)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, send_queue)
    link = LoopSocket(dealer, on_frames)
    dealer.connect(endpoint)
    try:
        yield link
    finally:
        link.close()
        ctx.destroy(linger=0)
        peer.kill()
        peer.wait()


def test_every_answer_arrives_while_sends_and_receives_interleave(endpoint: str) -> None:
    """Sends consume FD edges; answers that came meanwhile must still be taken."""
    count = 5000

    async def scenario() -> list[int]:
        got: list[int] = []
        done = asyncio.Event()

        def on_frames(frames: list[bytes]) -> None:
            got.append(int(frames[0]))
            if len(got) == count:
                done.set()

        # A send queue as large as the front's: no send is refused here.
        with echoed_link(endpoint, on_frames, send_queue=count) as link:
            for n in range(count):
                link.send([str(n).encode()])
                if n % 7 == 0:
                    await asyncio.sleep(0)
            await asyncio.wait_for(done.wait(), WAIT)
        return got

    assert sorted(asyncio.run(scenario())) == list(range(count))


def test_a_callback_that_raises_does_not_deafen_the_socket(endpoint: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[bytes]:
        got: list[bytes] = []
        second = asyncio.Event()

        def on_frames(frames: list[bytes]) -> None:
            if frames[0] == b"bad":
                raise ValueError("cannot handle this one")
            got.append(frames[0])
            second.set()

        with echoed_link(endpoint, on_frames) as link:
            link.send([b"bad"])
            link.send([b"good"])
            await asyncio.wait_for(second.wait(), WAIT)
        return got

    assert asyncio.run(scenario()) == [b"good"]
    assert "could not be handled" in caplog.text


def test_close_stops_the_callbacks(endpoint: str) -> None:
    async def scenario() -> list[list[bytes]]:
        got: list[list[bytes]] = []
        with echoed_link(endpoint, got.append) as link:
            link.send([b"late"])
            link.close()  # before the loop had a turn: the echo must not reach the callback
            await asyncio.sleep(0.3)
        return got

    assert asyncio.run(scenario()) == []
