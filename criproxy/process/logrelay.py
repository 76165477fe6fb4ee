"""A supervisord plugin that relays every process's lines to criproxy's stderr.

supervisord's own way, `stdout_logfile=/dev/stdout`, opens /proc/self/fd/1,
which fails with ENXIO when stdout is a socket — as it is under systemd, whose
journal takes a service's output over a socket — and then no program ever
starts. So the programs' output is not written by supervisord's loggers at
all: it arrives here as supervisord's in-process log events and is written to
the file descriptor criproxy was started with, whatever it is (the journal, a
pipe, a file, a socket, /dev/null). supervisord's own lines go there too.

Each line keeps the priority its writer gave it (`<N>`, see criproxy/logs.py).
When stderr is the journal's stream (systemd's JOURNAL_STREAM names it) the
prefix is written, so `journalctl -p err` shows errors alone; anywhere else it
is stripped. A line says which process wrote it (`front[pid]`,
`worker-alt[pid]`, `supervisord[pid]`).
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable

from supervisor import events, loggers
from supervisor.options import ServerOptions

from criproxy.process.eventplugin import EventPlugin, install

# Lines a process writes without a priority (an uncaught traceback, grpc's own
# C-core logging) take one from their channel, or from glog's level letter.
_DEFAULT_PRIORITY = {"stdout": 6, "stderr": 3}
_GLOG_PRIORITY = {b"I": 6, b"W": 4, b"E": 3, b"F": 2}
_PREFIX = re.compile(rb"^<([0-7])>")
_GLOG = re.compile(rb"^([IWEF])\d{4} ")
# A line longer than this is cut into pieces rather than held in memory.
LINE_LIMIT = 64 * 1024
_SUPERVISOR_PRIORITY = {loggers.LevelsByName.CRIT: 2, loggers.LevelsByName.ERRO: 3,
                        loggers.LevelsByName.WARN: 4, loggers.LevelsByName.INFO: 6}
# supervisord's levels for its own process events suit an interactive daemon,
# not a journal: a program that crashed or was given up on is logged at INFO,
# an ordered stop at WARN, and the control socket's lack of a password (it is
# 0700 in criproxy's 0700 runtime dir) and running as root at CRIT. These get the priority they mean here.
_LETTER = {2: "C", 3: "E", 4: "W", 6: "I"}
_SUPERVISOR_NOTICES = (
    (re.compile(r"^(spawnerr|gave up): "), 3),
    (re.compile(r"^exited: .*not expected\)$|^killing "), 4),
    (re.compile(r"^stopped: |running without any HTTP authentication|"
                r"^Supervisor is running as root"), 6),
)


def stderr_is_journal(fd: int = 2) -> bool:
    """True when `fd` is the stream systemd connected to the journal."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(fd)
    except OSError:
        return False
    return f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, or give up quietly: logging must never stop supervisord."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def priority_line(line: bytes, channel: str, writer: bytes) -> tuple[int, bytes]:
    """(priority, text) of one line a process wrote; an unprefixed line is named."""
    match = _PREFIX.match(line)
    if match:
        return int(match.group(1)), line[match.end():]
    glog = _GLOG.match(line)
    prio = _GLOG_PRIORITY[glog.group(1)] if glog else _DEFAULT_PRIORITY[channel]
    return prio, writer + b" " + line


class Output:
    """criproxy's stderr: lines with their priority prefix on the journal, bare elsewhere."""

    def __init__(self, journal: bool, fd: int = 2) -> None:
        self.journal = journal
        self.fd = fd

    def write(self, lines: Iterable[tuple[int, bytes]]) -> None:
        prefix = (lambda prio: b"<%d>" % prio) if self.journal else (lambda _prio: b"")
        write_all(self.fd, b"".join(prefix(prio) + text + b"\n" for prio, text in lines))


class LogRelay(EventPlugin):
    def __init__(self, output: Output) -> None:
        super().__init__([(events.ProcessLogStdoutEvent, self._on_output),
                          (events.ProcessLogStderrEvent, self._on_output),
                          (events.Tick5Event, self._flush_partial)])
        self.output = output
        self._partial: dict[tuple[str, str], bytes] = {}

    def _on_output(self, event: Any) -> None:
        """A chunk of a program's output: write its complete lines, keep the rest."""
        key = (event.process.config.name, event.channel)
        data = self._partial.pop(key, b"") + event.data
        *lines, rest = data.split(b"\n")
        if len(rest) >= LINE_LIMIT:
            lines.append(rest)
        elif rest:
            self._partial[key] = rest
        writer = b"%s[%d]" % (key[0].encode(), event.pid)
        self.output.write(priority_line(line, event.channel, writer) for line in lines)

    def needs_tick(self) -> bool:
        return bool(self._partial)

    def _flush_partial(self, _event: Any = None) -> None:
        """A line left unfinished (its writer died mid-line) is written on the next tick."""
        for (name, channel), rest in list(self._partial.items()):
            del self._partial[(name, channel)]
            self.output.write([priority_line(rest, channel, name.encode())])


def supervisor_priority(level: int, message: str) -> int:
    for pattern, prio in _SUPERVISOR_NOTICES:
        if pattern.search(message):
            return prio
    return _SUPERVISOR_PRIORITY.get(level, 7)


class SupervisorLines(loggers.Handler):
    """supervisord's own log lines, in the programs' format, to criproxy's stderr."""

    def __init__(self, output: Output, level: int) -> None:
        super().__init__()
        self.output = output
        self.level = level

    def emit(self, record: Any) -> None:
        """One line in the programs' form; its level letter says the priority it got."""
        fields = record.asdict()
        prio = supervisor_priority(record.level, fields["message"])
        text = (f"{fields['asctime']} {_LETTER.get(prio, 'D')} supervisord[{os.getpid()}] "
                f"{fields['message'].rstrip()}").encode("utf-8", "replace")
        self.output.write((prio, line) for line in text.split(b"\n"))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RelayedOptions(ServerOptions):
    """supervisord's options, its own lines in criproxy's form from the very first:
    its stdout handler would write a few before any plugin is loaded."""

    def make_logger(self) -> None:
        parsed = [(self.parse_criticals, loggers.LevelsByName.CRIT),
                  (self.parse_warnings, loggers.LevelsByName.WARN),
                  (self.parse_infos, loggers.LevelsByName.INFO)]
        self.parse_criticals, self.parse_warnings, self.parse_infos = [], [], []
        super().make_logger()
        kept = [h for h in self.logger.handlers if not isinstance(h, loggers.StreamHandler)]
        self.logger.handlers[:] = kept + [SupervisorLines(Output(stderr_is_journal()),
                                                          self.logger.level)]
        for messages, level in parsed:
            for message in messages:
                self.logger.log(level, message)


def make_relay(_supervisord: Any) -> LogRelay:
    """supervisord's rpcinterface factory; a reload replaces the previous relay."""
    relay = LogRelay(Output(stderr_is_journal()))
    install("logrelay", relay)
    return relay
