"""Target 5: flags and configuration (criproxy/settings.py).

`-connect` (parse_connect), `-runtimeHandlers` (parse_handlers) and every flag
together (config_from_values), from strings built of the flags' own pieces
(`unix://`, `name:`, `,`, `=`, names with `_` `.` `-`, ports, URLs) or raw
text. Invariants:
- only ConfigError, never another exception;
- what parses is what criproxy writes back for the front and the workers:
  connect_string / handlers_string / to_values give strings that parse to the
  same runtimes, routes and Config (the settings file's round trip);
- every runtime name accepted is one ROUTING.md allows, and distinct; every
  duration accepted is a finite number of seconds above 0;
- a -runtimesDir the input fills (names, sockets, symlinks, files, NAME.json)
  scans (registrations.scan) to registrations with valid, untaken names and
  handlers, never an exception.

Input: which check, then the builder's bytes (or raw text).
"""
from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from typing import Any, Callable
from pathlib import Path

from criproxy import registrations
from criproxy.settings import (SETTINGS, ConfigError, config_from_values, connect_string,
                               handlers_string, parse_connect, parse_handlers, to_values,
                               validate_runtime_name)
from fuzz import harness

# Every setting that is a number of seconds (they share one parser).
_SECONDS = next(s.parse for s in SETTINGS if s.name == "heartbeat")
DURATIONS = tuple(s.name for s in SETTINGS if s.parse is _SECONDS)
from fuzz.provider import Provider

PIECES = ("/run/containerd/containerd.sock", "unix://", "unix:///run/x.sock", "alt", "vm.cloud",
          "x_", "_y", "a__b", ":", ",", "=", "/", "", " ", "-", ".", "unix", "//", "\x00",
          "é", "kata", "runc", "1", "%")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def text(p: Provider) -> str:
    if p.chance(6):
        return p.text(60)
    return "".join(p.pick(PIECES) for _ in range(p.int_in(0, 10)))


def values(p: Provider) -> dict[str, object]:
    found: dict[str, object] = {"connect": text(p) if p.int_in(0, 3) else
                                "/p.sock,alt:/a.sock,vm.cloud:unix:///v.sock"}
    for setting in SETTINGS:
        if p.chance(3):
            found[setting.name] = p.pick((text(p), "0", "-1", "nan", "inf", "1e309", "65536",
                                          "http://host:1/", "unix:rel", "[::1]:80", "off",
                                          "1" * 5000, None, True, 3))
    return found


def test_one_input(data: bytes) -> None:
    p = Provider(data)
    which = p.byte() % 4
    if which == 0:
        check_connect(text(p) if p.int_in(0, 7) else p.rest().decode("latin-1"))
    elif which == 1:
        check_handlers(text(p) if p.int_in(0, 7) else p.rest().decode("latin-1"))
    elif which == 2:
        check_config(values(p))
    else:
        check_registrations(p)


# One real unix socket for registrations to point at (made once: no socket per input).
_sockdir = tempfile.mkdtemp(prefix="criproxy-fuzz-sock-")
atexit.register(shutil.rmtree, _sockdir, ignore_errors=True)
_SOCKET = os.path.join(_sockdir, "runtime.sock")
_listener = socket.socket(socket.AF_UNIX)
_listener.bind(_SOCKET)
EXTRAS = (b'{"runtimeHandlers": {"kata": "kata-qemu"}}', b'{"runtimeHandlers": {"gvisor": "runsc"}}',
          b'{"runtimeHandlers": {}}', b'{}', b'[]', b'{"runtimeHandlers": {"": "x"}}',
          b'{"runtimeHandlers": {"kata": 1}}', b'{"other": 1}', b'\xff', b'{', b'null',
          b'{"runtimeHandlers": {"runc": "runc"}}', b" " * 70000)


def check_registrations(p: Provider) -> None:
    """A -runtimesDir built by the input (names, sockets, symlinks, files, NAME.json)
    through registrations.scan: a Scan, never an exception; what it registers is
    what criproxy may take."""
    directory = Path(tempfile.mkdtemp(prefix="criproxy-fuzz-rt-", dir=harness.clean_rundir()))
    os.chmod(directory, 0o755)
    for _ in range(p.int_in(0, 4)):
        name = p.pick(("alt", "vm.cloud", "primary", "", "a__b", "x_", "é", "a" * 300, "kata",
                       ".", "-")) if p.int_in(0, 3) else p.text(12).replace("/", "").replace("\x00", "")
        path = directory / (name + ".sock")
        kind = p.int_in(0, 4)
        try:
            if kind == 0:
                path.symlink_to(_SOCKET)
            elif kind == 1:
                path.symlink_to(directory / "gone.sock")
            elif kind == 2:
                path.write_bytes(b"")
            elif kind == 3:
                path.mkdir()
            else:
                path.symlink_to(path)
            if p.bool():
                (directory / (name + ".json")).write_bytes(p.pick(EXTRAS))
        except OSError:
            continue  # a name the file system refuses (too long, exists)
    taken_names = {"", "primary", "alt"} if p.bool() else {"", "primary"}
    taken_handlers = {"runc"} if p.bool() else set()
    found = registrations.scan(directory, taken_names, taken_handlers)
    handlers: list[str] = []
    for name, registration in found.registered.items():
        validate_runtime_name("registration", name)
        assert name not in taken_names, name
        handlers += [route.handler for route in registration.handlers]
    assert len(handlers) == len(set(handlers)) and not set(handlers) & taken_handlers, handlers


def check_connect(value: str) -> None:
    try:
        runtimes = parse_connect(value)
    except ConfigError:
        return
    names = [r.name for r in runtimes]
    assert names[0] == "" and all(names[1:]) and len(set(names)) == len(names), names
    for name in names[1:]:
        assert NAME_RE.match(name) and "__" not in name, name
    again = read_back(f"-connect {value!r}", connect_string(runtimes), parse_connect)
    assert again == runtimes, f"-connect {value!r} reads back as {again}, not {runtimes}"


def read_back(what: str, written: Any, parse: Callable[[Any], Any]) -> Any:
    """What `written` (a value as criproxy writes it down) parses as; it must parse."""
    try:
        return parse(written)
    except ConfigError as err:
        raise AssertionError(f"{what:.300} is written back as {written!r:.300}, which does "
                             f"not read back: {err}") from None


def check_handlers(value: str) -> None:
    try:
        routes = parse_handlers(value)
    except ConfigError:
        return
    assert len({r.handler for r in routes}) == len(routes)
    assert parse_handlers(handlers_string(routes)) == routes, (value, handlers_string(routes))


def check_config(raw: dict[str, object]) -> None:
    try:
        config = config_from_values(raw)
    except ConfigError:
        return
    for name in DURATIONS:
        seconds = getattr(config, name)
        assert math.isfinite(seconds) and seconds > 0, f"{name} {seconds} accepted"
    written = to_values(config)
    again = read_back(repr(raw), written, config_from_values)
    if not any(isinstance(v, float) and math.isnan(v) for v in vars(config).values()):
        assert again == config, (raw, written)


def main() -> None:
    from fuzz.run import fuzz_main
    fuzz_main(sys.modules[__name__])


if __name__ == "__main__":
    main()
