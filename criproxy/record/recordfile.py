"""A runtime's last List answers on disk, so a restarted front serves them at once.

One file per runtime in the runtime dir (mode 0700 already; the file 0600),
replaced atomically (written aside, then renamed), so a crash mid-write leaves
the previous file. A msgpack map:

  {v: 1, socket: the runtime's socket, lists: {method: [answer bytes, unix time]}}

A file for another socket (the runtime was reconfigured), of another version,
or that cannot be read is ignored: the runtime then has no last answer.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import msgpack

log = logging.getLogger("criproxy.front")

VERSION = 1
Lists = dict[str, tuple[bytes, float]]


def record_path(rundir: str, runtime: str) -> Path:
    return Path(rundir) / f"last-answers-{runtime or '_primary'}.msgpack"


def save(path: Path, socket: str, lists: Lists) -> None:
    body = msgpack.packb({"v": VERSION, "socket": socket,
                          "lists": {m: [raw, taken] for m, (raw, taken) in lists.items()}},
                         use_bin_type=True)
    try:
        replace_privately(path, body)
    except OSError as err:
        log.warning("cannot keep the last answers in %s: %s", path, err)


def replace_privately(path: Path, body: bytes) -> None:
    """Replace `path` with `body`, readable by its owner only, atomically: written
    aside, then renamed, so a crash mid-write leaves the previous file."""
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(body)
    temporary.replace(path)


def load(path: Path, socket: str) -> Lists:
    try:
        data = msgpack.unpackb(path.read_bytes(), raw=False)
        if not isinstance(data, dict):
            raise ValueError(f"a {type(data).__name__}, not a map")
        if data.get("v") != VERSION:
            log.warning("ignoring last answers %s of another version (%.20r, want %d)",
                        path, data.get("v"), VERSION)
            return {}
        if data.get("socket") != socket:
            log.warning("ignoring last answers %s: they are runtime socket %.200r's, not %s's",
                        path, data.get("socket"), socket)
            return {}
        return {str(m): (bytes(raw), float(taken)) for m, (raw, taken) in data["lists"].items()}
    except FileNotFoundError:
        return {}
    except Exception as err:  # noqa: BLE001 - any damage means: no last answer
        log.warning("ignoring unreadable last answers %s: %s", path, err)
        return {}
