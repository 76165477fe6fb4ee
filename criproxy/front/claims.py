"""A runtime's answers describe only the pods it owns (record/owners.py).

Every item a runtime answers that names a pod (by its sandbox's metadata uid or
the `io.kubernetes.pod.uid` label) owned by another runtime is a claim kubelet
would act on against the real pod: it is dropped before kubelet, the pod record
or the pod owners see it, counted (criproxy_runtime_foreign_claims_total),
logged (once a minute per runtime and pod) and shown by `criproxy status`. The
items that hang on a dropped sandbox by its id (its containers, stats,
metrics) go with it. A single object about another runtime's pod (its status,
its stats) is NOT_FOUND; an event about one is not passed on.

A pod kubelet moved to another runtime leaves its old sandbox on the previous
owner, which kubelet must still remove: that sandbox is shown, as NOTREADY,
while it is older than the owner's newest sandbox of the pod, so that kubelet
sees it as a dead sandbox of the pod and removes it (its garbage collection
removes a pod's sandboxes that are not ready, hold no container and are not
its newest); the previous owner's containers, stats and anything newer of the
pod are left out, uncounted. Claims about pods nobody owns pass.

Cheap on kubelet's relists: nothing is decoded while no pod belongs to another
runtime, and a List answered as before, with the owners unchanged, is passed
as it is without looking at its items again.
"""
from __future__ import annotations

import enum
import logging
import time
from typing import Any, Callable

from google.protobuf.message import Message

from cri_api.v1 import api_pb2 as v1
from criproxy.ops import metrics
from criproxy.record.owners import PodOwners

log = logging.getLogger("criproxy.front")

POD_UID_LABEL = "io.kubernetes.pod.uid"
_LOG_EVERY = 60.0
_MAX_LOGGED = 1000


class Verdict(enum.Enum):
    KEEP = "keep"
    DROP = "drop"      # a claim about another runtime's pod: counted
    HIDE = "hide"      # a previous owner's leftover of a moved pod: not shown
    OLD = "old"        # a previous owner's older sandbox: shown as NOTREADY


class Kind(enum.Enum):
    SANDBOX = "sandbox"
    CONTAINER = "container"
    SANDBOX_STATS = "sandbox stats"
    CONTAINER_STATS = "container stats"
    SANDBOX_METRICS = "sandbox metrics"


# method -> (the field holding the items, what they are)
LISTS: dict[str, tuple[str, Kind]] = {
    "ListPodSandbox": ("items", Kind.SANDBOX),
    "ListContainers": ("containers", Kind.CONTAINER),
    "ListPodSandboxStats": ("stats", Kind.SANDBOX_STATS),
    "ListContainerStats": ("stats", Kind.CONTAINER_STATS),
    "ListPodSandboxMetrics": ("pod_metrics", Kind.SANDBOX_METRICS),
}
# method -> (the field holding the one object, what it is)
SINGLES: dict[str, tuple[str, Kind]] = {
    "PodSandboxStatus": ("status", Kind.SANDBOX),
    "ContainerStatus": ("status", Kind.CONTAINER),
    "PodSandboxStats": ("stats", Kind.SANDBOX_STATS),
    "ContainerStats": ("stats", Kind.CONTAINER_STATS),
}
EVENTS = "GetContainerEvents"
CHECKED = frozenset(LISTS) | frozenset(SINGLES) | {EVENTS}


def _pod_of(kind: Kind, item: Any) -> tuple[set[str], str]:
    """The pod uids an item names, and the id of the sandbox it hangs on."""
    if kind == Kind.SANDBOX:
        return {item.metadata.uid, item.labels.get(POD_UID_LABEL, "")}, item.id
    if kind == Kind.CONTAINER:
        return {item.labels.get(POD_UID_LABEL, "")}, getattr(item, "pod_sandbox_id", "")
    if kind == Kind.SANDBOX_STATS:
        attributes = item.attributes
        return {attributes.metadata.uid, attributes.labels.get(POD_UID_LABEL, "")}, attributes.id
    if kind == Kind.CONTAINER_STATS:
        return {item.attributes.labels.get(POD_UID_LABEL, "")}, ""
    return set(), item.pod_sandbox_id


Judgement = tuple[Verdict, str, str]   # verdict, the pod's uid, its owner


class ForeignClaims:
    def __init__(self, owners: PodOwners, newest_sandbox: Callable[[str, str], int | None],
                 label_of: Callable[[str], str]) -> None:
        self.owners = owners
        self._newest_sandbox = newest_sandbox   # (runtime, uid) -> created_at on it
        self._label_of = label_of
        # Per runtime: its sandboxes left out of its last answers (its other items
        # that hang on them go too), and a generation bumped when they change.
        self._hidden: dict[str, dict[str, Judgement]] = {}
        self._hidden_generation = 0
        # (runtime, method) -> (answer, generations) of its last unfiltered List
        # left as it was (kubelet's filtered Lists between relists do not evict it).
        self._clean: dict[tuple[str, str], tuple[bytes, tuple[int, int]]] = {}
        # Per runtime: the uids other runtimes own, as of owners.generation.
        self._foreign: dict[str, frozenset[str]] = {}
        self._foreign_generation = -1
        self._tallies: dict[str, dict[str, Any]] = {}
        self._logged: dict[tuple[str, str], float] = {}

    # --- answers -----------------------------------------------------------------

    def own_answer(self, runtime: str, method: str, response: type[Message],
                   raw: bytes, complete: bool = False) -> bytes | None:
        """`raw` less what it says about other runtimes' pods; None when it is all
        about one (a status or an event). `complete`: an unfiltered List (kubelet's
        relist), remembered when it is left as it is; a ListPodSandbox's dropped
        sandboxes then replace those remembered for the runtime. Raises
        DecodeError for an answer that does not decode."""
        if method not in CHECKED or not self._foreign_uids(runtime):
            return raw
        generations = (self.owners.generation, self._hidden_generation)
        if complete and self._clean.get((runtime, method)) == (raw, generations):
            return raw
        message = response.FromString(raw)
        if method in LISTS:
            changed = self._own_items(runtime, method, message, complete)
        elif method in SINGLES:
            changed = self._own_single(runtime, method, message)
        else:
            changed = self._own_event(runtime, message)
        if changed is None:
            return None
        if not changed:
            if complete and method in LISTS:
                self._clean[(runtime, method)] = (raw, generations)
            return raw
        return message.SerializeToString()

    def _own_items(self, runtime: str, method: str, message: Message, complete: bool) -> bool:
        field, kind = LISTS[method]
        items = getattr(message, field)
        if not self._names_foreign(runtime, kind, items):
            if kind == Kind.SANDBOX:
                self._remember_hidden(runtime, {}, complete)
            return False
        changed, hidden = self._filter(runtime, method, kind, items)
        if kind == Kind.SANDBOX:
            self._remember_hidden(runtime, hidden, complete)
        return changed

    def _names_foreign(self, runtime: str, kind: Kind, items: Any) -> bool:
        """Whether some item names another runtime's pod or a left-out sandbox: one
        set lookup an item, so that an honest answer costs little more than its
        decode (judging each item in full costs about 2 µs)."""
        foreign = self._foreign_uids(runtime)
        hidden = self._hidden.get(runtime) or {}
        if kind == Kind.CONTAINER:
            return any(c.labels.get(POD_UID_LABEL) in foreign or c.pod_sandbox_id in hidden
                       for c in items)
        if kind == Kind.SANDBOX:
            return any(s.metadata.uid in foreign or s.labels.get(POD_UID_LABEL) in foreign
                       for s in items)
        return any(not uids.isdisjoint(foreign) or sandbox_id in hidden
                   for uids, sandbox_id in (_pod_of(kind, item) for item in items))

    def _foreign_uids(self, runtime: str) -> frozenset[str]:
        if self._foreign_generation != self.owners.generation:
            self._foreign = {}
            self._foreign_generation = self.owners.generation
        if runtime not in self._foreign:
            self._foreign[runtime] = self.owners.owned_by_others(runtime)
        return self._foreign[runtime]

    def _own_single(self, runtime: str, method: str, message: Message) -> bool | None:
        field, kind = SINGLES[method]
        verdict = self._judge(runtime, method, kind, getattr(message, field))
        if verdict in (Verdict.DROP, Verdict.HIDE):
            return None
        if verdict == Verdict.OLD:
            getattr(message, field).state = v1.SANDBOX_NOTREADY
        if method == "PodSandboxStatus":
            changed, _ = self._filter(runtime, method, Kind.CONTAINER,
                                      message.containers_statuses)  # type: ignore[attr-defined]
            return changed or verdict == Verdict.OLD
        return verdict == Verdict.OLD

    def _own_event(self, runtime: str, event: Message) -> bool | None:
        statuses = event.containers_statuses  # type: ignore[attr-defined]
        about = [(Kind.SANDBOX, event.pod_sandbox_status)]  # type: ignore[attr-defined]
        about += [(Kind.CONTAINER, status) for status in statuses]
        for kind, item in about:
            if self._judge(runtime, EVENTS, kind, item) != Verdict.KEEP:
                return None
        return False

    def _filter(self, runtime: str, method: str, kind: Kind,
                items: Any) -> tuple[bool, dict[str, Judgement]]:
        """Drop the items that are not the runtime's to show, in place."""
        dropped, hidden = [], {}
        changed = False
        for index, item in enumerate(items):
            verdict = self._judge(runtime, method, kind, item, hidden)
            if verdict == Verdict.OLD:
                item.state = v1.SANDBOX_NOTREADY
            elif verdict != Verdict.KEEP:
                dropped.append(index)
            changed |= verdict != Verdict.KEEP
        for index in reversed(dropped):
            del items[index]
        return changed, hidden

    # --- one item -----------------------------------------------------------------

    def _judge(self, runtime: str, method: str, kind: Kind, item: Any,
               hidden: dict[str, Judgement] | None = None) -> Verdict:
        uids, sandbox_id = _pod_of(kind, item)
        judgement = self._judge_pod(runtime, kind, uids, item)
        if judgement is None and sandbox_id and kind != Kind.SANDBOX:
            judgement = (self._hidden.get(runtime) or {}).get(sandbox_id)
        if judgement is None:
            return Verdict.KEEP
        verdict, uid, owner = judgement
        if verdict == Verdict.DROP:
            self._claimed(runtime, method, uid, owner)
        if hidden is not None and kind == Kind.SANDBOX:
            # What hangs on a sandbox shown as old is left out all the same.
            hidden[sandbox_id] = judgement if verdict == Verdict.DROP else \
                (Verdict.HIDE, uid, owner)
        return verdict

    def _judge_pod(self, runtime: str, kind: Kind, uids: set[str],
                   item: Any) -> Judgement | None:
        for uid in uids:
            owner = self.owners.owner(uid) if uid else None
            if owner is None or owner.runtime == runtime:
                continue
            if runtime not in owner.previous:
                return Verdict.DROP, uid, owner.runtime
            if kind == Kind.SANDBOX and self._older_than_owners(owner.runtime, uid, item):
                return Verdict.OLD, uid, owner.runtime
            return Verdict.HIDE, uid, owner.runtime
        return None

    def _older_than_owners(self, owner: str, uid: str, sandbox: Any) -> bool:
        newest = self._newest_sandbox(owner, uid)
        return newest is not None and sandbox.created_at < newest

    def _remember_hidden(self, runtime: str, hidden: dict[str, Judgement],
                         complete: bool) -> None:
        before = self._hidden.get(runtime, {})
        after = hidden if complete else {**before, **hidden}
        if after != before:
            self._hidden[runtime] = after
            self._hidden_generation += 1

    # --- what was dropped -----------------------------------------------------------

    def _claimed(self, runtime: str, method: str, uid: str, owner: str) -> None:
        label, owner_label = self._label_of(runtime), self._label_of(owner)
        metrics.foreign_claim_dropped(label, method)
        tally = self._tallies.setdefault(runtime, {"dropped": 0, "pods_of": set()})
        tally["dropped"] += 1
        tally["pods_of"].add(owner_label)
        tally["last"] = f"{method}: pod {uid} of runtime {owner_label}"
        self._log_claim(label, method, uid, owner_label)

    def _log_claim(self, label: str, method: str, uid: str, owner_label: str) -> None:
        now = time.monotonic()
        key = (label, uid)
        if now - self._logged.get(key, -_LOG_EVERY) < _LOG_EVERY:
            return
        if len(self._logged) > _MAX_LOGGED:
            self._logged.clear()
        self._logged[key] = now
        log.warning("runtime %s claims pod %s, which runtime %s owns, in its %s answer: "
                    "dropped (criproxy_runtime_foreign_claims_total counts each)",
                    label, uid, owner_label, method)

    def snapshot(self, runtime: str) -> dict[str, Any]:
        """For `criproxy status` and `criproxy doctor`."""
        tally = self._tallies.get(runtime)
        if tally is None:
            return {"foreign_claims": 0}
        return {"foreign_claims": tally["dropped"], "claims_pods_of": sorted(tally["pods_of"]),
                "last_foreign_claim": tally["last"]}

    def forget(self, runtime: str) -> None:
        """A runtime left: nothing of it stays."""
        self._hidden.pop(runtime, None)
        self._tallies.pop(runtime, None)
        for key in [k for k in self._clean if k[0] == runtime]:
            del self._clean[key]


