"""systemd's notify protocol without systemd: READY=1 means serving, WATCHDOG=1 means answering.

A datagram socket stands in for systemd's NOTIFY_SOCKET; criproxy is started as
the unit starts it (Type=notify, NotifyAccess=all, WatchdogSec=). Without a
notify socket: tests/unit/test_readiness.py.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Iterator

import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from criproxy.process import readiness
from tests.support.fakeruntime import start_fake
from tests.support.harness import Proxy, short_dir, start_proxy


@pytest.fixture
def notify_socket(monkeypatch) -> Iterator[socket.socket]:
    path = short_dir("nt-") / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def messages(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    """Every datagram until `until` (monotonic), with the time it came."""
    got = []
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append((time.monotonic(), sock.recv(4096).decode()))
        except socket.timeout:
            break
    return got


def test_notify_sends_one_datagram(notify_socket) -> None:
    assert readiness.notify("READY=1\nSTATUS=x")
    assert notify_socket.recv(100) == b"READY=1\nSTATUS=x"


def test_no_ping_while_the_probe_fails(notify_socket) -> None:
    outcomes = iter([None, RuntimeError("no answer"), RuntimeError("no answer"), None])

    async def probe(_timeout: float) -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    async def four_rounds() -> None:
        task = asyncio.create_task(readiness.watchdog_forever(probe, 0.05))
        await asyncio.sleep(0.18)
        task.cancel()

    asyncio.run(four_rounds())
    assert [m for _, m in messages(notify_socket, time.monotonic() + 0.2)] == \
        ["WATCHDOG=1", "WATCHDOG=1"]


def version(proxy: Proxy) -> str:
    stub = api_pb2_grpc.RuntimeServiceStub(proxy.channel())
    return stub.Version(cri.VersionRequest(), timeout=5).runtime_name


def test_ready_comes_once_the_socket_answers_and_every_worker_reported(
        notify_socket, monkeypatch) -> None:
    base = short_dir("rd-")
    primary = start_fake(base, "primary")
    alt = start_fake(base, "alt", "--delay", "Version=2.5")  # reports late
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    proxy = start_proxy(f"{base / 'primary.sock'},alt:{base / 'alt.sock'}", workdir=base)
    try:
        got = messages(notify_socket, time.monotonic() + 20)
        ready = [at for at, m in got if m.startswith("READY=1")]
        assert len(ready) == 1, got
        before = [m for at, m in got if at < ready[0]]
        assert not [m for m in before if "WATCHDOG" in m], before
        assert "alt up" in next(m for _, m in got if m.startswith("READY=1"))
        assert version(proxy)
        pings = [at for at, m in got if m == "WATCHDOG=1"]
        assert len(pings) >= 10, got  # every 0.5 s while the front answers
        front = proxy.front_pid()
        os.kill(front, signal.SIGSTOP)
        try:
            # A ping queued since the last read, or whose probe the front answered
            # just before it stopped, may still come: only later ones count.
            messages(notify_socket, time.monotonic() + 0.5)
            stopped = messages(notify_socket, time.monotonic() + 2)
        finally:
            os.kill(front, signal.SIGCONT)
        assert stopped == [], "a front that does not answer must not ping"
        assert messages(notify_socket, time.monotonic() + 2), "pings again once it answers"
    finally:
        proxy.stop()
        primary.stop()
        alt.stop()
