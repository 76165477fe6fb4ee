"""Which runtime each pod belongs to: the one runtime allowed to speak for it.

kubelet believes every item a List returns about a pod (KUBELET.md, "What
kubelet believes"), whichever runtime it came from, so a runtime that lists a
copy of another runtime's pod makes kubelet kill, restart or duplicate the real
one. criproxy knows where kubelet put each pod, and that is the truth:

- a pod (its uid) belongs to the runtime that its latest RunPodSandbox through
  criproxy went to ("placed"); a pod moved to another runtime (its RuntimeClass
  mapping or annotation changed) remembers its previous owners, whose old
  sandboxes kubelet still has to remove (front/claims.py);
- a pod criproxy never placed (it was there before criproxy, or was made behind
  its back) belongs to the first runtime whose fresh, complete ListPodSandbox
  lists it ("listed"); runtimes listing it in the same merged relist are taken
  in -connect order, the primary first, then registered runtimes in the order
  they joined;
- an owner that no longer lists its pod for FORGET_AFTER, or that leaves, loses
  it: the pod is nobody's, and claims about it pass (kubelet stops an orphan
  through the runtime that lists it).

The table is kept in the runtime dir (msgpack, replaced atomically, written when
it changes), so a restarted front knows every owner from its first call.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterable

import msgpack

from cri_api.v1 import api_pb2 as v1
from criproxy.record.recordfile import replace_privately

log = logging.getLogger("criproxy.front")

VERSION = 1
# How long an owner's complete Lists may leave out its pod before it is nobody's:
# long enough that a runtime restarting, or answering Lists sent before the pod
# was placed, keeps it; short enough that the table follows the node's pods.
FORGET_AFTER = 600.0
# Previous owners remembered per pod (a pod moved back and forth keeps the latest).
MAX_PREVIOUS = 4


@dataclasses.dataclass
class Owner:
    runtime: str
    since: float                       # unix time it became the owner
    placed: bool                       # by kubelet's RunPodSandbox, or else listed
    previous: tuple[str, ...] = ()     # runtimes that owned the pod before, oldest first


def owners_path(rundir: str) -> Path:
    return Path(rundir) / "pod-owners.msgpack"


class PodOwners:
    def __init__(self, rundir: str, runtimes: Iterable[str]) -> None:
        self.path = owners_path(rundir)
        self.present: list[str] = list(runtimes)  # in -connect order, then registered
        self.generation = 0                       # bumped by every change of the table
        self._owners: dict[str, Owner] = self._load()
        self._listed: dict[str, bytes] = {}       # each runtime's last ListPodSandbox seen
        self._absent_since: dict[str, float] = {}

    # --- asking ----------------------------------------------------------------

    def owner(self, uid: str) -> Owner | None:
        """The pod's owner, if it is a runtime criproxy serves now."""
        found = self._owners.get(uid)
        return found if found is not None and found.runtime in self.present else None

    def owned_by_others(self, runtime: str) -> frozenset[str]:
        """The pods that runtimes served now, other than `runtime`, own."""
        return frozenset(uid for uid, o in self._owners.items()
                         if o.runtime != runtime and o.runtime in self.present)

    def snapshot(self) -> dict[str, int]:
        """Pods owned, by runtime name, for `criproxy status`."""
        counts: dict[str, int] = {}
        for owner in self._owners.values():
            if owner.runtime in self.present:
                counts[owner.runtime] = counts.get(owner.runtime, 0) + 1
        return counts

    # --- kubelet's decisions and the runtimes' answers ---------------------------

    def place(self, uid: str, runtime: str) -> None:
        """kubelet's RunPodSandbox for the pod went to `runtime` and succeeded."""
        if not uid:
            return
        current = self._owners.get(uid)
        if current is not None and current.runtime == runtime and current.placed:
            return
        previous = _previous_after_move(current, runtime)
        self._owners[uid] = Owner(runtime, time.time(), True, previous[-MAX_PREVIOUS:])
        self._absent_since.pop(uid, None)
        if current is not None and current.runtime != runtime:
            log.info("pod %s moves from runtime %s to runtime %s", uid,
                     current.runtime or "primary", runtime or "primary")
        self._changed()

    def listed(self, runtime: str, answer: bytes) -> None:
        """A runtime's fresh answer to an unfiltered ListPodSandbox (its claims about
        other runtimes' pods already dropped): it takes the pods nobody owns, and
        the pods it owns but left out start to be forgotten."""
        if self._listed.get(runtime) == answer:
            return
        self._listed[runtime] = answer
        uids = {s.metadata.uid for s in v1.ListPodSandboxResponse.FromString(answer).items}
        uids.discard("")
        changed = self._adopt(runtime, uids)
        changed |= self._note_absent(runtime, uids)
        if changed:
            self._changed()

    def _adopt(self, runtime: str, uids: set[str]) -> bool:
        adopted = [uid for uid in uids if self.owner(uid) is None]
        for uid in adopted:
            self._owners[uid] = Owner(runtime, time.time(), False)
        return bool(adopted)

    def _note_absent(self, runtime: str, uids: set[str]) -> bool:
        now = time.time()
        forgotten = []
        for uid, owner in self._owners.items():
            if owner.runtime != runtime:
                continue
            if uid in uids:
                self._absent_since.pop(uid, None)
            elif now - self._absent_since.setdefault(uid, now) > FORGET_AFTER:
                forgotten.append(uid)
        for uid in forgotten:
            del self._owners[uid], self._absent_since[uid]
        return bool(forgotten)

    # --- runtimes that come and go -------------------------------------------------

    def runtime_joined(self, runtime: str) -> None:
        if runtime not in self.present:
            self.present.append(runtime)
            self._changed(save=False)

    def runtime_left(self, runtime: str) -> None:
        """Its pods are nobody's: a runtime registering later under its name starts
        with none (as its pod record does)."""
        if runtime in self.present:
            self.present.remove(runtime)
        self._listed.pop(runtime, None)
        for uid in [u for u, o in self._owners.items() if o.runtime == runtime]:
            del self._owners[uid]
            self._absent_since.pop(uid, None)
        self._changed()

    # --- the table's file ------------------------------------------------------------

    def _changed(self, save: bool = True) -> None:
        self.generation += 1
        if save:
            self._save()

    def _save(self) -> None:
        table = {uid: [o.runtime, o.since, o.placed, list(o.previous)]
                 for uid, o in self._owners.items()}
        body = msgpack.packb({"v": VERSION, "owners": table}, use_bin_type=True)
        try:
            replace_privately(self.path, body)
        except OSError as err:
            log.warning("cannot keep the pods' owners in %s: %s", self.path, err)

    def _load(self) -> dict[str, Owner]:
        """The table a previous front kept; a damaged one is none (logged): every pod
        is then adopted again by the runtimes that list it."""
        try:
            data = msgpack.unpackb(self.path.read_bytes(), raw=False)
            if not isinstance(data, dict) or data.get("v") != VERSION:
                raise ValueError("not a version-1 table")
            return {str(uid): _owner_from(entry) for uid, entry in data["owners"].items()}
        except FileNotFoundError:
            return {}
        except Exception as err:  # noqa: BLE001 - any damage means: no table
            log.warning("ignoring the pods' owners in %s: %s", self.path, err)
            return {}


def _previous_after_move(current: Owner | None, runtime: str) -> tuple[str, ...]:
    if current is None:
        return ()
    if current.runtime == runtime:
        return current.previous
    return tuple(p for p in current.previous if p != runtime) + (current.runtime,)


def _owner_from(entry: list) -> Owner:
    runtime, since, placed, previous = entry
    if not isinstance(runtime, str) or not all(isinstance(p, str) for p in previous):
        raise ValueError(f"owner entry {entry!r:.100}")
    return Owner(runtime, float(since), bool(placed), tuple(previous)[-MAX_PREVIOUS:])
