"""The benchmark's client: grpc.aio tasks in a process of their own.

    python bench/common/loadgen.py < spec.json > results.json

Every measurement, direct or through criproxy, is made by this same client,
so the two differ only in what answers. Requests and answers stay raw bytes
(no protobuf decoding in the client) to keep the client cheap.

spec:
  {"groups": [[JOB, JOB, ...], ...], "rounds": R, "warmup": W}
  JOB: {"id": str, "target": "unix:///path", "method": "/runtime.v1.RuntimeService/X",
        "request": base64, "concurrency": N, "duration": seconds (total over the rounds),
        "timeout": seconds, "rate": calls/s (optional: open loop instead of N loops),
        "samples": true (optional: return every latency too),
        "also": ["unix:///path", ...] (optional: each call also goes to these targets at
                the same time, and takes until all have answered)}

The jobs of one group are run alternately: each round runs every job of the
group for duration/R seconds, in an order that alternates from round to round,
so that a noisy neighbour or a warming cache hits the direct and the proxied
side alike. Results (stdout): {JOB id: stats}, stats as in `summarize`.
"""
from __future__ import annotations

import asyncio
import base64
import json
import resource
import sys
import time
from collections import Counter
from typing import Any

import grpc
import grpc.aio

_OPTIONS = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


def summarize(latencies: list[float], errors: Counter, elapsed: float, cpu: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    ms = 1000.0
    return {
        "calls": len(ordered), "errors": sum(errors.values()), "error_codes": dict(errors),
        "elapsed_s": elapsed, "calls_per_s": len(ordered) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(ordered, 50) * ms, "p90_ms": percentile(ordered, 90) * ms,
        "p99_ms": percentile(ordered, 99) * ms,
        "mean_ms": (sum(ordered) / len(ordered) * ms) if ordered else float("nan"),
        "min_ms": ordered[0] * ms if ordered else float("nan"),
        "max_ms": ordered[-1] * ms if ordered else float("nan"),
        # The client's own CPU use while this job ran, in cores: near 1.0 means the
        # client (one Python process) may be what limits the calls/s.
        "client_cores": cpu / elapsed if elapsed else 0.0,
    }


class Job:
    def __init__(self, spec: dict[str, Any], channels: dict[str, grpc.aio.Channel]) -> None:
        self.id = spec["id"]
        self.spec = spec
        if spec["target"] not in channels:
            channels[spec["target"]] = grpc.aio.insecure_channel(spec["target"], options=_OPTIONS)
        self.call = channels[spec["target"]].unary_unary(spec["method"])
        self.others = []
        for other in spec.get("also", []):
            if other not in channels:
                channels[other] = grpc.aio.insecure_channel(other, options=_OPTIONS)
            self.others.append(channels[other].unary_unary(spec["method"]))
        self.request = base64.b64decode(spec.get("request", ""))
        self.timeout = float(spec.get("timeout", 10.0))
        self.latencies: list[float] = []
        self.errors: Counter = Counter()
        self.elapsed = 0.0
        self.cpu = 0.0

    async def one(self, record: bool = True) -> None:
        started = time.perf_counter()
        try:
            if self.others:
                await asyncio.gather(*(call(self.request, timeout=self.timeout)
                                       for call in (self.call, *self.others)))
            else:
                await self.call(self.request, timeout=self.timeout)
        except grpc.aio.AioRpcError as err:
            if record:
                self.errors[err.code().name] += 1
            return
        if record:
            self.latencies.append(time.perf_counter() - started)

    async def run_for(self, seconds: float) -> None:
        cpu0 = _cpu()
        started = time.perf_counter()
        deadline = started + seconds
        if self.spec.get("rate"):
            await self._open_loop(deadline)
        else:
            await asyncio.gather(*(self._loop(deadline)
                                   for _ in range(int(self.spec.get("concurrency", 1)))))
        self.elapsed += time.perf_counter() - started
        self.cpu += _cpu() - cpu0

    async def _loop(self, deadline: float) -> None:
        while time.perf_counter() < deadline:
            await self.one()

    async def _open_loop(self, deadline: float) -> None:
        interval = 1.0 / float(self.spec["rate"])
        tasks = set()
        next_at = time.perf_counter()
        while next_at < deadline:
            task = asyncio.create_task(self.one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        if tasks:
            await asyncio.gather(*tasks)

    def result(self) -> dict[str, Any]:
        stats = summarize(self.latencies, self.errors, self.elapsed, self.cpu)
        if self.spec.get("samples"):  # every latency, for pooling blocks of a measurement
            stats["samples_ms"] = [round(x * 1000, 4) for x in self.latencies]
        return stats


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    spec = json.load(sys.stdin)
    rounds = int(spec.get("rounds", 1))
    channels: dict[str, grpc.aio.Channel] = {}
    results: dict[str, Any] = {}
    for group_spec in spec["groups"]:
        group = [Job(job, channels) for job in group_spec]
        for job in group:  # connect, and warm both ends up
            for _ in range(int(spec.get("warmup", 5))):
                await job.one(record=False)
        for round_number in range(rounds):
            order = group if round_number % 2 == 0 else list(reversed(group))
            for job in order:
                await job.run_for(float(job.spec["duration"]) / rounds)
        for job in group:
            results[job.id] = job.result()
    for channel in channels.values():
        await channel.close()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
