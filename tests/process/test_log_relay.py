"""Logs reach criproxy's stderr whatever it is, with priorities; no fd leaks on failed starts.

Under systemd, stdout and stderr are a socket to the journal; supervisord's own
`stdout_logfile=/dev/stdout` cannot open that (ENXIO), so no program ever
started, and every failed spawn leaked its pipes. The reproducer here needs no
systemd: criproxy's stdout and stderr on a socketpair. The relay's parts,
in-process: tests/unit/test_log_relay.py.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from tests.support.fakeruntime import start_fake
from tests.support.harness import REPO, Proxy, short_dir

STARTUP = 60.0


# --- criproxy with its output on a socket, a pipe, a file, /dev/null -------------------------


class Collector(threading.Thread):
    """Reads everything from one end of criproxy's output into a file the Proxy can show."""

    def __init__(self, read, path: Path) -> None:
        super().__init__(daemon=True)
        self.read, self.path = read, path

    def run(self) -> None:
        with open(self.path, "ab") as out:
            while chunk := self.read():
                out.write(chunk)
                out.flush()


def start_with_output(base: Path, kind: str, journal: bool = False,
                      *flags: str) -> tuple[Proxy, list]:
    """criproxy in front of fakes `primary` and `alt`, its stdout and stderr being `kind`."""
    log = base / "criproxy.log"
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    keep: list = []
    if kind == "socket":
        ours, theirs = socket.socketpair()
        keep += [ours]
        Collector(lambda: ours.recv(65536), log).start()
        if journal:  # as systemd names the stream it connected to the journal
            info = os.fstat(theirs.fileno())
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        out = theirs
    elif kind == "pipe":
        read_fd, write_fd = os.pipe()
        reader = os.fdopen(read_fd, "rb", buffering=0)
        keep += [reader]
        Collector(lambda: reader.read(65536), log).start()
        out = os.fdopen(write_fd, "wb")
    elif kind == "file":
        out = open(log, "ab")
    else:
        out = open(os.devnull, "wb")
    command = [sys.executable, "-m", "criproxy", "-connect",
               f"{base / 'primary.sock'},alt:{base / 'alt.sock'}",
               "-listen", str(base / "criproxy.sock"), "-rundir", str(base / "run"),
               "-v", "2", "-metricsAddress", "127.0.0.1:0", *flags]
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=out, env=env)
    out.close()
    return Proxy(base, proc, log), keep


@pytest.fixture
def fakes() -> Iterator[Path]:
    base = short_dir("lr-")
    started = [start_fake(base, "primary"), start_fake(base, "alt")]
    yield base
    for fake in started:
        fake.stop()


def version_through(proxy: Proxy) -> str:
    return api_pb2_grpc.RuntimeServiceStub(proxy.channel()).Version(
        cri.VersionRequest(), timeout=10).runtime_name


def wait_for_log(proxy: Proxy, pattern: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, proxy.log(), re.M):
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{proxy.log()[-4000:]}"
        time.sleep(0.1)
    return proxy.log()


@pytest.mark.parametrize("kind", ["socket", "pipe", "file", "devnull"])
def test_criproxy_serves_whatever_its_output_is(fakes: Path, kind: str) -> None:
    proxy, _keep = start_with_output(fakes, kind)
    try:
        proxy.wait_all_up(["primary", "alt"], timeout=STARTUP)
        assert version_through(proxy)
        if kind != "devnull":
            log = wait_for_log(proxy, r"I front\[\d+\] front serving")
            assert "ENXIO" not in log and "spawnerr" not in log, log
            assert re.search(r"I worker-alt\[\d+\] ", log), log
            assert re.search(r"I supervisord\[\d+\] spawned: 'front'", log), log
            assert not re.search(r"^<\d>", log, re.M), "the priority is for the journal only"
    finally:
        assert proxy.stop() == 0, proxy.log()[-3000:]


def test_on_the_journals_stream_every_line_carries_its_priority(fakes: Path) -> None:
    proxy, _keep = start_with_output(fakes, "socket", journal=True)
    try:
        proxy.wait_all_up(["primary", "alt"], timeout=STARTUP)
        alt = [p for p in proxy.status()["runtimes"] if p["label"] == "alt"][0]
        os.kill(alt["worker_pid"], 9)
        log = wait_for_log(proxy, r"^<4>.* W front\[\d+\] runtime alt: up -> down")
        assert re.search(r"^<4>.* W supervisord\[\d+\] exited: worker-1 .*not expected", log,
                         re.M), log
        assert re.search(r"^<6>.* I front\[\d+\] front serving", log, re.M), log
        assert re.search(r"^<6>.* I supervisord\[\d+\] spawned: 'front'", log, re.M), log
        lines = [line for line in log.splitlines() if line]
        assert all(re.match(r"<[0-7]>\S+ \S+ [A-Z] [\w.-]+\[\d+\] ", line) for line in lines), lines
        assert not [line for line in lines if line.startswith(("<3>", "<2>"))], \
            "a worker killed and restarted is not an error of criproxy's"
    finally:
        assert proxy.stop() == 0, proxy.log()[-3000:]


# --- no fd leaks on failed starts ----------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_program_that_keeps_failing_to_start_leaks_no_fds(fakes: Path) -> None:
    """worker-alt cannot bind (its socket path is a directory): it fails every start,
    supervisord gives up, the keeper retries, again and again."""
    rundir = fakes / "run"
    rundir.mkdir(mode=0o700)
    (rundir / "worker-alt.ipc" / "x").mkdir(parents=True)
    proxy, _keep = start_with_output(fakes, "socket")
    try:
        proxy.wait_state("primary", "up", timeout=STARTUP)
        counts = []
        for _round in range(3):
            wait_for_log(proxy, r"keeper: started worker:worker-1 again", timeout=30)
            supervisord = proxy.supervisord_pid()
            counts.append((open_fds(supervisord), open_fds(proxy.front_pid()),
                           open_fds(proxy.worker_pid("primary"))))
            Path(proxy.log_path).write_text("")  # the next round's line is a new one
        assert counts[1] == counts[2], counts
        assert version_through(proxy)
    finally:
        proxy.stop()
