"""Every criproxy setting, declared once.

The command line, the resolved settings file handed to the front and the
workers, and the supervisord programs are all derived from SETTINGS, so a
setting (and the runtime list) is written down in exactly one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from criproxy import setting_values as check

EXIT_CONFIG_ERROR = 2
# A program that cannot boot leaves its reason here (in the runtime dir) for
# the keeper, which then stops everything instead of restarting it.
BOOT_FAILURE_FILE = "boot-failure"

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# A runtime's worker socket (rundir/worker-NAME.ipc) must fit in a unix socket path.
MAX_NAME = 63


class ConfigError(Exception):
    """A setting is wrong; the process must stop, not restart."""


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One runtime behind the proxy. The primary one has the empty name."""

    name: str
    socket: str

    @property
    def is_primary(self) -> bool:
        return self.name == ""

    @property
    def label(self) -> str:
        """How logs and errors name the runtime."""
        return self.name or "primary"

    @property
    def address(self) -> str:
        return "unix://" + self.socket


def _socket_path(entry: str, raw: str) -> str:
    path = raw[len("unix://"):] if raw.startswith("unix://") else raw
    if not path.strip():
        raise ConfigError(f"-connect entry {entry!r}: socket path is empty")
    return path


def validate_runtime_name(where: str, name: str) -> None:
    """The rules of a runtime name, wherever it is given (-connect, -runtimesDir)."""
    if not name:
        raise ConfigError(f"{where}: runtime name is empty")
    if "__" in name or not _NAME_RE.match(name) or len(name) > MAX_NAME:
        raise ConfigError(
            f"{where}: runtime name {name!r} may only hold letters, digits, '.', '-', "
            f"'_', no '__', and at most {MAX_NAME} of them")


def parse_connect(value: str) -> tuple[Runtime, ...]:
    """Parse `-connect primary,name:socket,...` into runtimes, primary first."""
    entries = value.split(",")
    if not value.strip():
        raise ConfigError("-connect is empty: name at least the primary runtime socket")
    runtimes: list[Runtime] = []
    for entry in entries:
        runtimes.append(_parse_entry(entry, first=not runtimes))
    names = [r.name for r in runtimes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"-connect: runtime name {name!r} is given more than once")
        other = sharing_ids(name, set(names))
        if other:
            short = min(name, other, key=len)
            raise ConfigError(f"-connect: runtime names {short!r} and {short + '_'!r} cannot "
                              f"both be used: id {short}___ID would be either's")
    return tuple(runtimes)


def sharing_ids(name: str, others: set[str]) -> str | None:
    """The runtime among `others` whose ids would look like `name`'s: `x` shows id
    `_y` as `x___y`, and `x_` shows id `y` the same way."""
    for other in (name + "_", name[:-1] if name.endswith("_") else ""):
        if name and other and other in others:
            return other
    return None


def _parse_entry(entry: str, first: bool) -> Runtime:
    name, sep, rest = entry.partition(":")
    if not sep or name == "unix" and rest.startswith("//"):
        if not first:
            raise ConfigError(
                f"-connect entry {entry!r}: only the first entry is the primary; "
                "every other entry must be name:socket")
        return Runtime("", _socket_path(entry, entry))
    if first:
        raise ConfigError(
            f"-connect entry {entry!r}: the first entry is the primary runtime and has no name")
    validate_runtime_name(f"-connect entry {entry!r}", name)
    return Runtime(name, _socket_path(entry, rest))


@dataclasses.dataclass(frozen=True)
class HandlerRoute:
    """A RuntimeClass handler kubelet names, the runtime serving it, and its name there."""

    handler: str
    runtime: str
    runtime_handler: str

    def __str__(self) -> str:
        return f"{self.handler}={self.runtime}:{self.runtime_handler}"


def parse_handlers(value: str) -> tuple[HandlerRoute, ...]:
    """Parse `HANDLER=RUNTIME[:RUNTIME_HANDLER],...`; without `:` the name is kept."""
    routes: list[HandlerRoute] = []
    for entry in filter(None, value.split(",")):
        handler, sep, target = entry.partition("=")
        if not sep or not handler:
            raise ConfigError(f"-runtimeHandlers entry {entry!r}: want "
                              "HANDLER=RUNTIME[:RUNTIME_HANDLER] (RUNTIME empty: the primary)")
        runtime, colon, runtime_handler = target.partition(":")
        if any(r.handler == handler for r in routes):
            raise ConfigError(f"-runtimeHandlers: handler {handler!r} is given more than once")
        routes.append(HandlerRoute(handler, runtime, runtime_handler if colon else handler))
    return tuple(routes)


def handlers_string(routes: tuple[HandlerRoute, ...]) -> str:
    return ",".join(map(str, routes))


def connect_string(runtimes: tuple[Runtime, ...]) -> str:
    """The inverse of parse_connect: a socket holding ':' is written as unix://PATH,
    or it would read back as name:socket (or lose a unix:// of its own)."""
    def written(socket: str) -> str:
        return "unix://" + socket if ":" in socket else socket
    return ",".join(written(r.socket) if r.is_primary else f"{r.name}:{written(r.socket)}"
                    for r in runtimes)


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    flag: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    is_switch: bool = False
    format: Callable[[Any], Any] = lambda value: value  # inverse of parse


SETTINGS: tuple[Setting, ...] = (
    Setting("connect", "-connect", None, parse_connect,
            "runtimes: PRIMARY_SOCKET[,NAME:SOCKET...]; the first is the primary",
            format=connect_string),
    Setting("runtime_handlers", "-runtimeHandlers", (), parse_handlers,
            "RuntimeClass handlers of other runtimes: HANDLER=RUNTIME[:RUNTIME_HANDLER],...",
            format=handlers_string),
    Setting("runtimes_dir", "-runtimesDir", "/run/criproxy-runtimes", check.runtimes_dir,
            "directory where runtimes register (NAME.sock: their CRI socket or a symlink "
            "to it; NAME.json: the RuntimeClass handlers they serve); root's alone; off: none"),
    Setting("leave_after", "-leaveAfter", 180.0, check.positive_float,
            "seconds a registered runtime's socket may be gone before the runtime leaves "
            "(a restarting runtime re-creates it; until then the runtime is down)"),
    Setting("listen", "-listen", "/run/criproxy.sock", str,
            "unix socket kubelet connects to"),
    Setting("rundir", "-rundir", "/run/criproxy", str,
            "private directory (mode 0700) for worker sockets, supervisord and status"),
    Setting("verbosity", "-v", 0, check.verbosity,
            "log level: 2 failed requests, 3 state-changing calls, 4 status calls, 5 List calls"),
    Setting("logtostderr", "-logtostderr", False, bool,
            "log to stderr (criproxy always does; accepted for compatibility)", is_switch=True),
    Setting("stream_port", "-streamPort", 11250, check.port,
            "port of the streaming server used to make relative streaming URLs absolute"),
    Setting("stream_url", "-streamUrl", "", check.stream_url,
            "base URL for relative streaming URLs (overrides -streamPort)"),
    Setting("stream_hosts", "-streamHosts", (), check.stream_hosts,
            "hosts a runtime's streaming URL may point at besides loopback and the node's "
            "own addresses: comma-separated IPs, CIDRs and host names",
            format=check.stream_hosts_string),
    Setting("list_budget", "-listBudget", 2.0, check.positive_float,
            "seconds a fan-out List call waits for a runtime before answering without it"),
    Setting("stale_for", "-staleFor", 180.0, check.positive_float,
            "seconds a runtime that cannot answer a ListPodSandbox/ListContainers is "
            "represented by its last answer; after that it is left out (kubelet's own "
            "relist tolerates 3 min without an answer before the node turns NotReady)"),
    Setting("start_wait", "-startWait", 10.0, check.positive_float,
            "seconds a call to a runtime whose worker has not reported since criproxy "
            "started waits for it (within the call's deadline) instead of failing"),
    Setting("heartbeat", "-heartbeat", 0.5, check.positive_float,
            "seconds between front-to-worker heartbeats while calls to the worker are in "
            "flight, or while it has not answered since it (re)connected"),
    Setting("idle_probe", "-idleProbe", 30.0, check.positive_float,
            "seconds between heartbeats to a worker with no call in flight (a worker "
            "reports its runtime's changes itself; this only finds a worker that hung "
            "while idle)"),
    Setting("worker_timeout", "-workerTimeout", 3.0, check.positive_float,
            "seconds of worker silence after which its runtime counts as down (a worker that "
            "exits is noticed at once; this catches a hung one, so allow for a loaded node)"),
    Setting("drain", "-drain", 5.0, check.positive_float,
            "seconds the front lets in-flight requests finish on shutdown"),
    Setting("socket_group", "-socketGroup", "", check.group,
            "group owning the listen socket (mode 0660); empty keeps root's group"),
    Setting("metrics_address", "-metricsAddress", "127.0.0.1:9610", check.metrics_address,
            "where the front serves Prometheus metrics: host:port (port 0: any free "
            "port), unix:/path, or off"),
    Setting("otlp_endpoint", "-otlpEndpoint", "", check.otlp_endpoint,
            "OTLP/gRPC collector to export criproxy's own trace spans to: host:port, "
            "unix:/path, or off (the trace context reaches the runtimes either way)"),
    Setting("max_answer_bytes", "-maxAnswerBytes", 16 * 1024 * 1024, check.answer_bytes,
            "largest answer (or event) taken from a runtime, in bytes; a larger one is that "
            "runtime's bad answer (INTERNAL); default: kubelet's own limit"),
    Setting("event_rate", "-eventRate", 100.0, check.rate,
            "events a second each runtime may add to the merged event stream, beyond "
            "-eventBurst; a runtime over it has its events cut for a while"),
    Setting("event_burst", "-eventBurst", 1000, check.positive_int,
            "events a runtime may send at once before -eventRate applies"),
    Setting("max_runtimes", "-maxRuntimes", 8, check.positive_int,
            "runtimes that may be registered in -runtimesDir at once; more are refused"),
)


@dataclasses.dataclass(frozen=True)
class Config:
    connect: tuple[Runtime, ...]
    runtime_handlers: tuple[HandlerRoute, ...]
    runtimes_dir: str
    leave_after: float
    listen: str
    rundir: str
    verbosity: int
    logtostderr: bool
    stream_port: int
    stream_url: str
    stream_hosts: tuple[check.StreamHost, ...]
    list_budget: float
    stale_for: float
    start_wait: float
    heartbeat: float
    idle_probe: float
    worker_timeout: float
    drain: float
    socket_group: str
    metrics_address: str
    otlp_endpoint: str
    max_answer_bytes: int
    event_rate: float
    event_burst: int
    max_runtimes: int

    def __post_init__(self) -> None:
        names = {r.name for r in self.connect}
        for route in self.runtime_handlers:
            if route.runtime not in names:
                raise ConfigError(f"-runtimeHandlers entry {str(route)!r}: no runtime named "
                                  f"{route.runtime!r} in -connect")

    @property
    def runtimes(self) -> tuple[Runtime, ...]:
        return self.connect

    def runtime_at(self, index: int) -> Runtime:
        if not 0 <= index < len(self.connect):
            raise ConfigError(f"no runtime number {index} in -connect")
        return self.connect[index]

    def worker_endpoint(self, runtime: Runtime) -> str:
        return f"ipc://{self.worker_socket(runtime)}"

    def worker_socket(self, runtime: Runtime) -> str:
        return os.path.join(self.rundir, f"worker-{runtime.name or '_primary'}.ipc")

    @property
    def status_file(self) -> Path:
        return Path(self.rundir) / "status.json"

    @property
    def settings_file(self) -> Path:
        return Path(self.rundir) / "settings.json"


def build_parser(prog: str = "criproxy") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    for s in SETTINGS:
        flags = [s.flag, "-" + s.flag] if not s.flag.startswith("--") else [s.flag]
        if s.is_switch:
            parser.add_argument(*flags, dest=s.name, action="store_true", help=s.help)
        else:
            parser.add_argument(*flags, dest=s.name, metavar=s.name.upper(), help=s.help,
                                default=None)
    return parser


def config_from_values(values: dict[str, Any]) -> Config:
    """Validate raw (string) values, filling in defaults, into a Config."""
    resolved: dict[str, Any] = {}
    for s in SETTINGS:
        raw = values.get(s.name)
        if s.is_switch:
            resolved[s.name] = bool(raw)
        elif raw is None:
            if s.default is None:
                raise ConfigError(f"{s.flag} is required: {s.help}")
            resolved[s.name] = s.default
        else:
            resolved[s.name] = _parse_value(s, raw)
    return Config(**resolved)


def _parse_value(setting: Setting, raw: Any) -> Any:
    try:
        return setting.parse(str(raw))
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{setting.flag} {raw!r}: {err}") from None


def config_from_args(argv: list[str]) -> Config:
    args = build_parser().parse_args(argv)
    return config_from_values(vars(args))


def to_values(config: Config) -> dict[str, str]:
    """The raw form of a Config, as written to the settings file."""
    return {s.name: s.format(getattr(config, s.name)) for s in SETTINGS}


def load_settings_file(path: str) -> Config:
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read settings file {path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"settings file {path} holds no settings: want a JSON object")
    return config_from_values(values)


def report_boot_failure(settings_file: str, program: str, err: Exception) -> int:
    """Say why a program cannot boot, where the keeper looks; return the exit code."""
    message = f"{program}: {err}"
    print(message, file=sys.stderr)
    try:
        (Path(settings_file).parent / BOOT_FAILURE_FILE).write_text(message + "\n")
    except OSError as write_err:
        print(f"{program}: cannot record the boot failure: {write_err}", file=sys.stderr)
    return EXIT_CONFIG_ERROR
