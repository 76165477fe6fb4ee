"""The front's Prometheus metrics: what it counts, and the families a scrape shows.

Every metric is computed in the front: it sees every request, and it learns
each runtime's state and its worker's restarts from the workers' heartbeats
(WorkerLink), so no worker runs an HTTP server of its own.

The request path is hot, so `request_done` costs one dict look-up and a few
integer updates on the event loop (no locks): request counts and latency
histograms are turned into metrics, and runtime state, restarts and queue
depths read from the links, only when scraped.

The formats are written by exposition.py, the endpoint is metrics_endpoint.py,
the front process's own figures come from process_metrics.py.
"""
from __future__ import annotations

import bisect
import collections
import time
from typing import Any, Iterable

import grpc

from criproxy.ops.exposition import Family, counter, gauge, go_float
from criproxy.ops.process_metrics import process_families

# The `runtime` label of a request answered by several runtimes (List calls,
# broadcasts), and of one refused before it reached any runtime.
SEVERAL = "*"
NONE = "none"

# CRI calls take from a millisecond (status calls) to minutes (image pulls).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 120.0)
# `criproxy status` rates are over this many seconds.
WINDOW = 60.0


def collect() -> list[Family]:
    """Every family of a scrape, in the order the front has always shown them."""
    return [*process_families(), *_front_families(), *_request_families(),
            *_links.collect()]


class _Tally:
    """Counts of one runtime (for `criproxy status`) or one runtime and method."""

    __slots__ = ("count", "errors", "seconds", "buckets", "codes", "runtime_tally")

    def __init__(self, runtime_tally: "_Tally | None" = None) -> None:
        self.count = 0
        self.errors = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative
        self.codes: dict[grpc.StatusCode, int] = {}  # failures only: OK = count - these
        self.runtime_tally = runtime_tally

    def copy(self) -> tuple[int, int, list[int]]:
        return self.count, self.errors, list(self.buckets)


# Plain integers, updated and read on the front's event loop only (the endpoint
# is served there too): no locks on the request path. Exported when scraped.
_in_flight = 0
_subscribers = 0
_skipped: dict[tuple[str, str], int] = {}       # (runtime, method)
_last_answers: dict[tuple[str, str], int] = {}  # (runtime, method)
_foreign_claims: dict[tuple[str, str], int] = {}  # (runtime, method)
_series: dict[tuple[str, str], _Tally] = {}   # (runtime, method)
_tallies: dict[str, _Tally] = {}              # runtime
_history: collections.deque = collections.deque()
# Runtimes that left: a count still arriving for one (a call it was answering as it
# left) makes no series again, until a runtime of that label joins.
_gone: set[str] = set()
_OK = grpc.StatusCode.OK


def request_started() -> None:
    global _in_flight
    _in_flight += 1


def request_done(method: str, routed: list[str], code: grpc.StatusCode,
                 seconds: float) -> None:
    """Count one answered unary request (runtime labels as in `routed_to`)."""
    global _in_flight
    _in_flight -= 1
    runtime = routed[0] if len(routed) == 1 else SEVERAL if routed else NONE
    series = _series.get((runtime, method))
    if series is None:
        if runtime in _gone:
            return
        tally = _tallies.get(runtime) or _tallies.setdefault(runtime, _Tally())
        series = _series[(runtime, method)] = _Tally(tally)
    bucket = bisect.bisect_left(BUCKETS, seconds)
    series.count += 1
    series.seconds += seconds
    series.buckets[bucket] += 1
    tally = series.runtime_tally
    tally.count += 1
    tally.buckets[bucket] += 1
    if code is not _OK:
        series.codes[code] = series.codes.get(code, 0) + 1
        tally.errors += 1


def _front_families() -> list[Family]:
    in_flight = gauge("criproxy_requests_in_flight", "unary CRI requests being answered now")
    in_flight.add((), _in_flight)
    subscribers = gauge("criproxy_event_subscribers",
                        "open GetContainerEvents streams (kubelet's event subscriptions)")
    subscribers.add((), _subscribers)
    skipped = counter("criproxy_fanout_skipped", "List answers given without a runtime, "
                      "because it failed or did not answer within -listBudget")
    last = counter("criproxy_list_stale_answers", "List answers in which a runtime that "
                   "could not answer was represented by its last answer (pod record)")
    foreign = counter("criproxy_runtime_foreign_claims", "items a runtime's answer held "
                      "about pods owned by another runtime, dropped")
    for family, counts in ((skipped, _skipped), (last, _last_answers),
                           (foreign, _foreign_claims)):
        for (runtime, method), count in list(counts.items()):
            family.add((("runtime", runtime), ("method", method)), count, "_total")
    return [in_flight, subscribers, skipped, last, foreign]


def _request_families() -> list[Family]:
    """criproxy_requests_total and criproxy_request_duration_seconds, from _series."""
    requests = counter(
        "criproxy_requests", "CRI requests answered, by runtime, method and gRPC code "
        "(runtime '*': several runtimes; 'none': refused by criproxy)")
    latency = Family("criproxy_request_duration_seconds", "histogram",
                     "time from a CRI request's arrival to its answer")
    for (runtime, method), series in list(_series.items()):
        labels = (("runtime", runtime), ("method", method))
        failed = list(series.codes.items())
        ok = series.count - sum(count for _, count in failed)
        for code, count in ([(_OK, ok)] if ok else []) + failed:
            requests.add(labels + (("code", code.name),), count, "_total")
        cumulative = 0
        for bound, count in zip(BUCKETS + (float("inf"),), series.buckets):
            cumulative += count
            latency.add(labels + (("le", go_float(bound)),), cumulative, "_bucket")
        latency.add(labels, cumulative, "_count")
        latency.add(labels, series.seconds, "_sum")
    return [requests, latency]


def subscriber_joined() -> None:
    global _subscribers
    _subscribers += 1


def subscriber_left() -> None:
    global _subscribers
    _subscribers -= 1


def _count(counts: dict[tuple[str, str], int], runtime: str, method: str, count: int) -> None:
    key = (runtime, method)
    if key in counts or runtime not in _gone:
        counts[key] = counts.get(key, 0) + count


def runtime_skipped(runtime: str, method: str) -> None:
    _count(_skipped, runtime, method, 1)


def declare_runtime(runtime: str, fan_out_methods: Iterable[str],
                    last_answer_methods: Iterable[str]) -> None:
    """Export a runtime's List counters at 0 from the start: rate() then sees their
    first increase, and alert rules find every series they name."""
    _gone.discard(runtime)
    for method in fan_out_methods:
        _skipped.setdefault((runtime, method), 0)
        _foreign_claims.setdefault((runtime, method), 0)
    for method in last_answer_methods:
        _last_answers.setdefault((runtime, method), 0)


def last_answer_served(runtime: str, method: str) -> None:
    _count(_last_answers, runtime, method, 1)


def foreign_claim_dropped(runtime: str, method: str, count: int = 1) -> None:
    """Count items of `runtime`'s answer to `method` about another runtime's pods,
    left out of what kubelet is shown."""
    _count(_foreign_claims, runtime, method, count)


def forget_runtime(runtime: str) -> None:
    """Drop every series of a runtime that left, and its `criproxy status` rates: a
    scrape or status then shows it no more. Requests counted under several runtimes
    ('*') stay counted there. (Its state gauges go with its link, see watch_links.)"""
    _gone.add(runtime)
    for counts in (_skipped, _last_answers, _foreign_claims, _series):
        for key in [key for key in counts if key[0] == runtime]:
            del counts[key]
    _tallies.pop(runtime, None)
    for _, snapshot in _history:  # or a runtime joining again under its label
        snapshot.pop(runtime, None)  # would start from the old counts


# --- runtime state, read from the links when scraped ---------------------------

class _LinkCollector:
    """Runtime state, worker restarts and queue depth, straight from the WorkerLinks."""

    def __init__(self) -> None:
        self.links: Iterable[Any] = ()

    def collect(self) -> list[Family]:
        up = gauge("criproxy_runtime_up",
                   "1 if the runtime answers CRI calls through its worker, else 0")
        state = gauge("criproxy_runtime_state", "the runtime's state (1 for the current one)")
        restarts = counter("criproxy_worker_restarts",
                           "restarts of the runtime's worker seen by this front")
        pending = gauge("criproxy_worker_pending_calls", "calls and streams sent to the "
                        "runtime's worker and not yet answered")
        bad = counter("criproxy_runtime_bad_answers", "answers of the runtime that did not "
                      "decode (each failed its call, or was left out of a merged List)")
        for link in list(self.links):
            snap = link.snapshot()
            runtime = (("runtime", snap["label"]),)
            up.add(runtime, 1.0 if snap["state"] == "up" else 0.0)
            state.add(runtime + (("state", snap["state"]),), 1.0)
            restarts.add(runtime, snap["restarts"], "_total")
            pending.add(runtime, snap["in_flight"])
            bad.add(runtime, snap["bad_answers"], "_total")
        return [up, state, restarts, pending, bad]


_links = _LinkCollector()


def watch_links(links: Iterable[Any]) -> None:
    """Report these WorkerLinks' runtimes (the front calls it once, with a live view:
    registered runtimes come and go)."""
    _links.links = links


# --- `criproxy status` rates -----------------------------------------------------

def recent_rates(now: float | None = None) -> dict[str, dict[str, float]]:
    """Per runtime label: requests/s, errors/s and p99 seconds over the last WINDOW.

    Called once a second by the front's status writer; it keeps a snapshot
    per call and compares the newest with the one about WINDOW seconds old.
    """
    now = time.monotonic() if now is None else now
    _history.append((now, {label: tally.copy() for label, tally in _tallies.items()}))
    while len(_history) > 2 and _history[1][0] <= now - WINDOW:
        _history.popleft()
    then, old = _history[0]
    elapsed = now - then
    rates = {}
    for label, (count, errors, buckets) in _history[-1][1].items():
        base_count, base_errors, base_buckets = old.get(label, (0, 0, [0] * len(buckets)))
        done = count - base_count
        rates[label] = {
            "rate": done / elapsed if elapsed > 0 else 0.0,
            "error_rate": (errors - base_errors) / elapsed if elapsed > 0 else 0.0,
            "p99": _quantile(0.99, [b - a for a, b in zip(base_buckets, buckets)]),
            "window": elapsed,
        }
    return rates


def _quantile(q: float, buckets: list[int]) -> float | None:
    """Like PromQL's histogram_quantile: interpolate inside the bucket holding q."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if seen + count >= rank and count:
            if i == len(BUCKETS):
                return BUCKETS[-1]  # beyond the last bound: say at least that
            lower = BUCKETS[i - 1] if i else 0.0
            return lower + (BUCKETS[i] - lower) * (rank - seen) / count
        seen += count
    return BUCKETS[-1]
