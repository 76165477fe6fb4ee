"""scripts/debpackages.py: apt_install waits for another apt/dpkg run's lock within a bound,
saying who holds it (make demo on a fresh VM, where unattended-upgrades holds it), instead
of failing at once."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.harness import runtimes_script

runtimes = runtimes_script()  # puts scripts/ on sys.path
import debpackages  # noqa: E402

HOLD = """import fcntl, sys, time
f = open(sys.argv[1], "w"); fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True); time.sleep(float(sys.argv[2]))
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process takes the lock as dpkg does (fcntl, a POSIX record lock)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_the_holder_is_found_and_waited_for(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    lock.touch()
    assert debpackages.lock_holders([str(lock)]) == {}
    holder = hold_lock(lock, 1.0)
    try:
        assert debpackages.lock_holders([str(lock), str(tmp_path / "absent")]) == \
            {str(lock): holder.pid}
        said: list[str] = []
        started = time.monotonic()
        waited = debpackages.wait_for_apt_locks(30, [str(lock)], poll=0.05, say=said.append)
        assert 0.3 < waited < 10 and time.monotonic() - started < 10
        assert len(said) == 1 and "waiting for the apt/dpkg lock" in said[0]
        assert f"held by PID {holder.pid}" in said[0], said
    finally:
        holder.kill()
        holder.wait()
    assert debpackages.lock_holders([str(lock)]) == {}


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    holder = hold_lock(lock, 30)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"still held by PID {holder.pid}"):
            debpackages.wait_for_apt_locks(0.5, [str(lock)], poll=0.05, say=lambda _: None)
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def test_apt_get_is_told_to_wait_the_rest(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setattr(debpackages, "DPKG_LOCKS", (str(tmp_path / "none"),))
    ran: list[list[str]] = []
    monkeypatch.setattr(debpackages.subprocess, "run", lambda argv, **kw: ran.append(argv))
    debpackages.apt_install(["busybox-static"], lock_timeout=120)
    assert [argv[argv.index("-o") + 1] for argv in ran] == ["DPkg::Lock::Timeout=120"] * 2
    assert ran[0][-1] == "update" and ran[1][-1] == "busybox-static"
    ran.clear()
    debpackages.apt_install(["x"], lock_timeout=None)  # no bound asked: apt-get's own way
    assert all("-o" not in argv for argv in ran)


def test_demo_waits_for_the_lock() -> None:
    demo = (Path(runtimes.__file__).parent / "demo.py").read_text()
    assert "ensure_packages(lock_timeout=APT_LOCK_WAIT)" in demo
