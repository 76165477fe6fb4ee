"""A directory watch through Linux inotify, as a file descriptor to poll.

The registration directory is watched by supervisord's loop and the published
registrations by the front's: both only need "something changed in this
directory", so the events are read and dropped, and the caller looks again.
Nothing runs while nothing changes (no polling timer).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
ANY_CHANGE = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE |
              IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (name follows)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class DirectoryWatch:
    """Readable whenever an entry of `path` is made, changed, moved or removed
    (or the directory itself goes): `fd` for poll/select/add_reader, `drain()`
    after each wakeup."""

    def __init__(self, path: str, mask: int = ANY_CHANGE) -> None:
        self.path = path
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise _os_error("inotify_init1", path)
        if _libc.inotify_add_watch(self.fd, os.fsencode(path), mask | IN_ONLYDIR) < 0:
            error = _os_error("inotify_add_watch", path)
            os.close(self.fd)
            raise error

    def drain(self) -> set[str] | None:
        """Read the pending events: the names of the entries they were about, or
        None once the directory itself is gone (its watch ended with it: the
        caller makes a new one when it is back)."""
        names: set[str] | None = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            found = _names(data)
            names = None if names is None or found is None else names | found

    def close(self) -> None:
        os.close(self.fd)


def _names(events: bytes) -> set[str] | None:
    """The entry names raw inotify events are about; None if the directory went."""
    names, offset = set(), 0
    while offset + _EVENT.size <= len(events):
        _wd, mask, _cookie, length = _EVENT.unpack_from(events, offset)
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
            return None
        start = offset + _EVENT.size
        names.add(os.fsdecode(events[start:start + length].rstrip(b"\0")))
        offset = start + length
    return names


def _os_error(call: str, path: str) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, f"{call}: {os.strerror(number)}", path)
