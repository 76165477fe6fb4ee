"""The log relay's parts, in-process: priorities, lines cut and joined, journal mode
(criproxy's output on a socket, a pipe, a file: tests/process/test_log_relay.py)."""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Iterator

import pytest
from supervisor import events

from criproxy.process import logrelay


# --- the relay's parts --------------------------------------------------------------------


@pytest.mark.parametrize("line, channel, expected", [
    (b"<3>2026 E front[7] runtime alt: down", "stderr", (3, b"2026 E front[7] runtime alt: down")),
    (b"<6>2026 I front[7] serving", "stderr", (6, b"2026 I front[7] serving")),
    (b"Traceback (most recent call last):", "stderr", (3, b"front[7] Traceback (most recent "
                                                          b"call last):")),
    (b"hello", "stdout", (6, b"front[7] hello")),
    (b"W1202 03:00:00.1 ev_epoll1_linux.cc:1] x", "stderr",
     (4, b"front[7] W1202 03:00:00.1 ev_epoll1_linux.cc:1] x")),
])
def test_a_line_keeps_its_priority_or_gets_its_channels(line, channel, expected) -> None:
    assert logrelay.priority_line(line, channel, b"front[7]") == expected


def output_event(relay_name: str, pid: int, data: bytes, channel: str = "stderr") -> object:
    kind = events.ProcessLogStderrEvent if channel == "stderr" else events.ProcessLogStdoutEvent
    process = SimpleNamespace(config=SimpleNamespace(name=relay_name),
                              group=SimpleNamespace(config=SimpleNamespace(name=relay_name)))
    return kind(process, pid, data)


@pytest.fixture
def relay_pipe() -> Iterator[tuple[logrelay.LogRelay, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    yield logrelay.LogRelay(logrelay.Output(journal=False, fd=write_fd)), read_fd
    os.close(read_fd)
    os.close(write_fd)


def read_available(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def test_lines_split_across_chunks_come_out_whole_and_in_order(relay_pipe) -> None:
    relay, out = relay_pipe
    relay._on_output(output_event("front", 7, b"<6>one\n<4>tw"))
    assert read_available(out) == b"one\n"
    relay._on_output(output_event("front", 7, b"o\n<3>three\n"))
    assert read_available(out) == b"two\nthree\n"


def test_an_unfinished_line_is_written_on_the_next_tick(relay_pipe) -> None:
    relay, out = relay_pipe
    relay._on_output(output_event("worker-0", 9, b"<3>last words"))
    assert read_available(out) == b""
    relay._flush_partial()
    assert read_available(out) == b"last words\n"


def test_a_line_without_end_is_cut_rather_than_held(relay_pipe, monkeypatch) -> None:
    relay, out = relay_pipe
    monkeypatch.setattr(logrelay, "LINE_LIMIT", 100)  # a pipe holds 64 KiB: keep it small
    relay._on_output(output_event("front", 7, b"<6>" + b"x" * 100))
    assert read_available(out) == b"x" * 100 + b"\n"
    assert relay._partial == {}


def test_journal_mode_writes_the_priority_prefix() -> None:
    read_fd, write_fd = os.pipe()
    try:
        relay = logrelay.LogRelay(logrelay.Output(journal=True, fd=write_fd))
        relay._on_output(output_event("front", 7, b"<4>slow\nraw\n"))
        assert os.read(read_fd, 1000) == b"<4>slow\n<3>front[7] raw\n"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_supervisords_process_events_get_the_priority_they_mean() -> None:
    levels = logrelay.loggers.LevelsByName
    assert logrelay.supervisor_priority(levels.INFO, "gave up: front entered FATAL state") == 3
    assert logrelay.supervisor_priority(levels.INFO, "spawnerr: unknown error") == 3
    assert logrelay.supervisor_priority(
        levels.INFO, "exited: front (exit status 1; not expected)") == 4
    assert logrelay.supervisor_priority(levels.WARN, "stopped: front (exit status 0)") == 6
    assert logrelay.supervisor_priority(
        levels.CRIT, "Server 'unix_http_server' running without any HTTP "
                     "authentication checking") == 6
    assert logrelay.supervisor_priority(levels.CRIT, "waitpid error 10") == 2


def test_the_journal_is_recognised_by_its_device_and_inode(monkeypatch) -> None:
    read_fd, write_fd = os.pipe()
    try:
        info = os.fstat(write_fd)
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert logrelay.stderr_is_journal(write_fd)
        assert not logrelay.stderr_is_journal(read_fd + 1000)  # not open: not the journal
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
        assert not logrelay.stderr_is_journal(write_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
