"""The unit layer's guard (tests/unit/layerguard.py) seen from outside: a pytest
of its own runs unit tests that break the rule, one of them hiding the refusal
in a try/except, and each fails with a message saying what it did."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.harness import REPO

CONFTEST = ("from tests.unit.conftest import (  # noqa: F401\n"
            "    no_process_no_socket, pytest_runtest_makereport)\n")
TESTS = '''
import socket, subprocess

def test_a_caught_refusal_still_fails(tmp_path):
    try:
        socket.socket(socket.AF_UNIX).bind(str(tmp_path / "s"))
    except Exception:
        pass

def test_starting_a_process_fails():
    subprocess.run(["true"])

def test_pure_code_passes():
    assert sorted([2, 1]) == [1, 2]
'''


def test_a_unit_test_that_opens_a_socket_or_starts_a_process_fails(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_breaking.py").write_text(TESTS)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    out = run.stdout
    assert run.returncode == 1, out
    assert "2 failed, 1 passed" in out, out
    assert "opened a socket (socket.bind" in out, out
    assert "started a process (subprocess.Popen" in out, out
