"""Unit tests of the pod record: last answers, kubelet's changes, filters, files."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as cri

from criproxy.front import imagepods
from criproxy.record import listfilter, podrecord, recordfile
from criproxy.record.podrecord import PodRecord
from tests.unit.podrecords import (ALL_PODS, UID, container, containers_answer, feed,
                                   listed_containers, listed_pods, make_record, pods_answer,
                                   sandbox)


@pytest.fixture
def record(tmp_path: Path) -> PodRecord:
    return make_record(tmp_path)


def test_no_answer_yet_means_no_last_answer(record: PodRecord) -> None:
    assert listed_pods(record) is None
    assert listed_containers(record) is None


def test_a_runtime_that_never_answered_is_known_from_kubelets_changes(record: PodRecord) -> None:
    """Found by the runtime-in-pod e2e: kubelet ran a pod on a runtime that went
    down before it ever answered a List; left out, that pod looked gone."""
    churn(record, 0, 3)
    assert listed_pods(record) == ["s2"]
    assert [c for c, _state in listed_containers(record) or []] == ["c2"]
    assert record.snapshot("alt")["serving_last_answer"]


def test_a_fresh_unfiltered_answer_is_served_with_the_request_filter(record: PodRecord) -> None:
    feed(record, [sandbox("s1", "u1"), sandbox("s2", "u2", cri.SANDBOX_NOTREADY)],
         [container("c1", "s1", "u1"), container("c2", "s2", "u2", cri.CONTAINER_EXITED)])

    assert listed_pods(record) == ["s1", "s2"]
    by_uid = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector={UID: "u2"}))
    assert listed_pods(record, request=by_uid) == ["s2"]
    ready = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(
        state=cri.PodSandboxStateValue(state=cri.SANDBOX_READY)))
    assert listed_pods(record, request=ready) == ["s1"]
    in_s2 = cri.ListContainersRequest(filter=cri.ContainerFilter(pod_sandbox_id="s2"))
    assert listed_containers(record, in_s2) == [("c2", cri.CONTAINER_EXITED)]


def test_a_filtered_answer_does_not_replace_the_last_complete_one(record: PodRecord) -> None:
    feed(record, [sandbox("s1", "u1"), sandbox("s2", "u2")], [])
    by_uid = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector={UID: "u2"}))
    record.answered("alt", "ListPodSandbox", by_uid, pods_answer(sandbox("s2", "u2")),
                    record.sent("alt"))

    assert listed_pods(record) == ["s1", "s2"]


def test_only_a_fresh_answer_makes_pods_disappear(record: PodRecord) -> None:
    feed(record, [sandbox("s1", "u1"), sandbox("s2", "u2")], [])
    feed(record, [sandbox("s2", "u2")], [])

    assert listed_pods(record) == ["s2"]


def test_kubelets_changes_apply_on_top_of_the_last_answer(record: PodRecord) -> None:
    feed(record, [sandbox("s1", "u1"), sandbox("s2", "u2")],
         [container("c1", "s1", "u1"), container("c2", "s2", "u2")])
    config = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="new", uid="u3"),
                                  labels={UID: "u3"}, annotations={"a": "b"})
    record.observe("alt", "RunPodSandbox", cri.RunPodSandboxRequest(config=config),
                   cri.RunPodSandboxResponse(pod_sandbox_id="s3").SerializeToString())
    record.observe("alt", "CreateContainer", cri.CreateContainerRequest(
        pod_sandbox_id="s3", config=cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(image="sha256:" + "a" * 64),
            labels={UID: "u3"})),
        cri.CreateContainerResponse(container_id="c3").SerializeToString())
    record.observe("alt", "StartContainer", cri.StartContainerRequest(container_id="c3"), b"")
    record.observe("alt", "StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id="s1"), b"")
    record.observe("alt", "RemoveContainer", cri.RemoveContainerRequest(container_id="c2"), b"")
    record.observe("alt", "RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id="s2"), b"")

    by_uid = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector={UID: "u3"}))
    assert listed_pods(record, request=by_uid) == ["s3"]
    assert listed_pods(record) == ["s1", "s3"]
    raw = record.last_answer("alt", "ListPodSandbox", ALL_PODS)
    states = {s.id: s.state for s in cri.ListPodSandboxResponse.FromString(raw).items}
    assert states == {"s1": cri.SANDBOX_NOTREADY, "s3": cri.SANDBOX_READY}
    assert listed_containers(record) == [("c1", cri.CONTAINER_EXITED),
                                         ("c3", cri.CONTAINER_RUNNING)]


def test_a_change_made_while_a_list_was_on_its_way_is_replayed_onto_its_answer(
        record: PodRecord) -> None:
    feed(record, [sandbox("s1", "u1")], [])
    sent = record.sent("alt")
    record.observe("alt", "RunPodSandbox", cri.RunPodSandboxRequest(config=cri.PodSandboxConfig()),
                   cri.RunPodSandboxResponse(pod_sandbox_id="s2").SerializeToString())
    record.observe("alt", "RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id="s1"), b"")
    # The runtime answered the List sent before both changes: it still shows s1, not s2.
    record.answered("alt", "ListPodSandbox", ALL_PODS, pods_answer(sandbox("s1", "u1")), sent)

    assert listed_pods(record) == ["s2"]


def test_an_answer_older_than_the_kept_one_is_ignored(record: PodRecord) -> None:
    early = record.sent("alt")
    record.observe("alt", "RunPodSandbox", cri.RunPodSandboxRequest(config=cri.PodSandboxConfig()),
                   cri.RunPodSandboxResponse(pod_sandbox_id="s2").SerializeToString())
    record.answered("alt", "ListPodSandbox", ALL_PODS,
                    pods_answer(sandbox("s1", "u1"), sandbox("s2", "u2")), record.sent("alt"))
    record.answered("alt", "ListPodSandbox", ALL_PODS, pods_answer(), early)

    assert listed_pods(record) == ["s1", "s2"]


def test_a_last_answer_older_than_stale_for_is_not_used(tmp_path: Path) -> None:
    record = make_record(tmp_path, stale_for=0.05)
    record.answered("alt", "ListPodSandbox", ALL_PODS, pods_answer(sandbox("s1", "u1")), 0)
    assert listed_pods(record) == ["s1"]
    time.sleep(0.1)
    assert listed_pods(record) is None
    assert record.snapshot("alt")["lists_left_out"] is True


def test_last_answers_survive_a_restart_in_a_private_file(tmp_path: Path) -> None:
    record = make_record(tmp_path)
    feed(record, [sandbox("s1", "u1")], [container("c1", "s1", "u1")])
    record.observe("alt", "StopContainer", cri.StopContainerRequest(container_id="c1"), b"")
    path = recordfile.record_path(str(tmp_path), "alt")
    assert os.stat(path).st_mode & 0o777 == 0o600

    restarted = make_record(tmp_path)
    assert listed_pods(restarted) == ["s1"]
    assert listed_containers(restarted) == [("c1", cri.CONTAINER_EXITED)]
    assert listed_pods(restarted, runtime="") is None


def test_a_record_file_of_another_socket_or_too_old_is_not_used(tmp_path: Path) -> None:
    path = recordfile.record_path(str(tmp_path), "alt")
    recordfile.save(path, "/elsewhere.sock", {"ListPodSandbox": (pods_answer(), time.time())})
    assert listed_pods(make_record(tmp_path)) is None
    recordfile.save(path, "/a.sock", {"ListPodSandbox": (pods_answer(), time.time() - 600)})
    assert listed_pods(make_record(tmp_path)) is None
    # Dated in the future (found by fuzz/): it would stand in for -staleFor past that.
    recordfile.save(path, "/a.sock", {"ListPodSandbox": (pods_answer(), time.time() + 3600)})
    assert listed_pods(make_record(tmp_path)) is None
    path.write_bytes(b"\x00garbage")
    assert listed_pods(make_record(tmp_path)) is None


def test_pod_runtime_finds_the_newest_handler_placed_sandbox(record: PodRecord) -> None:
    old = sandbox("s1", "u1", **{"kubernetes.io/config.seen": "t1"})
    old.created_at = 1
    record.answered("", "ListPodSandbox", ALL_PODS, pods_answer(old), 0)
    feed(record, [sandbox("s2", "u1", **{"kubernetes.io/config.seen": "t1"}),
                  sandbox("s3", "u3", **{"kubernetes.io/target-runtime": "alt"})], [])

    assert record.pod_runtime(pull_for_uid("u1")) == "alt"
    assert record.pod_runtime(pull_for_uid("u3")) is None, \
        "annotation-routed pods keep the image prefix rule"
    assert record.pod_runtime(pull_for_uid("nobody")) is None


def pull_for_uid(uid: str) -> imagepods.Matcher:
    """What tells the pod of a PullImage carrying that pod's sandbox config."""
    matcher = imagepods.pod_matcher(cri.PullImageRequest(sandbox_config=cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(uid=uid))), cri.ImageSpec(image="app:1"))
    assert matcher is not None
    return matcher


@pytest.mark.parametrize("wanted, ids, found", [
    ("abc", ["abc", "abcd"], "abc"),
    ("ab", ["abc", "xyz"], "abc"),
    ("ab", ["abc", "abd"], None),
    ("q", ["abc"], None),
])
def test_an_id_filter_resolves_a_unique_prefix_as_containerd_does(
        wanted: str, ids: list[str], found: str | None) -> None:
    assert listfilter.resolve_id(wanted, ids) == found


def test_a_new_answer_is_written_at_the_next_relist_even_if_that_one_is_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(podrecord.time, "monotonic", lambda: clock[0])
    record = make_record(tmp_path)
    record.answered("alt", "ListPodSandbox", ALL_PODS, pods_answer(sandbox("s1", "u1")), 0)
    both = pods_answer(sandbox("s1", "u1"), sandbox("s2", "u2"))
    clock[0] += 0.3  # a new answer right after a write: not written yet
    record.answered("alt", "ListPodSandbox", ALL_PODS, both, 0)
    assert listed_pods(make_record(tmp_path)) == ["s1"]

    clock[0] += 1.0  # the next relist answers the same bytes: now it is written
    record.answered("alt", "ListPodSandbox", ALL_PODS, both, 0)

    assert listed_pods(make_record(tmp_path)) == ["s1", "s2"]


# --- the change journal stays bounded while a runtime's Lists do not answer -------------------


def churn(record: PodRecord, first: int, count: int) -> None:
    """kubelet's pod churn through criproxy: pod i runs with a started container, and the
    pod before it goes (stopped, container removed, removed)."""
    for i in range(first, first + count):
        config = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name=f"p{i}", uid=f"u{i}"),
                                      labels={UID: f"u{i}"})
        record.observe("alt", "RunPodSandbox", cri.RunPodSandboxRequest(config=config),
                       cri.RunPodSandboxResponse(pod_sandbox_id=f"s{i}").SerializeToString())
        record.observe("alt", "CreateContainer", cri.CreateContainerRequest(
            pod_sandbox_id=f"s{i}", config=cri.ContainerConfig(
                metadata=cri.ContainerMetadata(name="c"), labels={UID: f"u{i}"})),
            cri.CreateContainerResponse(container_id=f"c{i}").SerializeToString())
        record.observe("alt", "StartContainer", cri.StartContainerRequest(container_id=f"c{i}"),
                       b"")
        if i > first or first > 0:
            gone = f"{i - 1}"
            record.observe("alt", "StopPodSandbox",
                           cri.StopPodSandboxRequest(pod_sandbox_id=f"s{gone}"), b"")
            record.observe("alt", "RemoveContainer",
                           cri.RemoveContainerRequest(container_id=f"c{gone}"), b"")
            record.observe("alt", "RemovePodSandbox",
                           cri.RemovePodSandboxRequest(pod_sandbox_id=f"s{gone}"), b"")


def journal_length(record: PodRecord) -> int:
    return len(record.runtimes["alt"].changes)


def test_the_journal_is_bounded_and_the_last_answer_still_right(record: PodRecord,
                                                               monkeypatch) -> None:
    monkeypatch.setattr(podrecord, "MAX_CHANGES", 20)
    feed(record, [sandbox("kept", "uk")], [container("ck", "kept", "uk")])
    lengths = []
    for round_ in range(30):  # 30 pods' lives, 6 changes each: 9 times the bound
        churn(record, round_, 1)
        lengths.append(journal_length(record))
    assert max(lengths) <= 20, lengths
    assert sorted(listed_pods(record)) == ["kept", "s29"]
    assert sorted(listed_containers(record)) == [("c29", cri.CONTAINER_RUNNING),
                                                 ("ck", cri.CONTAINER_RUNNING)]


def test_a_list_sent_before_the_journal_was_folded_is_dropped_the_next_taken(
        record: PodRecord, monkeypatch) -> None:
    monkeypatch.setattr(podrecord, "MAX_CHANGES", 20)
    feed(record, [sandbox("kept", "uk")], [])
    early = record.sent("alt")
    churn(record, 0, 5)  # 27 changes: folded once
    record.answered("alt", "ListPodSandbox", ALL_PODS, pods_answer(sandbox("kept", "uk")), early)
    assert sorted(listed_pods(record)) == ["kept", "s4"]  # the early answer would lose s4
    record.answered("alt", "ListPodSandbox", ALL_PODS, pods_answer(sandbox("s4", "u4")),
                    record.sent("alt"))
    assert listed_pods(record) == ["s4"]


def test_without_any_answer_the_journal_keeps_its_newest_half(record: PodRecord,
                                                              monkeypatch) -> None:
    monkeypatch.setattr(podrecord, "MAX_CHANGES", 20)
    churn(record, 0, 30)
    assert journal_length(record) <= 20
    assert listed_pods(record) == ["s29"]  # from kubelet's changes: no answer of its own
    assert record.pod_runtime(lambda pod: pod.metadata.uid == "u29") == "alt"  # image routing
    feed(record, [sandbox("s29", "u29")], [container("c29", "s29", "u29")])
    assert listed_pods(record) == ["s29"]


def test_a_record_file_whose_answer_does_not_decode_is_not_used(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file whose msgpack is sound but whose answer bytes are not (a damaged
    disk): kept, it failed every view of the runtime, so every List, image call and
    write of the record (found by fuzz/target_files.py)."""
    path = recordfile.record_path(str(tmp_path), "alt")
    recordfile.save(path, "/a.sock", {"ListPodSandbox": (b"\x0a\x05\x0a", time.time()),
                                      "ListContainers": (containers_answer(), time.time())})
    record = make_record(tmp_path)
    assert listed_pods(record) is None and listed_containers(record) == []
    assert record.pod_runtime(lambda sandbox: True) is None
    assert "does not decode" in caplog.text


@pytest.mark.parametrize("body, said", [
    ({"v": 2, "socket": "/a.sock", "lists": {}}, "of another version"),
    ({"v": 1, "socket": "/elsewhere.sock", "lists": {}}, "not /a.sock's"),
    ([1, 2], "unreadable"),
])
def test_a_record_file_discarded_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         body: object, said: str) -> None:
    """Another version or socket was dropped without a word (fuzz/target_files.py)."""
    import msgpack
    path = recordfile.record_path(str(tmp_path), "alt")
    path.write_bytes(msgpack.packb(body))
    assert recordfile.load(path, "/a.sock") == {}
    assert said in caplog.text
