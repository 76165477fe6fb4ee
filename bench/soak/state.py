"""What the soak's client knows, shared by its pod workers and its relister.

`Expect` is the client's view of what criproxy must show: the sandboxes and
containers it created (their answers arrived, or it adopted them from a List) and
has not begun to remove, and the ids whose removal was answered OK. A relist is
judged against a snapshot taken before it and one taken after it, so a change
made while it ran may rightly show or not.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Optional

from cri_api.v1 import api_pb2 as pb

NAMESPACE = "soak"
UID_LABEL = "io.kubernetes.pod.uid"


@dataclasses.dataclass
class SoakPod:
    n: int
    kind: str                         # "primary", "annotation" or "handler"
    runtime: str                      # criproxy's label of the runtime it belongs on
    uid: str
    name: str
    config: pb.PodSandboxConfig       # attempt 0; later attempts copy it
    handler: str = ""
    want: str = "live"                # "live" or "gone"
    state: str = "pending"            # pending, running, done
    sandbox: Optional[str] = None
    container: Optional[str] = None
    scheduled_at: float = 0.0
    running_at: Optional[float] = None
    done_at: Optional[float] = None
    next_try: float = 0.0
    busy: bool = False
    failures: int = 0
    reopened: int = 0                 # times housekeeping found it again after it was done
    ever_running: bool = False
    counted: bool = False


@dataclasses.dataclass(frozen=True)
class Snapshot:
    sandboxes: frozenset[str]         # must be listed, SANDBOX_READY
    containers: frozenset[str]        # must be listed
    running: frozenset[str]           # must be listed CONTAINER_RUNNING
    gone: frozenset[str]              # must not be listed


class Expect:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sandboxes: set[str] = set()
        self.containers: set[str] = set()
        self.running: set[str] = set()
        self.gone: dict[str, float] = {}
        self.seen: set[str] = set()       # every id the client learnt of, by answer or List

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(frozenset(self.sandboxes), frozenset(self.containers),
                            frozenset(self.running), frozenset(self.gone))

    def saw(self, *ids: str) -> None:
        with self._lock:
            self.seen.update(ids)

    def add_sandbox(self, sid: str) -> None:
        with self._lock:
            self.sandboxes.add(sid)
            self.seen.add(sid)

    def add_container(self, cid: str, running: bool) -> None:
        with self._lock:
            self.containers.add(cid)
            self.seen.add(cid)
            if running:
                self.running.add(cid)

    def forget(self, *ids: Optional[str]) -> None:
        """The client is about to stop or remove these: no longer required."""
        with self._lock:
            for i in ids:
                self.sandboxes.discard(i)        # type: ignore[arg-type]
                self.containers.discard(i)       # type: ignore[arg-type]
                self.running.discard(i)          # type: ignore[arg-type]

    def removed(self, oid: str) -> None:
        with self._lock:
            self.sandboxes.discard(oid)
            self.containers.discard(oid)
            self.running.discard(oid)
            self.seen.add(oid)
            self.gone.setdefault(oid, time.monotonic())


class CallStats:
    """Per method: answers by gRPC code, and durations of the OK ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.ok_seconds: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: list[dict] = []      # the first ERROR_CAP failures, in detail
        self.error_count = 0
        # Calls routed to one runtime failing in a row (from the first failure to the
        # next answer), by runtime: a runtime criproxy keeps calling down when it is not.
        self.stretches: list[dict] = []
        self._failing: dict[str, dict] = {}

    def all_stretches(self) -> list[dict]:
        with self._lock:
            now = time.monotonic()
            return self.stretches + [{**s, "seconds": round(now - s["at"], 2), "unfinished": True}
                                     for s in self._failing.values()]

    ERROR_CAP = 300

    def ok(self, method: str, seconds: float, runtime: str = "*") -> None:
        with self._lock:
            self.codes[method]["OK"] += 1
            if len(self.ok_seconds[method]) < 100_000:
                self.ok_seconds[method].append(seconds)
            since = self._failing.pop(runtime, None)
            if since is not None:
                self.stretches.append({**since, "seconds": round(time.monotonic() - since["at"], 2)})

    def failed(self, method: str, runtime: str, code: str, details: str, pod: str) -> None:
        with self._lock:
            self.codes[method][code] += 1
            self.error_count += 1
            if runtime != "*" and code != "CANCELLED_BY_CLIENT":
                self._failing.setdefault(runtime, {
                    "runtime": runtime, "at": time.monotonic(), "wall": wall(),
                    "first_error": f"{method} {code}: {details[:200]}"})
            if len(self.errors) < self.ERROR_CAP:
                self.errors.append({"at": time.monotonic(), "wall": wall(), "method": method,
                                    "runtime": runtime, "code": code,
                                    "details": details[:300], "pod": pod})


def wall() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
