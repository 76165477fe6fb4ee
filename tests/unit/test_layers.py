"""The test layers stay what their names say (tests/README.md): every test file
lives in exactly one layer, and the unit layer's guard refuses what a unit test
may not do. tests/process/test_layer_guard.py runs a unit test that breaks the
rule in a pytest of its own and sees it fail."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Callable

import grpc
import pytest
import zmq

from tests.support.harness import REPO
from tests.unit.layerguard import GUARD, LayerViolation

LAYERS = ("unit", "process", "e2e", "node")


def test_every_test_file_is_in_exactly_one_layer() -> None:
    tests = REPO / "tests"
    files = sorted(p.relative_to(tests) for p in tests.rglob("test_*.py"))
    outside = [str(f) for f in files if len(f.parts) != 2 or f.parts[0] not in LAYERS]
    assert files and not outside, f"test files outside tests/<layer>/: {outside}"


def refused(action: Callable[[], object]) -> str:
    """What the guard says of `action`, taken back so this test itself passes."""
    before = len(GUARD.violations)
    with pytest.raises(LayerViolation):
        action()
    said = GUARD.violations[before:]
    del GUARD.violations[before:]
    assert len(said) == 1, said
    return said[0]


def test_starting_a_process_is_refused() -> None:
    assert "started a process" in refused(lambda: subprocess.run(["true"]))
    assert "os.fork" in refused(os.fork)
    assert "os.posix_spawn" in refused(lambda: os.posix_spawn("/bin/true", ["true"], {}))
    assert "os.system" in refused(lambda: os.system("true"))


def test_a_socket_to_somewhere_is_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as unix:
        assert "socket.bind" in refused(lambda: unix.bind(str(tmp_path / "s")))
        assert "socket.connect" in refused(lambda: unix.connect(str(tmp_path / "s")))
    with socket.socket(socket.AF_INET) as tcp:
        assert "socket.connect" in refused(lambda: tcp.connect(("127.0.0.1", 9)))


def test_zmq_and_grpc_sockets_are_refused(tmp_path: Path) -> None:
    with zmq.Context() as context, context.socket(zmq.PAIR) as pair:
        assert "zmq" in refused(lambda: pair.bind(f"ipc://{tmp_path}/z"))
        assert "zmq" in refused(lambda: pair.connect(f"ipc://{tmp_path}/z"))
    assert "grpc" in refused(lambda: grpc.insecure_channel("unix:///nonexistent"))
    assert "grpc" in refused(lambda: grpc.server(None))


def test_a_socket_pair_reaching_nothing_is_allowed() -> None:
    """asyncio's event loop wakes itself through one."""
    left, right = socket.socketpair()
    left.close()
    right.close()
    assert GUARD.violations == []
