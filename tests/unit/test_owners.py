"""Unit tests of the pod owners table (criproxy/record/owners.py): who speaks for a pod."""
from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as cri

from criproxy.record import owners as owners_module
from criproxy.record.owners import PodOwners, owners_path


def sandboxes(*uids: str) -> bytes:
    return cri.ListPodSandboxResponse(items=[
        cri.PodSandbox(id=f"sb-{uid}", metadata=cri.PodSandboxMetadata(name=uid, uid=uid))
        for uid in uids]).SerializeToString()


def test_a_placed_pod_belongs_to_the_runtime_kubelet_put_it_on(tmp_path: Path) -> None:
    table = PodOwners(str(tmp_path), ["", "alt"])
    table.place("u1", "alt")
    owner = table.owner("u1")
    assert owner is not None and (owner.runtime, owner.placed, owner.previous) == ("alt", True, ())
    assert table.owned_by_others("") == {"u1"} and not table.owned_by_others("alt")


def test_a_listed_pod_nobody_owns_goes_to_the_first_runtime_that_lists_it(tmp_path: Path) -> None:
    table = PodOwners(str(tmp_path), ["", "alt"])
    table.listed("", sandboxes("u1"))
    table.listed("alt", sandboxes("u1", "u2"))
    assert table.owner("u1").runtime == ""  # type: ignore[union-attr]
    assert table.owner("u2").runtime == "alt"  # type: ignore[union-attr]
    assert not table.owner("u2").placed  # type: ignore[union-attr]


def test_a_pod_moved_to_another_runtime_remembers_its_previous_owner(tmp_path: Path) -> None:
    table = PodOwners(str(tmp_path), ["", "alt", "vm"])
    table.place("u1", "")
    table.place("u1", "alt")
    table.place("u1", "vm")
    table.place("u1", "")
    owner = table.owner("u1")
    assert owner is not None and owner.runtime == "" and owner.previous == ("alt", "vm")


def test_the_table_survives_a_restart_and_a_damaged_one_is_none(tmp_path: Path) -> None:
    table = PodOwners(str(tmp_path), ["", "alt"])
    table.place("u1", "alt")
    again = PodOwners(str(tmp_path), ["", "alt"])
    assert again.owner("u1").runtime == "alt"  # type: ignore[union-attr]
    owners_path(str(tmp_path)).write_bytes(b"\x92\x01")
    assert PodOwners(str(tmp_path), ["", "alt"]).owner("u1") is None


def test_an_owner_that_is_not_served_owns_nothing_and_one_that_left_loses_its_pods(
        tmp_path: Path) -> None:
    table = PodOwners(str(tmp_path), [""])
    table.place("u1", "alt")   # e.g. read back before the registered runtime joined
    assert table.owner("u1") is None
    table.runtime_joined("alt")
    assert table.owner("u1").runtime == "alt"  # type: ignore[union-attr]
    table.runtime_left("alt")
    table.runtime_joined("alt")  # a new runtime under the same name
    assert table.owner("u1") is None


def test_an_owner_that_no_longer_lists_its_pod_loses_it_after_a_while(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(owners_module.time, "time", lambda: now[0])
    table = PodOwners(str(tmp_path), ["", "alt"])
    table.place("u1", "alt")
    table.listed("alt", sandboxes())          # e.g. a List sent before the pod was made
    table.listed("alt", sandboxes("u1"))
    now[0] += owners_module.FORGET_AFTER + 1
    table.listed("alt", sandboxes("u2"))      # absence starts now, not at the first one
    assert table.owner("u1").runtime == "alt"  # type: ignore[union-attr]
    now[0] += owners_module.FORGET_AFTER + 1
    table.listed("alt", sandboxes("u3"))
    assert table.owner("u1") is None


def test_every_change_bumps_the_generation_and_an_unchanged_list_does_not(tmp_path: Path) -> None:
    table = PodOwners(str(tmp_path), ["", "alt"])
    table.listed("alt", sandboxes("u1"))
    generation = table.generation
    table.listed("alt", sandboxes("u1"))
    table.place("u1", "alt")  # listed before: now placed, same owner
    assert table.generation == generation + 1
    table.place("u1", "alt")
    assert table.generation == generation + 1
