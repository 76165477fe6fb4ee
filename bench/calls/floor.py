#!/usr/bin/env python3
"""The floor of criproxy's architecture: what a proxy with the same parts but no
logic costs, measured beside direct calls and criproxy in one run.

    .venv/bin/python bench/calls/floor.py [--seconds 5] [--clients 1,16] [--rounds 3]
                                          [--baseline DIR] [--spans]

Each figure is the median of interleaved rounds (direct, bare, criproxy, ...).

The bare chain is a grpc.aio server that sends every request's bytes over
ZeroMQ (DEALER, msgpack envelope, plain socket driven by the loop, as in
criproxy/wire/zmqloop.py) to a worker process, which makes the call with a grpc.aio
client and sends the answer back. No routing, parsing, metrics, heartbeats,
logging or supervision; the caller's deadline does travel with the call, as
criproxy must pass it on. Whatever the bare chain costs over direct
calls, criproxy cannot cost less with this architecture and grpc-python;
criproxy minus the bare chain is the price of its own logic.

Two bare chains run in the same rounds (issue 26): `bare aio`, whose worker
makes the call with grpc.aio in an asyncio task and answers from the loop (the
chain criproxy was built on), and `bare sync`, whose worker starts the call on
a synchronous grpc channel (`future`) and sends the answer from grpc's own
thread, the ZeroMQ socket shared under a lock, so that a slow call still holds
no other. Alone it is the cheaper worker; behind a front it costs more (a grpc
thread started per call when calls come one at a time): bench/README.md, "A
lower floor?".

--baseline DIR adds another criproxy source tree (e.g. `git archive` of an
older commit, unpacked in DIR) to the same rounds, as `criproxy@base`: a
before/after comparison that machine drift cannot skew. --spans adds a
criproxy exporting its spans (-otlpEndpoint) to a receiver in this process.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc
import grpc.aio
import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from criproxy.wire.zmqloop import LoopSocket  # noqa: E402


# ------------------------------------------------------------------ the bare chain


class BareLink:
    """One ZeroMQ DEALER to one bare worker, with the calls waiting for its answers."""

    def __init__(self, endpoint: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(endpoint)
        self.link = LoopSocket(sock, self.on_frames)

    def on_frames(self, frames: list[bytes]) -> None:
        answer = msgpack.unpackb(frames[0])
        future = self.pending.pop(answer["id"], None)
        if future is not None and not future.done():
            future.set_result(answer["b"])

    def ask(self, path: str, body: bytes, deadline: float | None) -> asyncio.Future:
        request_id = next(self.ids)
        self.pending[request_id] = future = self.loop.create_future()
        self.link.send([msgpack.packb({"id": request_id, "m": path, "b": body, "d": deadline})])
        return future


Route = Callable[[str, bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


async def serve_forwarded(listen: str, route: Route) -> None:
    """A grpc.aio server on `listen` handing every call's bytes, undecoded, to
    route(method path, body, context)."""
    class Forward(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            path = details.method  # type: ignore[attr-defined]

            async def forward(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await route(path, body, context)

            return grpc.unary_unary_rpc_method_handler(forward)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Forward(),))
    server.add_insecure_port("unix:" + listen)
    await server.start()
    await server.wait_for_termination()


async def bare_front(listen: str, endpoint: str) -> None:
    link = BareLink(endpoint)
    await serve_forwarded(listen, lambda path, body, context:
                          link.ask(path, body, context.time_remaining()))


async def bare_worker(endpoint: str, runtime: str) -> None:
    channel = grpc.aio.insecure_channel("unix:" + runtime)
    callables: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    tasks: set[asyncio.Task] = set()

    async def call(peer: bytes, request: dict) -> None:
        method = callables.get(request["m"]) or callables.setdefault(
            request["m"], channel.unary_unary(request["m"]))
        answer = await method(request["b"], timeout=request["d"])
        link.send([peer, msgpack.packb({"id": request["id"], "b": answer})])

    def on_frames(frames: list[bytes]) -> None:
        task = asyncio.create_task(call(frames[0], msgpack.unpackb(frames[1])))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    link = LoopSocket(sock, on_frames)
    await asyncio.Event().wait()


async def bare_sync_worker(endpoint: str, runtime: str) -> None:
    channel = grpc.insecure_channel("unix:" + runtime)
    callables: dict[str, grpc.UnaryUnaryMultiCallable] = {}
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    loop = asyncio.get_running_loop()
    lock = threading.Lock()  # the loop and grpc's thread share the socket

    def take_waiting() -> None:
        with lock:
            waiting = []
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                waiting.append(sock.recv_multipart(zmq.NOBLOCK))
        for peer, frame in waiting:
            start(peer, msgpack.unpackb(frame))

    def start(peer: bytes, request: dict) -> None:
        method = callables.get(request["m"]) or callables.setdefault(
            request["m"], channel.unary_unary(request["m"]))
        call = method.future(request["b"], timeout=request["d"])
        call.add_done_callback(lambda done: answer([peer, msgpack.packb(
            {"id": request["id"], "b": done.result()})]))

    def answer(frames: list[bytes]) -> None:  # on grpc's thread
        with lock:
            sock.send_multipart(frames, zmq.NOBLOCK)
            waiting = sock.getsockopt(zmq.EVENTS) & zmq.POLLIN
        if waiting:  # the send may have taken the edge of ZMQ_FD
            loop.call_soon_threadsafe(take_waiting)

    loop.add_reader(sock.getsockopt(zmq.FD), take_waiting)
    take_waiting()
    await asyncio.Event().wait()


WORKERS = {"worker": bare_worker, "sync-worker": bare_sync_worker}


# ------------------------------------------------------------------ measuring


def measure(where: str, pids: dict[str, int], clients: int, seconds: float) -> dict:
    """calls/s, p50 and the CPU us per call of each process in `pids`."""
    # Imported here, not at the top: the bare front and worker run this file too,
    # and should carry no more than a minimal proxy would.
    from bench.common import procstat, rig
    from cri_api.v1 import api_pb2 as pb

    request = pb.VersionRequest(version="0.1.0")
    spec = {"groups": [[rig.job("x", where, "Version", request, seconds, concurrency=clients)]],
            "rounds": 1, "warmup": 100}
    load = subprocess.Popen([sys.executable, str(rig.COMMON / "loadgen.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    time.sleep(0.8)  # its imports
    before = {role: procstat.cpu_seconds(pid) for role, pid in pids.items()}
    out, _ = load.communicate(json.dumps(spec))
    stats = json.loads(out)["x"]
    used = {role: 1e6 * (procstat.cpu_seconds(pid) - before[role]) / stats["calls"]
            for role, pid in pids.items()}
    return {"calls_per_s": stats["calls_per_s"], "p50_ms": stats["p50_ms"], **used}


def _median(results: list[dict], key: str) -> float:
    values = sorted(r.get(key, 0.0) for r in results)
    return values[len(values) // 2]


def wait_for_bare_front(socket: Path, timeout: float = 20) -> None:
    """Until a bare front (here, or node/kubelet_mix.py's) has made its socket."""
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bare front did not create {socket}")
        time.sleep(0.05)


def _bare_chain(bench: Any, worker: str, runtime: str,
                started: list[subprocess.Popen]) -> tuple[str, dict[str, int]]:
    """A bare front and `worker` (a WORKERS key); their target and pids."""
    from bench.common import rig
    endpoint = f"ipc://{bench.base}/bare-{worker}.ipc"
    listen = str(bench.base / f"bare-{worker}.sock")
    pids = {}
    for role, addresses in ((worker, [endpoint, runtime]), ("front", [listen, endpoint])):
        proc = subprocess.Popen([sys.executable, __file__, "--role", role, *addresses])
        started.append(proc)
        pids["front" if role == "front" else "worker"] = proc.pid
    wait_for_bare_front(Path(listen))
    return rig.target(listen), pids


def _proxies(bench: Any, runtime: str, args: argparse.Namespace,
             stack: contextlib.ExitStack) -> tuple[dict[str, Any], Any]:
    """criproxy, and the variants asked for: an older tree, spans on (and their receiver)."""
    proxies, receiver = {}, None
    if args.baseline:
        proxies["criproxy@base"] = bench.proxy("b", runtime, ["primary"],
                                               repo=args.baseline.resolve())
    proxies["criproxy"] = bench.proxy("p", runtime, ["primary"])
    if args.spans:
        from tests.support.otlpreceiver import OtlpReceiver
        receiver = stack.enter_context(OtlpReceiver(bench.base / "otlp.sock", keep=False))
        proxies["criproxy+spans"] = bench.proxy("s", runtime, ["primary"],
                                                "-otlpEndpoint", receiver.endpoint)
    return proxies, receiver


def main() -> None:
    from bench.common import rig
    from bench.suite import run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another criproxy tree to measure too")
    parser.add_argument("--spans", action="store_true", help="measure spans on too")
    parser.add_argument("--role", choices=("front", *WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("addresses", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "front":
        asyncio.run(bare_front(*args.addresses))
        return
    if args.role in WORKERS:
        asyncio.run(WORKERS[args.role](*args.addresses))
        return

    bench = rig.Bench(run.parse_args([]), run.short_dir("flr-"))
    bare: list[subprocess.Popen] = []
    stack = contextlib.ExitStack()
    try:
        fake = bench.fake("a")
        paths = {"direct": (rig.target(fake.socket), {})}
        for name, worker in (("bare aio", "worker"), ("bare sync", "sync-worker")):
            paths[name] = _bare_chain(bench, worker, str(fake.socket), bare)
        proxies, receiver = _proxies(bench, str(fake.socket), args, stack)
        for name, each in proxies.items():
            paths[name] = (rig.target(each.listen), {"front": each.front_pid(),
                                                     "worker": each.worker_pid("primary")})
        print("Version calls to the fake runtime; CPU is per call, in the proxy's processes")
        print(f"{'clients':>7}  {'path':14}  {'calls/s':>7}  {'p50 ms':>6}  {'+p50 ms':>7}  "
              f"{'front us':>8}  {'worker us':>9}")
        for clients in (int(c) for c in args.clients.split(",")):
            rounds: dict[str, list[dict]] = {name: [] for name in paths}
            for _ in range(args.rounds):  # interleaved, so drift on the machine hits all alike
                for name, (where, pids) in paths.items():
                    rounds[name].append(measure(where, pids, clients, args.seconds))
            direct_p50 = _median(rounds["direct"], "p50_ms")
            for name, results in rounds.items():
                p50 = _median(results, "p50_ms")
                print(f"{clients:>7}  {name:14}  {_median(results, 'calls_per_s'):7.0f}  "
                      f"{p50:6.2f}  {p50 - direct_p50:+7.2f}  "
                      f"{_median(results, 'front'):8.0f}  {_median(results, 'worker'):9.0f}",
                      flush=True)
        if receiver is not None:
            print(f"spans received from criproxy+spans: {receiver.count}")
    finally:
        for proc in bare:
            proc.kill()
            proc.wait()
        bench.close()
        stack.close()


if __name__ == "__main__":
    main()
