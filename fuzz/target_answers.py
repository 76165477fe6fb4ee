"""Target 2: runtimes' answers, well-formed or not, through presenting, merging
and the pod record.

One runtime (the input says which) answers the input's bytes, the others answer
from the model (fuzz/harness.py); the call is kubelet-like (an unfiltered List,
or a call by id of that runtime's object). Invariants:
- nothing but a CallError escapes; a runtime's bad answer is never blamed on the
  caller (no INVALID_ARGUMENT), and a merged List with a healthy runtime beside
  it answers (with the healthy ones' objects) instead of failing (issue 25);
  an undecodable answer is noted on the runtime's link (status, metrics); in
  the merged event stream an event that does not decode is dropped alone;
- the pod record is unharmed: its views, its file, its last answers still serve
  the next calls (a merged List with that runtime down answers);
- for well-formed answers (built from the response descriptor), stripping the
  prefixes undoes adding them exactly (rewrite.add_prefixes / strip_prefixes),
  and the slim decode (front/slim.py) gives what the full decode gives.

Input: setup, which runtime, method, mode, then the builder's bytes or the answer.
"""
from __future__ import annotations

import sys

import grpc
from cri_api.v1 import api_pb2 as v1
from google.protobuf.message import DecodeError, Message

from criproxy.front import imagepods
from criproxy.front.naming import Names
from criproxy.front.rewrite import add_prefixes, strip_prefixes
from criproxy.front.routing import METHODS, Method, Rule
from criproxy.front.slim import slim_class
from criproxy.front.workerlink import CallError
from criproxy.record.owners import PodOwners
from fuzz import builder, harness
from fuzz.mutator import message_mutator
from fuzz.provider import Provider

RAW, BUILT, BUILT_DAMAGED = 0, 1, 2
R, I = "/runtime.v1.RuntimeService/", "/runtime.v1.ImageService/"
PATHS = [R + m for m in (
    "ListPodSandbox", "ListContainers", "ListContainerStats", "ListPodSandboxStats",
    "ListPodSandboxMetrics", "ListMetricDescriptors", "PodSandboxStatus", "ContainerStatus",
    "RunPodSandbox", "CreateContainer", "Exec", "PortForward", "Status", "PodSandboxStats",
    "ContainerStats")] + [I + m for m in ("ListImages", "ImageFsInfo", "ImageStatus",
                                             "PullImage")] + [R + "GetContainerEvents"]
LIST_SANDBOXES = METHODS[R + "ListPodSandbox"]
LIST_CONTAINERS = METHODS[R + "ListContainers"]


def header(setup: int, runtime: int, path: str, mode: int) -> bytes:
    return bytes([setup, runtime, PATHS.index(path), mode])


def test_one_input(data: bytes) -> None:
    p = Provider(data)
    cfg = harness.config(p.byte())
    names = [r.name for r in cfg.runtimes]
    bad = names[p.byte() % len(names)]
    method = METHODS[PATHS[p.byte() % len(PATHS)]]
    mode = p.byte() % 3
    well_formed: Message | None = None
    if mode == RAW:
        answer = p.rest()
    else:
        well_formed = builder.build(p, method.response)
        answer = well_formed.SerializeToString()
        if mode == BUILT_DAMAGED:
            answer = builder.flip(p, builder.splice_not_utf8(p, method.response.DESCRIPTOR,
                                                             answer))
            well_formed = None
    if well_formed is not None and bad:
        check_rewrites(well_formed, bad, names)
    check_slim(method, answer, bad)

    dispatcher, links, _journal = harness.make_dispatcher(
        cfg, answerers={bad: lambda _method, _body: answer})
    if method.name == "RunPodSandbox" or method.name == "CreateContainer":
        # The record holds the model's objects first, so changes have something to act on.
        links[bad].answerer = links[bad].model.answer
        for listing in (LIST_SANDBOXES, LIST_CONTAINERS):
            harness.run(dispatcher.unary(listing, b"", 5.0))
        links[bad].answerer = lambda _method, _body: answer
    for name, link in links.items():
        link.stream_ends = name == bad  # the merged stream ends after the bad one's events
    request = kubelet_request(method, bad, links[bad].model)
    outcome = harness.run(_call(dispatcher, method, request))
    check_outcome(method, bad, answer, outcome, links, dispatcher.owners)
    check_record(dispatcher, links, bad)


def kubelet_request(method: Method, runtime: str, model: harness.Model) -> bytes:
    """What kubelet sends for `method` about one of `runtime`'s objects."""
    sid, cid = next(iter(model.sandboxes)), next(iter(model.containers))
    shown = (lambda i: f"{runtime}__{i}") if runtime else (lambda i: i)
    requests = {
        "PodSandboxStatus": v1.PodSandboxStatusRequest(pod_sandbox_id=shown(sid), verbose=True),
        "PodSandboxStats": v1.PodSandboxStatsRequest(pod_sandbox_id=shown(sid)),
        "PortForward": v1.PortForwardRequest(pod_sandbox_id=shown(sid), port=[80]),
        "ContainerStatus": v1.ContainerStatusRequest(container_id=shown(cid)),
        "ContainerStats": v1.ContainerStatsRequest(container_id=shown(cid)),
        "Exec": v1.ExecRequest(container_id=shown(cid), cmd=["sh"], stdout=True),
        "RunPodSandbox": v1.RunPodSandboxRequest(config=v1.PodSandboxConfig(
            metadata=v1.PodSandboxMetadata(name="web", namespace="default", uid="uid-web"),
            annotations={"kubernetes.io/target-runtime": runtime} if runtime else {})),
        "CreateContainer": v1.CreateContainerRequest(
            pod_sandbox_id=shown(sid), config=v1.ContainerConfig(
                metadata=v1.ContainerMetadata(name="app"),
                image=v1.ImageSpec(image=(runtime + "/" if runtime else "") + "busybox"))),
        "ImageStatus": v1.ImageStatusRequest(image=v1.ImageSpec(
            image=(runtime + "/" if runtime else "") + "busybox")),
        "PullImage": v1.PullImageRequest(image=v1.ImageSpec(
            image=(runtime + "/" if runtime else "") + "busybox")),
    }
    request = requests.get(method.name)
    return request.SerializeToString() if request is not None else b""


async def _call(dispatcher, method: Method, raw: bytes):  # type: ignore[no-untyped-def]
    try:
        if method.route.rule == Rule.STREAM_MERGE:
            items: list[bytes] = []
            try:
                async for item in dispatcher.stream_merge(method, raw):
                    items.append(item)
            except CallError as err:
                if err.code != grpc.StatusCode.UNIMPLEMENTED:  # how the model's streams end
                    return err
            return items
        return await dispatcher.unary(method, raw, 5.0)
    except CallError as err:
        return err


def _decodes(message_class: type[Message], raw: bytes) -> bool:
    try:
        message_class.FromString(raw)
        return True
    except DecodeError:
        return False


def check_outcome(method: Method, bad: str, answer: bytes, outcome: object,
                  links: dict[str, harness.FakeLink], owners: PodOwners) -> None:
    if isinstance(outcome, list):
        # The merged event stream: an event that does not decode is dropped, the
        # stream and the other runtimes' events kept.
        for item in outcome:
            v1.ContainerEventResponse.FromString(item)
        # Followers run in -connect order: every event up to the bad runtime's end.
        order = list(links)
        wanted = sum(len(links[name].model.events()) for name in order[:order.index(bad) + 1])
        assert len(outcome) >= wanted, \
            f"runtime {bad!r}'s event cost other events: {len(outcome)} of {wanted}"
        return
    if not isinstance(outcome, (bytes, CallError)):
        raise AssertionError(f"{method.name} gave {outcome!r:.200}")
    merged = method.route.rule == Rule.FAN_OUT and len(links) > 1
    if isinstance(outcome, CallError):
        assert outcome.code != grpc.StatusCode.INVALID_ARGUMENT, \
            f"{method.name}: runtime {bad!r}'s answer blamed on the caller: {outcome.message}"
        assert not merged, \
            f"merged {method.name} failed for runtime {bad!r}'s answer: {outcome}"
        if outcome.code == grpc.StatusCode.INTERNAL:
            assert links[bad].bad_answers, f"{method.name}: a bad answer left no note"
        return
    full_ok = _decodes(method.response, answer)
    if merged and not full_ok and bad in _asked(links, method):
        # Status and metrics show the runtime misbehaving (WorkerLink.note_bad_answer).
        assert links[bad].bad_answers, \
            f"merged {method.name}: runtime {bad!r}'s undecodable answer left no note"
    if merged:
        # The healthy runtimes' objects are all there, but for those of a pod that the
        # bad runtime listed first (in -connect order) and so owns (record/owners.py).
        response = method.response.FromString(outcome)
        if method.name == "ListPodSandbox":
            shown = {s.id for s in response.items}
            for name, link in links.items():
                if name != bad:
                    for sid, sandbox in link.model.sandboxes.items():
                        owner = owners.owner(sandbox.metadata.uid)
                        assert (f"{name}__{sid}" if name else sid) in shown or \
                            owner is not None and owner.runtime == bad, \
                            f"merged ListPodSandbox lost runtime {name!r}'s sandbox {sid}"
    elif full_ok and method.route.rule != Rule.FAN_OUT:
        method.response.FromString(outcome)


def _asked(links: dict[str, harness.FakeLink], method: Method) -> set[str]:
    return {runtime for runtime, name, _body in links[""].journal if name == method.name}


def check_record(dispatcher, links: dict[str, harness.FakeLink], bad: str) -> None:  # type: ignore[no-untyped-def]
    """The record still serves: views, file, last answers, image routing."""
    record = dispatcher.record
    for name in links:
        view = record.runtimes[name].view()
        record.runtimes[name].lists()
        imagepods.placed_by_handler(record, name, next(iter(view.sandboxes), ""))
        for listing in ("ListPodSandbox", "ListContainers"):
            record.last_answer(name, listing, v1.ListPodSandboxRequest()
                               if listing == "ListPodSandbox" else v1.ListContainersRequest())
    record.pod_runtime(lambda sandbox: True)
    links[bad].answerer = links[bad].model.answer
    if bad:
        links[bad].up = False
    for listing in (LIST_SANDBOXES, LIST_CONTAINERS):
        harness.run(dispatcher.unary(listing, b"", 5.0))


def check_rewrites(message: Message, runtime: str, names: list[str]) -> None:
    """strip_prefixes(add_prefixes(m)) == m for a well-formed answer (no handlers:
    strip renames mapped handlers, which add does not undo)."""
    shown = type(message)()
    shown.CopyFrom(message)
    add_prefixes(shown, runtime)
    stripped = type(message)()
    stripped.CopyFrom(shown)
    strip_prefixes(stripped, runtime, Names(names))
    assert stripped == message, f"strip(add(m)) != m for runtime {runtime!r}:\n{message}\n" \
        f"shown:\n{shown}\nstripped:\n{stripped}"


def check_slim(method: Method, answer: bytes, runtime: str) -> None:
    """The slim decode, prefixed and encoded, reads as the full decode prefixed."""
    slim = slim_class(method.response)
    if slim is method.response:
        return
    try:
        full = method.response.FromString(answer)
    except DecodeError:
        full = None
    try:
        lean = slim.FromString(answer)
    except DecodeError:
        assert full is None, f"{method.name}: the full decode reads what the slim one refuses"
        return
    if full is None:
        return  # the slim decode does not check what it does not read (slim.py)
    add_prefixes(full, runtime)
    add_prefixes(lean, runtime)
    again = method.response.FromString(lean.SerializeToString())
    assert again == full, f"{method.name}: slim and full decodes differ for runtime {runtime!r}"


def _message_of(head: bytes) -> type | None:
    """The response class of a raw input (for fuzz/mutator.py)."""
    return METHODS[PATHS[head[2] % len(PATHS)]].response if head[3] % 3 == RAW else None


custom_mutator = message_mutator(4, _message_of)


def main() -> None:
    from fuzz.run import fuzz_main
    fuzz_main(sys.modules[__name__])


if __name__ == "__main__":
    main()
