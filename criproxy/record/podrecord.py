"""Each runtime's pods and containers as it last answered: the front's one record of them.

Two users need it (see KUBELET.md): the List fan-out, which answers for a
runtime that cannot answer now with its last complete answer instead of
leaving its pods out (kubelet would restart them), and image routing, which
finds the runtime of a RuntimeClass pod from kubelet's image calls.

It is fed by
- fresh answers to unfiltered ListPodSandbox / ListContainers: each replaces
  that List entirely, so only a runtime's own answer makes its pods vanish;
- kubelet's successful changes through criproxy (podchanges.py), applied on
  top, and replayed onto a fresh answer to a List sent before they were made.

Answers are kept as the bytes the runtime sent and decoded only when used, so
a relist costs a reference and a comparison. They are written to the runtime
dir (recordfile.py), at most once a second, so that a restarted front serves
them from its first call; kubelet's changes are written at once.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

from google.protobuf.message import DecodeError, Message

from cri_api.v1 import api_pb2 as v1
from criproxy.record import listfilter, recordfile
from criproxy.record.podchanges import CHANGES, Change
from criproxy.record.sameitems import same_items
from criproxy.settings import Config, Runtime

log = logging.getLogger("criproxy.front")

SANDBOXES, CONTAINERS = "ListPodSandbox", "ListContainers"
LISTS = (SANDBOXES, CONTAINERS)
_WRITE_EVERY = 1.0
# A record file dated later than now by more than this is not believed.
_CLOCK_SLACK = 5.0
# kubelet's changes kept per runtime between two of its fresh answers (about 5
# per pod's life: the churn of hundreds of pods while its Lists do not answer).
MAX_CHANGES = 2000
# An unchanged answer is written too now and then, so that the file tells its age.
_REFRESH_FILE_EVERY = 10.0


@dataclasses.dataclass
class Answer:
    raw: bytes
    taken: float      # unix time the runtime gave it
    seq: int          # the runtime's changes up to this one are in it


@dataclasses.dataclass
class View:
    sandboxes: dict[str, v1.PodSandbox]
    containers: dict[str, v1.Container]


def _decode(response: type[Message], answer: Answer | None) -> dict[str, Any]:
    if answer is None:
        return {}
    field = "items" if response is v1.ListPodSandboxResponse else "containers"
    return {item.id: item for item in getattr(response.FromString(answer.raw), field)}


class RuntimeRecord:
    """One runtime's last answers and kubelet's changes since."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.answers: dict[str, Answer] = {}
        self.changes: list[tuple[int, Change]] = []
        self.seq = 0
        # The Lists (by method) answered from here now, and those left out (no
        # answer, or too old): each logged once when it starts and stops.
        self.serving_last: set[str] = set()
        self.left_out: set[str] = set()
        self._view: View | None = None
        # When kubelet's first change through criproxy came: a runtime that never
        # answered a List is known from its changes alone, as of then.
        self.first_change_at: float | None = None

    def fresh(self, method: str, raw: bytes, sent_seq: int) -> bool:
        """Keep a fresh answer to a List sent at `sent_seq`; False if nothing new."""
        kept = self.answers.get(method)
        if kept is not None and kept.seq > sent_seq:
            return False  # answered before a newer answer we already keep
        self.answers[method] = Answer(raw, time.time(), sent_seq)
        if kept is not None and kept.raw == raw and kept.seq == sent_seq:
            return False
        self._prune()
        self._view = None
        return True

    def change(self, change: Change) -> None:
        if self.first_change_at is None:
            self.first_change_at = time.time()
        self.seq += 1
        self.changes.append((self.seq, change))
        self._view = None
        if len(self.changes) > MAX_CHANGES:
            self._fold()

    def _fold(self) -> None:
        """Bound the journal of a runtime whose Lists do not answer while kubelet
        churns: with both answers kept, they take the changes in (as the record
        file does) and the journal empties; a List already on its way then counts
        as older and is dropped (the next relist is taken). Without an answer to
        replay them onto, only the newest half is kept: a List sent that many
        changes ago has long timed out."""
        if all(m in self.answers for m in LISTS):
            for method, (raw, taken) in self.lists().items():
                self.answers[method] = Answer(raw, taken, self.seq)
            self.changes = []
        else:
            self.changes = self.changes[-(MAX_CHANGES // 2):]
            self._view = None

    def _prune(self) -> None:
        """Forget changes that every kept answer already shows."""
        oldest = min(self.answers[m].seq if m in self.answers else 0 for m in LISTS)
        self.changes = [(seq, change) for seq, change in self.changes if seq > oldest]

    def view(self) -> View:
        if self._view is None:
            sandboxes = self.answers.get(SANDBOXES)
            containers = self.answers.get(CONTAINERS)
            view = View(_decode(v1.ListPodSandboxResponse, sandboxes),
                        _decode(v1.ListContainersResponse, containers))
            for seq, (on_sandboxes, on_containers) in self.changes:
                if on_sandboxes and seq > (sandboxes.seq if sandboxes else 0):
                    on_sandboxes(view.sandboxes)
                if on_containers and seq > (containers.seq if containers else 0):
                    on_containers(view.containers)
            self._view = view
        return self._view

    def lists(self) -> recordfile.Lists:
        """The answers as they stand with kubelet's changes, for the record file."""
        if not self.changes:
            return {m: (a.raw, a.taken) for m, a in self.answers.items()}
        view = self.view()
        encoded = {SANDBOXES: v1.ListPodSandboxResponse(items=view.sandboxes.values()),
                   CONTAINERS: v1.ListContainersResponse(containers=view.containers.values())}
        return {m: (encoded[m].SerializeToString(), a.taken) for m, a in self.answers.items()}

    def age(self, now: float) -> float | None:
        taken = [a.taken for a in self.answers.values()]
        return now - min(taken) if taken else None


class PodRecord:
    """The record of every runtime, by runtime name (the primary's is "")."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.runtimes: dict[str, RuntimeRecord] = {}
        self._saved_at: dict[str, float] = {}
        self._unsaved: set[str] = set()  # runtimes with a new answer not yet written
        for runtime in config.runtimes:
            self.add_runtime(runtime)

    def add_runtime(self, runtime: Runtime) -> None:
        """A runtime joins (from -connect, or registered): its file is read back."""
        record = self.runtimes[runtime.name] = RuntimeRecord(runtime)
        self._saved_at[runtime.name] = 0.0
        self._load(record)

    def remove_runtime(self, name: str) -> None:
        """A registered runtime left: its record goes, its file too, so that a
        runtime registering later under its name never shows the pods of this one."""
        del self.runtimes[name], self._saved_at[name]
        self._unsaved.discard(name)
        recordfile.record_path(self.config.rundir, name).unlink(missing_ok=True)

    # --- feeding ---------------------------------------------------------------

    def sent(self, runtime: str) -> int:
        """Mark a List being sent: its answer will show changes up to now."""
        return self.runtimes[runtime].seq

    def answered(self, runtime: str, method: str, request: Message, raw: bytes,
                 sent_seq: int) -> None:
        """A runtime's own answer to a List; kept if it is complete (unfiltered)."""
        if method not in LISTS or listfilter.is_filtered(request):
            return
        record = self.runtimes[runtime]
        if method in record.serving_last or method in record.left_out:
            log.warning("runtime %s answers %s again; it no longer comes from its "
                        "last answer", record.runtime.label, method)
            record.serving_last.discard(method)
            record.left_out.discard(method)
        if record.fresh(method, raw, sent_seq):
            self._unsaved.add(runtime)
        self._save_soon(runtime)

    def as_before(self, runtime: str, method: str, answer: bytes) -> bytes:
        """A fresh answer to an unfiltered List as the bytes of the runtime's last one
        when it holds the same items in another order (sameitems.py), so that what
        compares answers as bytes (the record, its file, the claims filter, the
        owners) finds nothing new in an unchanged relist."""
        kept = self.runtimes[runtime].answers.get(method) if method in LISTS else None
        return kept.raw if kept is not None and same_items(kept.raw, answer) else answer

    def observe(self, runtime: str, method: str, request: Message, answer: bytes) -> None:
        """A call that succeeded; if it changed the runtime's pods, record that."""
        make_change = CHANGES.get(method)
        if make_change is not None:
            self.runtimes[runtime].change(make_change(request, answer))
            self._save_now(runtime)

    # --- serving -----------------------------------------------------------------

    def last_answer(self, runtime: str, method: str, request: Message) -> bytes | None:
        """The runtime's last answer to this List, filtered as the runtime would;
        None when there is none or it is older than -staleFor. The caller counts
        the answers it serves (criproxy_list_stale_answers_total, front/dispatch.py):
        the record imports nothing of the front's or of operations'."""
        record = self.runtimes[runtime]
        if method not in LISTS:
            return None
        taken, source = _last_known(record, method)
        if taken is None:
            self._note_left_out(record, method, "has no last answer")
            return None
        age = time.time() - taken
        if age > self.config.stale_for:
            self._note_left_out(record, method, f"its {source} is {age:.0f}s old, "
                                f"more than -staleFor {self.config.stale_for:g}s")
            return None
        if method not in record.serving_last:
            log.warning("runtime %s cannot answer %s; answering from its %s (%.1fs old) "
                        "until it does", record.runtime.label, method, source, age)
            record.serving_last.add(method)
        return _selected(record.view(), method, request)

    def _note_left_out(self, record: RuntimeRecord, method: str, why: str) -> None:
        """kubelet will restart the pods of a runtime left out: say so, once."""
        if method not in record.left_out:
            log.warning("runtime %s cannot answer %s and %s: answering without it",
                        record.runtime.label, method, why)
            record.left_out.add(method)
            record.serving_last.discard(method)

    def pod_runtime(self, matches: Callable[[v1.PodSandbox], bool]) -> str | None:
        """The runtime of the newest sandbox that `matches`."""
        found: list[tuple[int, str]] = []
        for name, record in self.runtimes.items():
            for sandbox in record.view().sandboxes.values():
                if matches(sandbox):
                    found.append((sandbox.created_at, name))
        return max(found)[1] if found else None

    def newest_sandbox(self, runtime: str, uid: str) -> int | None:
        """When the runtime's newest sandbox of the pod was created, if it has one."""
        record = self.runtimes.get(runtime)
        if record is None:
            return None
        return max((s.created_at for s in record.view().sandboxes.values()
                    if s.metadata.uid == uid), default=None)

    def sandboxes_older_than(self, seconds: float) -> bool:
        """Whether some runtime's sandboxes are known only from an answer this old, or
        from none."""
        now = time.time()
        return any(SANDBOXES not in r.answers or now - r.answers[SANDBOXES].taken > seconds
                   for r in self.runtimes.values())

    def snapshot(self, runtime: str) -> dict[str, Any]:
        """For `criproxy status`."""
        record = self.runtimes[runtime]
        return {"serving_last_answer": bool(record.serving_last),
                "lists_left_out": bool(record.left_out),
                "last_answer_age": record.age(time.time())}

    # --- the record files --------------------------------------------------------

    def _load(self, record: RuntimeRecord) -> None:
        path = recordfile.record_path(self.config.rundir, record.runtime.name)
        now = time.time()
        for method, (raw, taken) in recordfile.load(path, record.runtime.socket).items():
            if method in LISTS and now - taken <= self.config.stale_for:
                if taken > now + _CLOCK_SLACK:
                    # Served as fresh until -staleFor after that time: maybe for ever.
                    log.warning("ignoring runtime %s's last %s answer in %s: it is dated "
                                "%.0fs in the future", record.runtime.label, method, path,
                                taken - now)
                    continue
                if not _decodes(method, raw):
                    log.warning("ignoring runtime %s's last %s answer in %s: it does not "
                                "decode", record.runtime.label, method, path)
                    continue
                record.answers[method] = Answer(raw, taken, 0)

    def _save_now(self, runtime: str) -> None:
        self._saved_at[runtime] = time.monotonic()
        self._unsaved.discard(runtime)
        record = self.runtimes[runtime]
        recordfile.save(recordfile.record_path(self.config.rundir, runtime),
                        record.runtime.socket, record.lists())

    def _save_soon(self, runtime: str) -> None:
        """Fresh answers come every second: write a new one at most that often (at
        the next relist after it, if not at once), and an unchanged one now and then
        so that the file tells its age."""
        since = time.monotonic() - self._saved_at[runtime]
        if (runtime in self._unsaved and since >= _WRITE_EVERY) or since > _REFRESH_FILE_EVERY:
            self._save_now(runtime)


def _decodes(method: str, raw: bytes) -> bool:
    """Whether a List answer read from a file decodes (a damaged one would fail
    every view of the runtime's record, and so every List)."""
    try:
        _decode(v1.ListPodSandboxResponse if method == SANDBOXES else v1.ListContainersResponse,
                Answer(raw, 0.0, 0))
        return True
    except DecodeError:
        return False


def _last_known(record: RuntimeRecord, method: str) -> tuple[float | None, str]:
    """Since when the record knows the runtime's answer to `method`, and from what.
    A runtime that never answered it, but on which kubelet made pods through
    criproxy, is known from those changes: left out, its pods would look gone."""
    if method in record.answers:
        return record.answers[method].taken, "last answer"
    if record.changes and record.first_change_at is not None:
        return record.first_change_at, "changes made through criproxy (it never answered)"
    return None, ""


def _selected(view: View, method: str, request: Message) -> bytes:
    if method == SANDBOXES:
        items = listfilter.select_sandboxes(list(view.sandboxes.values()),
                                            request.filter)  # type: ignore[attr-defined]
        return v1.ListPodSandboxResponse(items=items).SerializeToString()
    containers = listfilter.select_containers(list(view.containers.values()),
                                              request.filter,  # type: ignore[attr-defined]
                                              view.sandboxes)
    return v1.ListContainersResponse(containers=containers).SerializeToString()
