#!/usr/bin/env python3
"""CPU cost of one ZeroMQ DEALER/ROUTER round trip between two asyncio processes,
with pyzmq's asyncio sockets (as criproxy used them before criproxy/wire/zmqloop.py)
and, on the client side, with a plain socket driven by loop.add_reader.

    .venv/bin/python bench/calls/zmq_pingpong.py
"""
from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import tempfile
import time

import msgpack
import zmq
import zmq.asyncio

N = 5000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def server(endpoint: str) -> None:
    sock = zmq.asyncio.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    started = None
    for n in range(N + 10):
        if n == 10:
            started = _cpu()
        peer, frame = await sock.recv_multipart()
        message = msgpack.unpackb(frame)
        sock.send_multipart([peer, msgpack.packb({"t": "reply", "id": message["id"],
                                                  "b": b"x" * 100})], flags=zmq.NOBLOCK)
    print(f"  server (asyncio socket): {(_cpu() - started) / N * 1e6:.0f} us CPU per message pair",
          flush=True)


async def client(endpoint: str, raw: bool) -> str:
    if raw:
        sock = zmq.Context().socket(zmq.DEALER)
        ready = asyncio.Event()
        asyncio.get_running_loop().add_reader(sock.getsockopt(zmq.FD), ready.set)

        async def recv() -> bytes:
            while True:
                try:
                    return sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    ready.clear()
                    if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        await ready.wait()
    else:
        sock = zmq.asyncio.Context().socket(zmq.DEALER)

        async def recv() -> bytes:
            return await sock.recv()
    sock.connect(endpoint)
    for n in range(N + 10):
        if n == 10:
            cpu, wall = _cpu(), time.perf_counter()
        sock.send(msgpack.packb({"t": "call", "id": n, "b": b"y" * 100}), flags=zmq.NOBLOCK)
        await recv()
    kind = "plain socket + add_reader" if raw else "asyncio socket"
    return (f"  client ({kind}): {(_cpu() - cpu) / N * 1e6:.0f} us CPU per round trip, "
            f"{(time.perf_counter() - wall) / N * 1e6:.0f} us wall")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "server":
        asyncio.run(server(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory(prefix="zq-") as tmp:
        for raw in (False, True):
            endpoint = f"ipc://{tmp}/{int(raw)}.ipc"
            peer = subprocess.Popen([sys.executable, __file__, "server", endpoint])
            time.sleep(0.5)
            result = asyncio.run(client(endpoint, raw))
            peer.wait()
            print(result, flush=True)


if __name__ == "__main__":
    main()
