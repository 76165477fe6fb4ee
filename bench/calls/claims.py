#!/usr/bin/env python3
"""What the foreign-claims filter (front/claims.py, issue 30) costs per answer.

    .venv/bin/python bench/calls/claims.py [--pods 60] [--repeats 9] [--seconds 0.2]

One runtime's answers built as a runtime answers kubelet (labels and annotations as
kubelet sets them, bench/common/populate.py): ListPodSandbox with --pods sandboxes,
ListContainers with one and two containers per pod, ContainerStatus. Another
runtime owns as many pods again (half the node's pods), so the filter is on.
`ForeignClaims.own_answer` is timed in each of its paths:

- off:      no pod belongs to another runtime (nothing is decoded)
- hit:      the same answer again, owners unchanged (a bytes comparison)
- judge:    a changed answer with nothing to drop (decoded, every item judged)
- 1 lie:    the answer plus one pod of the other runtime (its sandbox and containers)
- half lies: half the answer's pods are the other runtime's
- and a relist after a filtered List of the same method (kubelet's GetPodStatus
  between two relists), against the same relist twice

beside what the fan-out already does to every part, `Dispatcher._present(whole=True)`:
a full decode of the primary's part, and decode + prefix + encode of a named
runtime's. For ContainerStatus (one object; never cached), beside `_present` of a
named runtime's answer (slim decode, prefix, encode); the primary's was passed as
it is before the filter.

CPU time of this thread (time.thread_time), per call; each figure is the median of
--repeats rounds (cases interleaved in every round), with the spread (min-max).
"""
from __future__ import annotations

import argparse
import atexit
import functools
import logging
import shutil
import statistics
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cri_api.v1 import api_pb2 as pb  # noqa: E402

from bench.common.populate import container_config, pod_config  # noqa: E402
from criproxy.front.claims import ForeignClaims  # noqa: E402
from criproxy.front.dispatch import Dispatcher  # noqa: E402
from criproxy.front.routing import METHODS, RUNTIME_SERVICE  # noqa: E402
from criproxy.record.owners import PodOwners  # noqa: E402

PRIMARY, OTHER = "", "alt.cloud"
IMAGE = "docker.io/library/busybox:latest"
IMAGE_ID = "sha256:" + "ab" * 32
NOW = 1_760_000_000_000_000_000


def pod(index: int) -> tuple[pb.PodSandbox, list[pb.Container], pb.ContainerStatus]:
    """A sandbox, two started containers and the first one's status, as a runtime has them."""
    uid = uuid.UUID(int=index).hex
    config = pod_config(f"pod-{index}", uid, index, None)
    sandbox = pb.PodSandbox(id=f"{index:064x}", metadata=config.metadata, state=pb.SANDBOX_READY,
                            created_at=NOW + index, labels=config.labels,
                            annotations=config.annotations)
    containers, status = [], None
    for c in range(2):
        cc = container_config(config, c, IMAGE, ["sleep", "100000"])
        cid = f"{index:032x}{c:032x}"
        containers.append(pb.Container(
            id=cid, pod_sandbox_id=sandbox.id, metadata=cc.metadata, image=cc.image,
            image_ref=IMAGE_ID, image_id=IMAGE_ID, state=pb.CONTAINER_RUNNING,
            created_at=NOW + index, labels=cc.labels, annotations=cc.annotations))
        if status is None:
            status = pb.ContainerStatus(
                id=cid, metadata=cc.metadata, state=pb.CONTAINER_RUNNING, created_at=NOW + index,
                started_at=NOW + index + 1, image=cc.image, image_ref=IMAGE_ID, image_id=IMAGE_ID,
                labels=cc.labels, annotations=cc.annotations,
                log_path=f"/var/log/pods/bench_pod-{index}_{uid}/c0/0.log")
    return sandbox, containers, status


def claims_for(pods: int, others_own: bool) -> ForeignClaims:
    """Pods 0..pods-1 are the primary's; pods..2*pods-1 the other runtime's."""
    rundir = tempfile.mkdtemp(prefix="claims-bench-")  # the owners table's file
    atexit.register(shutil.rmtree, rundir, True)
    owners = PodOwners(rundir, [PRIMARY, OTHER])
    for index in range(pods):
        owners.place(uuid.UUID(int=index).hex, PRIMARY)
    if others_own:
        for index in range(pods, 2 * pods):
            owners.place(uuid.UUID(int=index).hex, OTHER)
    return ForeignClaims(owners, lambda runtime, uid: None, lambda runtime: runtime or "primary")


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """CPU µs per call of `fn`, over about `seconds` of CPU."""
    fn()
    n, spent = 1, 0.0
    while True:
        started = time.thread_time()
        for _ in range(n):
            fn()
        spent = time.thread_time() - started
        if spent >= seconds:
            return 1e6 * spent / n
        n = max(n * 2, int(n * seconds / max(spent, 1e-6)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=60, help="pods in the measured answers")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.2, help="CPU per figure per round")
    args = parser.parse_args()
    n = args.pods
    # The front logs a claim once a minute per runtime and pod: in a loop, that is never
    # again after the first call; only the check that it was logged is left.
    logging.getLogger("criproxy.front").setLevel(logging.ERROR)

    made = [pod(i) for i in range(2 * n)]
    mine, theirs = made[:n], made[n:]

    def sandboxes(pods_: list) -> bytes:
        return pb.ListPodSandboxResponse(items=[p[0] for p in pods_]).SerializeToString()

    def containers(pods_: list, per_pod: int) -> bytes:
        return pb.ListContainersResponse(
            containers=[c for p in pods_ for c in p[1][:per_pod]]).SerializeToString()

    def changed(build: Callable[[list], bytes], pods_: list) -> bytes:
        """The same answer with the first pod's sandbox and containers a nanosecond newer."""
        first = (pb.PodSandbox(), [], None)
        first[0].CopyFrom(pods_[0][0])
        first[0].created_at += 1
        for c in pods_[0][1]:
            copy = pb.Container()
            copy.CopyFrom(c)
            copy.created_at += 1
            first[1].append(copy)
        return build([first] + pods_[1:])

    lists = {
        f"ListPodSandbox, {n} sandboxes": ("ListPodSandbox", sandboxes),
        f"ListContainers, {n} containers": ("ListContainers", lambda p: containers(p, 1)),
        f"ListContainers, {2 * n} containers": ("ListContainers", lambda p: containers(p, 2)),
    }
    off = claims_for(n, others_own=False)
    on = claims_for(n, others_own=True)
    stub = types.SimpleNamespace()
    stub._decode_answer = functools.partial(Dispatcher._decode_answer, stub)

    cases: dict[str, dict[str, Callable[[], object]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for title, (name, build) in lists.items():
        method = METHODS[RUNTIME_SERVICE + name]
        response = method.response
        raw, raw2 = build(mine), changed(build, mine)
        one_lie = build(mine + theirs[:1])
        half = build(mine[: n // 2] + theirs[: n - n // 2])
        flip = [raw, raw2]
        # A changed answer every call: the two answers in turn miss the cache.
        judge = functools.partial(
            lambda c, m, r, f: c.own_answer(PRIMARY, m, r, f.reverse() or f[0], True), on, name,
            response, flip)
        if on.own_answer(PRIMARY, name, response, raw, True) != raw or \
                on.own_answer(PRIMARY, name, response, one_lie, True) == one_lie:
            raise SystemExit(f"{title}: the filter did not behave as expected")
        sizes[title] = (len(raw), len(response.FromString(raw).ListFields()[0][1]))
        cases[title] = {
            "off": functools.partial(off.own_answer, PRIMARY, name, response, raw, True),
            "hit": functools.partial(on.own_answer, PRIMARY, name, response, raw, True),
            "judge": judge,
            "1 lie": functools.partial(on.own_answer, PRIMARY, name, response, one_lie, True),
            "half lies": functools.partial(on.own_answer, PRIMARY, name, response, half, True),
            "_present primary": functools.partial(Dispatcher._present, stub, PRIMARY, method, raw,
                                                  True),
            "_present named": functools.partial(Dispatcher._present, stub, OTHER, method, raw,
                                                True),
        }
    # kubelet's GetPodStatus between two relists: a List of the same method filtered by
    # the pod's uid label. The filter keeps the clean answer of the unfiltered List
    # (complete) only, so the relist after it is a bytes comparison again.
    relist_title = f"ListContainers, {2 * n} containers"
    relist = containers(mine, 2)
    filtered = containers(mine[:1], 2)
    relist_cases = {
        "filtered alone": functools.partial(on.own_answer, PRIMARY, "ListContainers",
                                            pb.ListContainersResponse, filtered),
        "filtered, then the relist": lambda: (
            on.own_answer(PRIMARY, "ListContainers", pb.ListContainersResponse, filtered),
            on.own_answer(PRIMARY, "ListContainers", pb.ListContainersResponse, relist, True)),
        "the relist twice": lambda: (
            on.own_answer(PRIMARY, "ListContainers", pb.ListContainersResponse, relist, True),
            on.own_answer(PRIMARY, "ListContainers", pb.ListContainersResponse, relist, True)),
    }
    method = METHODS[RUNTIME_SERVICE + "ContainerStatus"]
    status = pb.ContainerStatusResponse(status=mine[0][2]).SerializeToString()
    lie = pb.ContainerStatusResponse(status=theirs[0][2]).SerializeToString()
    if on.own_answer(PRIMARY, "ContainerStatus", method.response, lie) is not None:
        raise SystemExit("ContainerStatus: the lie was not caught")
    single = "ContainerStatus, one container"
    sizes[single] = (len(status), 1)
    cases[single] = {
        "off": functools.partial(off.own_answer, PRIMARY, "ContainerStatus", method.response,
                                 status),
        "judge": functools.partial(on.own_answer, PRIMARY, "ContainerStatus", method.response,
                                   status),
        "1 lie": functools.partial(on.own_answer, PRIMARY, "ContainerStatus", method.response,
                                   lie),
        "_present named": functools.partial(Dispatcher._present, stub, OTHER, method, status),
    }

    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for title, fns in cases.items():
            for case, fn in fns.items():
                samples.setdefault((title, case), []).append(per_call_us(fn, args.seconds))
        for case, fn in relist_cases.items():
            samples.setdefault(("relist", case), []).append(per_call_us(fn, args.seconds))

    columns = ["off", "hit", "judge", "1 lie", "half lies", "_present primary", "_present named"]
    print(f"CPU µs per call (median of {args.repeats} rounds, min-max); the other runtime owns "
          f"{n} pods")
    print(f"{'answer':<32} {'bytes':>6}  " + "  ".join(f"{c:>17}" for c in columns))
    for title, fns in cases.items():
        cells = []
        for case in columns:
            values = samples.get((title, case))
            if values is None:
                cells.append(f"{'':>17}")
                continue
            med = statistics.median(values)
            text = f"{med:.1f} ({min(values):.0f}-{max(values):.0f})" if med >= 10 else \
                f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"
            cells.append(f"{text:>17}")
        print(f"{title:<32} {sizes[title][0]:>6}  " + "  ".join(cells))
    print("per item, judge: " + ", ".join(
        f"{title.split(',')[0]} {statistics.median(samples[(title, 'judge')]) / sizes[title][1]:.2f} µs"
        for title in lists))
    print("judge / _present primary (the decode fan-out does anyway): " + ", ".join(
        f"{title}: {statistics.median(samples[(title, 'judge')]) / statistics.median(samples[(title, '_present primary')]):.1f}x"
        for title in lists))

    pair = {case: statistics.median(samples[("relist", case)]) for case in relist_cases}
    print(f"{relist_title}, the relist after a filtered ListContainers (one pod): "
          f"{pair['filtered, then the relist'] - pair['filtered alone']:.1f} µs; "
          f"after the same relist: {pair['the relist twice'] / 2:.1f} µs")


if __name__ == "__main__":
    main()
