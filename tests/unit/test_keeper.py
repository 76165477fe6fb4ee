"""The keeper's decisions (a supervisord plugin), at unit level."""
from __future__ import annotations

import time
import types
from pathlib import Path

import pytest
from supervisor.states import SupervisorStates

from criproxy.process import keeper
from criproxy.settings import BOOT_FAILURE_FILE

# --- the keeper's decisions, unit level -------------------------------------------------


class FakeSupervisord:
    """What the keeper uses of supervisord: its logger, its mood, its RPC interface."""

    def __init__(self) -> None:
        self.logged: list[str] = []
        self.started: list[str] = []
        self.options = types.SimpleNamespace(
            logger=types.SimpleNamespace(warn=self.logged.append), mood=SupervisorStates.RUNNING)


def process_event(group: str, name: str):
    process = types.SimpleNamespace(group=types.SimpleNamespace(config=types.SimpleNamespace(name=group)),
                                    config=types.SimpleNamespace(name=name))
    return types.SimpleNamespace(process=process, expected=False)


@pytest.fixture
def supervisord(monkeypatch) -> FakeSupervisord:
    fake = FakeSupervisord()

    class Rpc:
        def __init__(self, supervisord: FakeSupervisord) -> None:
            self.supervisord = supervisord

        def startProcess(self, name: str, wait: bool) -> bool:
            assert wait is False, "the keeper must not block supervisord's loop"
            self.supervisord.started.append(name)
            return True

    monkeypatch.setattr(keeper, "SupervisorNamespaceRPCInterface", Rpc)
    return fake


def test_keeper_starts_fatal_programs_again_after_the_delay(tmp_path: Path, supervisord) -> None:
    kept = keeper.Keeper(supervisord, tmp_path, 0.3)
    kept._on_fatal(process_event("worker", "worker-1"))
    kept._on_tick(None)
    assert supervisord.started == []
    time.sleep(0.35)
    kept._on_tick(None)
    kept._on_tick(None)
    assert supervisord.started == ["worker:worker-1"]
    # FATAL again: started again, for as long as it takes.
    kept._on_fatal(process_event("worker", "worker-1"))
    time.sleep(0.35)
    kept._on_tick(None)
    assert supervisord.started == ["worker:worker-1"] * 2
    assert supervisord.options.mood == SupervisorStates.RUNNING


def test_keeper_stops_everything_only_on_a_recorded_boot_failure(tmp_path: Path,
                                                                supervisord) -> None:
    kept = keeper.Keeper(supervisord, tmp_path, 0.3)
    kept._on_exit(process_event("front", "front"))  # a crash: supervisord restarts it
    assert supervisord.options.mood == SupervisorStates.RUNNING
    (tmp_path / BOOT_FAILURE_FILE).write_text("criproxy front: -listen /x: bad\n")
    kept._on_exit(process_event("front", "front"))
    assert supervisord.options.mood == SupervisorStates.SHUTDOWN
    assert any("-listen /x" in line for line in supervisord.logged), supervisord.logged

