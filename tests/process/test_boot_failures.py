"""Boot failures: a bad flag or a listen socket that cannot be made stops
criproxy with one line and exit code 2, instead of restarting forever."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.process.fault_util import processes_mentioning, report, session_members
from tests.support.fakeruntime import start_fake
from tests.support.harness import REPO, short_dir, start_proxy

# --- 8. boot failures ----------------------------------------------------------------------


def run_criproxy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run criproxy to its end; if it does not end, kill all it started (its own group)."""
    command = [sys.executable, "-m", "criproxy", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # supervisord gives each program a group of its own, but not a session.
        for pid in [proc.pid, *session_members(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate()
        raise AssertionError(f"criproxy {' '.join(args)} still ran after {timeout}s:\n{out}{err}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.parametrize("flags, named", [
    (("-listBudget", "-1"), "-listBudget"),
    (("-v", "eleven"), "-v"),
    (("-streamUrl", "ftp:/x"), "-streamUrl"),
    (("-socketGroup", "no-such-group-criproxy"), "-socketGroup"),
])
def test_bad_flag_value_is_a_one_line_boot_failure(tmp_path: Path, flags, named) -> None:
    base = short_dir("cpb-")
    try:
        started = time.monotonic()
        result = run_criproxy("-connect", str(base / "primary.sock"), "-listen",
                              str(base / "l.sock"), "-rundir", str(base / "run"), *flags)
        took = time.monotonic() - started
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and named in lines[0] and lines[0].startswith("criproxy:"), lines
        assert took < 10
        assert not (base / "run").exists() and not (base / "l.sock").exists()
        assert processes_mentioning(str(base)) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_missing_or_unknown_flags_exit_2_naming_them() -> None:
    base = short_dir("cpb-")
    try:
        result = run_criproxy("-listen", str(base / "l.sock"), "-rundir", str(base / "run"))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "criproxy: -connect is required: runtimes: PRIMARY_SOCKET[,NAME:SOCKET...]; "
            "the first is the primary"]
        result = run_criproxy("-connect", str(base / "p.sock"), "-rundir", str(base / "run"),
                              "-bogus", "1")
        assert result.returncode == 2
        assert "-bogus" in result.stderr.strip().splitlines()[-1]
        result = run_criproxy("-connect", "a.sock,alt:b.sock,alt:c.sock", "-rundir",
                              str(base / "run"))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "criproxy: -connect: runtime name 'alt' is given more than once"]
        assert not (base / "run").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("listen, refused_by", [("not-a-socket", "criproxy: -listen "),
                                                ("no-such-dir/criproxy.sock",
                                                 "criproxy: criproxy front: -listen ")])
def test_a_listen_socket_boot_failure_stops_everything_with_exit_2(
        listen: str, refused_by: str) -> None:
    """The listen socket cannot be made: a file that is not a socket is in the way
    (criproxy sees it before starting anything), or its directory is missing (the
    front finds out): criproxy stops with exit code 2 and says why, instead of
    restarting the front forever."""
    base = short_dir("cpb-")
    primary = start_fake(base, "primary")
    path = base / listen
    if listen == "not-a-socket":
        path.write_text("precious\n")
    proxy = start_proxy(str(primary.socket), "-listen", str(path), workdir=base)
    try:
        started = time.monotonic()
        try:
            returncode = proxy.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"criproxy still runs 30 s after the front's boot failure:\n"
                                 f"{proxy.log()[-3000:]}") from None
        took = time.monotonic() - started
        report(boot_failure_stop=took)
        assert returncode == 2, proxy.log()[-3000:]
        last = proxy.log().strip().splitlines()[-1]
        assert last.startswith(refused_by) and str(path) in last, last
        assert took < 15
        if listen == "not-a-socket":
            assert path.read_text() == "precious\n"
        assert processes_mentioning(str(proxy.rundir)) == []
        assert proxy.log().count("spawned: 'front'") <= 1, "restarting cannot help a boot failure"
    finally:
        proxy.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_bad_connect_exits_2_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "criproxy", "-connect", "/a,x/y:/b"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "'x/y'" in proc.stderr
