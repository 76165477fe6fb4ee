"""Unit tests of record/sameitems.py and PodRecord.as_before: an unchanged List whose
items come in another order (containerd lists from Go maps) is nothing new."""
from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as cri

from criproxy.record import podrecord, recordfile
from criproxy.record.sameitems import same_items
from tests.unit.podrecords import ALL_PODS, make_record, pods_answer, sandbox


def test_the_same_items_in_another_order_are_the_same_answer() -> None:
    a, b, c = sandbox("a", "u1"), sandbox("b", "u2"), sandbox("c", "u3")
    assert same_items(pods_answer(a, b), pods_answer(b, a))
    assert not same_items(pods_answer(a, b), pods_answer(a, c))
    assert not same_items(pods_answer(a, b), pods_answer(a, b, c))
    changed = cri.PodSandbox()
    changed.CopyFrom(b)
    changed.state = cri.SANDBOX_NOTREADY   # same length, another state
    assert not same_items(pods_answer(a, b), pods_answer(changed, a))


def test_bytes_that_do_not_decode_are_never_the_same_as_others() -> None:
    answer = pods_answer(sandbox("a", "u1"))
    assert not same_items(answer, b"\xff" * len(answer))
    assert same_items(b"\xff", b"\xff")


def test_a_reordered_relist_keeps_the_records_bytes_and_writes_no_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(podrecord, "_WRITE_EVERY", 0.0)  # a new answer is written at once
    record = make_record(tmp_path)
    a, b = sandbox("a", "u1"), sandbox("b", "u2")
    first = pods_answer(a, b)
    record.answered("alt", "ListPodSandbox", ALL_PODS, first, record.sent("alt"))
    path = recordfile.record_path(str(tmp_path), "alt")
    written = path.stat().st_mtime_ns
    again = record.as_before("alt", "ListPodSandbox", pods_answer(b, a))
    assert again is first
    record.answered("alt", "ListPodSandbox", ALL_PODS, again, record.sent("alt"))
    assert path.stat().st_mtime_ns == written
    record.answered("alt", "ListPodSandbox", ALL_PODS, pods_answer(b, a), record.sent("alt"))
    assert path.stat().st_mtime_ns != written   # what as_before spares: a write per relist
    new = pods_answer(a)
    assert record.as_before("alt", "ListPodSandbox", new) is new
