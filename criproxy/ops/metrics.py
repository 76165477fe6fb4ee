"""The front's Prometheus metrics and the HTTP endpoint serving them.

Every metric is computed in the front: it sees every request, and it learns
each runtime's state and its worker's restarts from the workers' heartbeats
(WorkerLink), so no worker runs an HTTP server of its own.

The request path is hot, so `request_done` costs one dict look-up and a few
integer updates on the event loop (no locks): request counts and latency
histograms are turned into metrics, and runtime state, restarts and queue
depths read from the links, only when scraped.

The exposition (Prometheus text 0.0.4, or OpenMetrics 1.0 when the scraper
asks for it) is written here, without prometheus_client: that library, with
the http.server, wsgiref, email and urllib modules it loads, was 3 MB of the
front's memory for a few lines of text (issue 26). The output is the same,
line for line, as prometheus_client 0.26 wrote it.

The endpoint is served from the front's event loop (no thread): `GET /metrics`
(or `/`) on `-metricsAddress`, `host:port` or `unix:/path`.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import grpc

log = logging.getLogger("criproxy.front")

# The `runtime` label of a request answered by several runtimes (List calls,
# broadcasts), and of one refused before it reached any runtime.
SEVERAL = "*"
NONE = "none"

# CRI calls take from a millisecond (status calls) to minutes (image pulls).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 120.0)
# `criproxy status` rates are over this many seconds.
WINDOW = 60.0


# --- the exposition formats ------------------------------------------------------


class Family:
    """One metric family, as a scrape shows it: (suffix, labels, value) samples."""

    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = []

    def add(self, labels: Iterable[tuple[str, str]], value: float, suffix: str = "") -> None:
        self.samples.append((suffix, tuple(labels), value))


def counter(name: str, help_text: str) -> Family:
    return Family(name, "counter", help_text)


def gauge(name: str, help_text: str) -> Family:
    return Family(name, "gauge", help_text)


def go_float(value: float) -> str:
    """A number as Prometheus (Go) writes it: +Inf, NaN, 1.0, 1e+07."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape(text: str, quote: bool = True) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r'\"') if quote else text


def _sample_lines(family: Family, out: list[str]) -> None:
    for suffix, labels, value in family.samples:
        name = family.name + suffix
        if labels:
            name += "{" + ",".join(f'{key}="{_escape(val)}"'
                                   for key, val in sorted(labels)) + "}"
        out.append(f"{name} {go_float(value)}\n")


def text_format(families: Iterable[Family]) -> bytes:
    """Prometheus text format 0.0.4 (a counter's family is named NAME_total)."""
    out: list[str] = []
    for family in families:
        shown = family.name + ("_total" if family.kind == "counter" else "")
        out.append(f"# HELP {shown} {_escape(family.help, quote=False)}\n")
        out.append(f"# TYPE {shown} {family.kind}\n")
        _sample_lines(family, out)
    return "".join(out).encode()


def openmetrics_format(families: Iterable[Family]) -> bytes:
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape(family.help)}\n")
        out.append(f"# TYPE {family.name} {family.kind}\n")
        _sample_lines(family, out)
    out.append("# EOF\n")
    return "".join(out).encode()


TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"


def choose_format(accept: str) -> tuple[Callable[[Iterable[Family]], bytes], str]:
    """OpenMetrics when the scraper accepts it (Prometheus does), else the text format."""
    for accepted in accept.split(","):
        if accepted.split(";")[0].strip() == "application/openmetrics-text":
            return openmetrics_format, OPENMETRICS_TYPE
    return text_format, TEXT_TYPE


def collect() -> list[Family]:
    """Every family of a scrape, in the order the front has always shown them."""
    return [*_process_families(), *_front_families(), *_request_families(),
            *_links.collect()]


# --- the front process (prometheus_client's process collector, namespaced) --------

_PREFIX = "criproxy_front_process_"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_boot_time: float | None = None


def _process_families() -> list[Family]:
    global _boot_time
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        if _boot_time is None:
            _boot_time = next(float(line.split()[1]) for line in
                              Path("/proc/stat").read_text().splitlines()
                              if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return []
    families = []
    for name, kind, help_text, value in (
            ("virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", float(fields[20])),
            ("resident_memory_bytes", "gauge", "Resident memory size in bytes.",
             float(fields[21]) * _PAGE),
            ("start_time_seconds", "gauge",
             "Start time of the process since unix epoch in seconds.",
             float(fields[19]) / _TICKS + _boot_time),
            ("cpu_seconds", "counter", "Total user and system CPU time spent in seconds.",
             (float(fields[11]) + float(fields[12])) / _TICKS)):
        family = Family(_PREFIX + name, kind, help_text)
        family.add((), value, "_total" if kind == "counter" else "")
        families.append(family)
    try:
        open_fds = float(len(os.listdir("/proc/self/fd")))
        family = gauge(_PREFIX + "open_fds", "Number of open file descriptors.")
        family.add((), open_fds)
        families.append(family)
        for line in Path("/proc/self/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                family = gauge(_PREFIX + "max_fds", "Maximum number of open file descriptors.")
                family.add((), float(line.split()[3]))
                families.append(family)
    except (OSError, ValueError, IndexError):
        pass
    return families


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
_series: dict[tuple[str, str], _Tally] = {}   # (runtime, method)
_tallies: dict[str, _Tally] = {}              # runtime
_history: collections.deque = collections.deque()
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
    for family, counts in ((skipped, _skipped), (last, _last_answers)):
        for (runtime, method), count in list(counts.items()):
            family.add((("runtime", runtime), ("method", method)), count, "_total")
    return [in_flight, subscribers, skipped, last]


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


def runtime_skipped(runtime: str, method: str) -> None:
    _skipped[(runtime, method)] = _skipped.get((runtime, method), 0) + 1


def declare_runtime(runtime: str, fan_out_methods: Iterable[str],
                    last_answer_methods: Iterable[str]) -> None:
    """Export a runtime's List counters at 0 from the start: rate() then sees their
    first increase, and alert rules find every series they name."""
    for method in fan_out_methods:
        _skipped.setdefault((runtime, method), 0)
    for method in last_answer_methods:
        _last_answers.setdefault((runtime, method), 0)


def last_answer_served(runtime: str, method: str) -> None:
    _last_answers[(runtime, method)] = _last_answers.get((runtime, method), 0) + 1


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


# --- the endpoint ---------------------------------------------------------------

async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        verb, path, *_ = lines[0].split(" ") + ["", ""]
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        accept = next((v.strip() for k, v in headers.items() if k.lower() == "accept"), "")
        if verb not in ("GET", "HEAD"):
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path.split("?")[0] not in ("/", "/metrics"):
            status, ctype, body = "404 Not Found", "text/plain", b"see /metrics\n"
        else:
            encoder, ctype = choose_format(accept)
            status, body = "200 OK", encoder(collect())
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        if verb != "HEAD":
            writer.write(body)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            asyncio.TimeoutError, UnicodeError):
        pass  # a broken scrape; the scraper tries again
    finally:
        writer.close()


# Scrapes answered at once. Any local user may connect to a TCP endpoint: without
# a cap, idle connections would use up the front's file descriptors, and the front
# could accept neither kubelet nor its workers' reconnections. Extra ones are closed.
MAX_SCRAPES = 16
_scrapes = 0


async def _answer_bounded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global _scrapes
    if _scrapes >= MAX_SCRAPES:
        writer.close()
        return
    _scrapes += 1
    try:
        await _answer(reader, writer)
    finally:
        _scrapes -= 1


class Endpoint:
    """The metrics HTTP server; it keeps trying to bind until it succeeds."""

    RETRY = 10.0

    def __init__(self, address: str, socket_mode: int = 0o660, group_id: int = -1) -> None:
        self.address = address
        self.bound = ""  # host:port or unix:/path actually bound, for status.json
        self.error = ""
        self._mode = socket_mode
        self._gid = group_id
        self._server: asyncio.AbstractServer | None = None
        self._task: asyncio.Task | None = None
        # Called when `bound` or `error` changes (the front's status file shows them).
        self.on_change: Callable[[], None] | None = None

    def start(self) -> None:
        if self.address:
            self._task = asyncio.create_task(self._bind_forever())

    async def _bind_forever(self) -> None:
        while True:
            try:
                await self._bind()
                log.info("metrics served on http %s/metrics", self.bound)
                self._changed()
                return
            except OSError as err:
                if not self.error:
                    log.error("cannot serve metrics on %s: %s; retrying every %.0fs",
                              self.address, err, self.RETRY)
                if self.error != str(err):
                    self.error = str(err)
                    self._changed()
            await asyncio.sleep(self.RETRY)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _bind(self) -> None:
        if self.address.startswith("unix:"):
            path = Path(self.address[len("unix:"):])
            if path.is_symlink() or (path.exists() and not path.is_socket()):
                raise OSError(f"{path} exists and is not a socket; not removing it")
            path.unlink(missing_ok=True)
            self._server = await asyncio.start_unix_server(_answer_bounded, str(path))
            os.chmod(path, self._mode)
            if self._gid != -1:
                os.chown(path, -1, self._gid)
            self.bound = self.address
        else:
            host, _, port = self.address.rpartition(":")
            host = host.strip("[]")
            self._server = await asyncio.start_server(_answer_bounded, host, int(port))
            sockname = self._server.sockets[0].getsockname()
            shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
            self.bound = f"{shown}:{sockname[1]}"
        self.error = ""

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            if self.address.startswith("unix:"):
                Path(self.address[len("unix:"):]).unlink(missing_ok=True)
