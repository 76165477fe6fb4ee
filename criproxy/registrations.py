"""Runtimes that register themselves in -runtimesDir, and the published list.

A runtime named NAME is registered while `DIR/NAME.sock` is its CRI socket or
a symlink to it: the socket is the registration, as kubelet's plugin sockets
are. `DIR/NAME.json`, written before the socket, may name the RuntimeClass
handlers it serves: `{"runtimeHandlers": {"HANDLER": "HANDLER_IN_THE_RUNTIME"}}`.

supervisord's registrar (process/registrar.py) is the one that decides: it
scans the directory on every change, and publishes what it decided in the
runtime dir (`registered.json`), which the front, `criproxy status` and
`criproxy doctor` read. Only root may add to the directory: one that others
can write is refused whole, and so is an entry that another user owns.
"""
from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from criproxy.settings import (Config, ConfigError, HandlerRoute, Runtime, sharing_ids,
                               validate_runtime_name)

SOCKET_SUFFIX = ".sock"
EXTRA_SUFFIX = ".json"
PUBLISHED = "registered.json"
_MAX_EXTRA = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Registration:
    """A registered runtime: where criproxy dials it, and the handlers it serves.
    `missing_since`: its socket entry is gone (a restarting runtime re-creates it);
    it leaves once that lasts -leaveAfter."""

    name: str
    socket: str
    handlers: tuple[HandlerRoute, ...] = ()
    missing_since: float | None = None

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.name, self.socket)


@dataclasses.dataclass(frozen=True)
class Refusal:
    entry: str
    reason: str


@dataclasses.dataclass
class Scan:
    """What one look at the directory found."""

    registered: dict[str, Registration]
    refused: list[Refusal]
    problem: str = ""  # the directory itself is refused (or missing): why


def taken(config: Config) -> tuple[set[str], set[str]]:
    """The runtime names (and labels: "primary") and the handlers of -connect and
    -runtimeHandlers: a registration cannot take them."""
    names = {r.name for r in config.connect} | {r.label for r in config.connect}
    return names, {h.handler for h in config.runtime_handlers}


def check_directory(directory: Path) -> str:
    """Why registrations in `directory` cannot be trusted, or "" when they can."""
    try:
        info = os.lstat(directory)
    except OSError as err:
        return f"cannot read runtimes dir {directory}: {err.strerror}"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return f"runtimes dir {directory} is not a directory (a symlink is refused too)"
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return (f"runtimes dir {directory} must be owned by uid {os.geteuid()} and writable "
                f"by it alone (it is owned by uid {info.st_uid}, mode "
                f"{info.st_mode & 0o7777:o}): anyone who can write there can register a runtime")
    return ""


def scan(directory: Path, taken_names: set[str], taken_handlers: set[str]) -> Scan:
    """The runtimes registered in `directory`. `taken_*`: the names and handlers of
    -connect and -runtimeHandlers, which a registration cannot take."""
    problem = check_directory(directory)
    if problem:
        return Scan({}, [], problem)
    registered: dict[str, Registration] = {}
    refused: list[Refusal] = []
    try:
        entries = sorted(os.listdir(directory))
    except OSError as err:
        return Scan({}, [], f"cannot read runtimes dir {directory}: {err.strerror}")
    for entry in entries:
        if not entry.endswith(SOCKET_SUFFIX):
            continue
        try:
            found = _registration(directory, entry, taken_names | set(registered))
            _check_handlers(found, taken_handlers, registered.values())
            registered[found.name] = found
        except ConfigError as err:
            refused.append(Refusal(entry, str(err)))
    return Scan(registered, refused)


def _registration(directory: Path, entry: str, taken_names: set[str]) -> Registration:
    name = entry[:-len(SOCKET_SUFFIX)]
    validate_runtime_name(f"{directory}/{entry}", name)
    if name in taken_names:
        raise ConfigError(f"runtime name {name!r} is taken by -connect")
    clash = sharing_ids(name, taken_names)
    if clash:
        raise ConfigError(f"runtime name {name!r} would share ids with runtime {clash!r}")
    path = directory / entry
    _check_socket(path)
    return Registration(name, str(path), _read_handlers(directory / (name + EXTRA_SUFFIX), name))


def _check_socket(path: Path) -> None:
    """A socket, or a symlink to one (a dangling one is a runtime restarting)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} went away while it was read") from None
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{path} is owned by uid {info.st_uid}, not {os.geteuid()}")
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return
        except OSError as err:
            raise ConfigError(f"{path} -> {os.readlink(path)}: {err.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path} is not a unix socket, nor a symlink to one")


def _read_handlers(path: Path, runtime: str) -> tuple[HandlerRoute, ...]:
    """The handlers in NAME.json; none without the file."""
    try:
        with open(path, "rb") as extra:
            raw = extra.read(_MAX_EXTRA + 1)
    except FileNotFoundError:
        return ()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    if len(raw) > _MAX_EXTRA:
        raise ConfigError(f"{path} is over {_MAX_EXTRA} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not JSON: {err}") from None
    return parse_extra(path, data, runtime)


def parse_extra(path: Path | str, data: Any, runtime: str) -> tuple[HandlerRoute, ...]:
    """`{"runtimeHandlers": {"HANDLER": "HANDLER_IN_THE_RUNTIME"}}`; nothing else."""
    if not isinstance(data, dict) or set(data) - {"runtimeHandlers"}:
        raise ConfigError(f"{path}: want an object with only \"runtimeHandlers\"")
    handlers = data.get("runtimeHandlers", {})
    if not isinstance(handlers, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in handlers.items()):
        raise ConfigError(f"{path}: \"runtimeHandlers\" must map non-empty handler names "
                          "to non-empty handler names in the runtime")
    return tuple(HandlerRoute(h, runtime, inside) for h, inside in sorted(handlers.items()))


def _check_handlers(found: Registration, taken: set[str], others: Any) -> None:
    for route in found.handlers:
        if route.handler in taken:
            raise ConfigError(f"handler {route.handler!r} is taken by -runtimeHandlers")
        for other in others:
            if any(route.handler == theirs.handler for theirs in other.handlers):
                raise ConfigError(f"handler {route.handler!r} is registered by "
                                  f"runtime {other.name} already")


def within_limit(found: dict[str, Registration], kept: set[str],
                 limit: int) -> tuple[dict[str, Registration], list[Refusal]]:
    """The newcomers among `found` that fit beside the `kept` runtimes under
    -maxRuntimes, and the refusals of the rest. A kept runtime keeps its place (one
    whose socket is gone too: it holds a worker until it leaves); newcomers take
    the places left in name order, so a flood of entries never displaces one."""
    room = limit - len(kept)
    admitted: dict[str, Registration] = {}
    refused: list[Refusal] = []
    for name in sorted(set(found) - kept):
        if len(admitted) < room:
            admitted[name] = found[name]
        else:
            refused.append(Refusal(name + SOCKET_SUFFIX, (
                f"{limit} runtimes are registered already, the most -maxRuntimes allows; "
                "it registers once one leaves")))
    return admitted, refused


# --- the published list (registrar -> front, status, doctor) ------------------------

def publish(rundir: Path, directory: Path, registered: list[Registration],
            refused: list[Refusal], problem: str) -> None:
    """Replace the published list at once (readers never see half of one)."""
    body = {"directory": str(directory), "problem": problem, "time": time.time(),
            "runtimes": [{"name": r.name, "socket": r.socket,
                          "handlers": {h.handler: h.runtime_handler for h in r.handlers},
                          "missing_since": r.missing_since} for r in registered],
            "refused": [dataclasses.asdict(r) for r in refused]}
    temporary = rundir / (PUBLISHED + ".tmp")
    temporary.write_text(json.dumps(body, indent=1))
    temporary.replace(rundir / PUBLISHED)


def read_published(rundir: Path) -> dict[str, Any]:
    """The published list; empty when there is none (no registrar ran yet)."""
    try:
        data = json.loads((rundir / PUBLISHED).read_text())
    except FileNotFoundError:
        return {"runtimes": [], "refused": [], "problem": "", "directory": ""}
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {rundir / PUBLISHED}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runtimes", []), list):
        raise ConfigError(f"{rundir / PUBLISHED}: want an object with a list of runtimes")
    return data


def published_registrations(rundir: Path) -> dict[str, Registration]:
    """The registered runtimes the registrar published, by name."""
    found = {}
    for item in read_published(rundir).get("runtimes", []):
        try:
            registration = _published_entry(item)
        except (KeyError, TypeError, ConfigError) as err:
            raise ConfigError(f"{rundir / PUBLISHED}: a bad entry {item!r}: {err}") from None
        found[registration.name] = registration
    return found


def _published_entry(item: Any) -> Registration:
    name, socket, gone = item["name"], item["socket"], item.get("missing_since")
    if not isinstance(name, str) or not isinstance(socket, str) or not socket:
        raise ConfigError("want a name and a socket path")
    validate_runtime_name(PUBLISHED, name)
    if gone is not None and not isinstance(gone, (int, float)):
        raise ConfigError("missing_since is not a time")
    handlers = parse_extra(PUBLISHED, {"runtimeHandlers": item["handlers"]}, name)
    return Registration(name, socket, handlers, gone)
