"""A fake in-memory CRI runtime (runtime.v1) that journals every call it receives.

This module is the process: the gRPC server, its journal, failures and delays,
and the test-side handle (start_fake). The runtime's world is tests/support/fakestate.py.

It runs as its own process on a unix socket, so tests can SIGSTOP/SIGKILL it
exactly like a real container runtime:

    python tests/support/fakeruntime.py --socket PATH --journal PATH [--name NAME]
        [--url-base URL] [--fail METHOD=CODE:message ...] [--delay METHOD=SECONDS ...]

Importing the module has no side effects; tests use start_fake() and read_journal().
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1alpha2 import api_pb2 as cri_v1alpha2
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

try:
    from tests.support import fakeknobs
    from tests.support.fakestate import CriError, FakeContainer, RuntimeState, sha256_hex
except ImportError:  # run as a script: tests/support/ is on sys.path
    import fakeknobs  # type: ignore[no-redef]
    from fakestate import CriError, FakeContainer, RuntimeState, sha256_hex  # type: ignore[no-redef]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
READY_MESSAGE = "fakeruntime ready"
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class CriMethod:
    name: str
    request_type: type[Message]
    streaming: bool


CRI_VERSIONS = {"v1": cri, "v1alpha2": cri_v1alpha2}


def _cri_methods(version: str) -> dict[str, CriMethod]:
    """Map every gRPC path of one CRI version to its short name and request type.

    v1alpha2 messages are a wire-compatible subset of v1's, so one in-memory
    runtime (speaking v1 messages) serves both versions' paths.
    """
    methods = {}
    for service in CRI_VERSIONS[version].DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            methods[f"/{service.full_name}/{method.name}"] = CriMethod(
                method.name, getattr(cri, method.input_type.name), method.server_streaming
            )
    return methods


CRI_METHODS = _cri_methods("v1")
CRI_METHOD_NAMES = frozenset(method.name for method in CRI_METHODS.values())


class Journal:
    """Append-only JSON-lines record of every call, flushed per line so it survives SIGKILL."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", encoding="utf-8")

    def record(self, method: str, request: Message | None, raw: bytes, metadata: Iterable[tuple[str, Any]],
               path: str = "") -> None:
        entry = {
            "method": method,
            "path": path,
            "request": None
            if request is None
            else json_format.MessageToDict(request, preserving_proto_field_name=True),
            "raw_b64": base64.b64encode(raw).decode("ascii"),
            "time": time.time(),
            # Binary (-bin) metadata is dropped: it is rarely interesting and not JSON.
            "metadata": {key: value for key, value in metadata or () if isinstance(value, str)},
        }
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_journal(path: str | Path) -> list[dict]:
    """Return the journal entries written so far (missing file: none)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    # A process killed mid-write can leave a partial last line; it has no newline yet.
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line]


class CriHandler(grpc.GenericRpcHandler):
    """Serve CRI with raw-bytes handlers, so the journal sees requests exactly as sent."""

    def __init__(
        self,
        state: RuntimeState,
        journal: Journal,
        failures: dict[str, tuple[grpc.StatusCode, str]],
        delays: dict[str, float],
        methods: dict[str, CriMethod],
        control: fakeknobs.Control | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.methods = methods
        self.control = control or fakeknobs.Control(None)
        self.state_file = state_file
        self.state = state
        self.journal = journal
        self.failures = failures
        self.delays = delays

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = handler_call_details.method
        method = self.methods.get(path)
        if method is None:
            return grpc.unary_unary_rpc_method_handler(partial(self._unknown, path))
        if method.streaming:
            return grpc.unary_stream_rpc_method_handler(partial(self._stream, method, path))
        return grpc.unary_unary_rpc_method_handler(partial(self._unary, method, path))

    async def _admit(self, method: CriMethod, path: str, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        """Journal the call, then apply the configured delay and failure."""
        try:
            request = method.request_type.FromString(raw)
        except DecodeError:
            request = None
        self.journal.record(method.name, request, raw, context.invocation_metadata(), path)
        if request is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse {method.name} request")
        delay = self.delays.get(method.name, 0.0) + self.control.delay(method.name)
        if delay:
            await asyncio.sleep(delay)
        failure = self.failures.get(method.name) or self.control.failure(method.name)
        if failure is not None:
            await context.abort(*failure)
        return request

    async def _unary(self, method: CriMethod, path: str, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = await self._admit(method, path, raw, context)
        garbage = self.control.garbage(method.name)
        if garbage is not None:
            return garbage
        try:
            response = getattr(self.state, method.name)(request)
        except CriError as error:
            await context.abort(error.code, error.message)
        if self.state_file is not None:
            fakeknobs.save_state(self.state_file, self.state.sandboxes, self.state.containers)
        return response.SerializeToString() + self.control.lie(method.name)

    async def _stream(self, method: CriMethod, path: str, raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await self._admit(method, path, raw, context)
        async for event in self.state.events():
            yield self.control.garbage(method.name) or \
                event.SerializeToString() + self.control.lie(method.name)

    async def _unknown(self, path: str, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Journaled too, so tests can see e.g. v1alpha2 calls that reached the runtime.
        self.journal.record(path, None, raw, context.invocation_metadata(), path)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")


def _method_name(text: str) -> str:
    if text not in CRI_METHOD_NAMES:
        raise argparse.ArgumentTypeError(f"unknown CRI method {text!r}")
    return text


def _status_code(text: str) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if text.upper() == code.name or text == str(code.value[0]):
            return code
    raise argparse.ArgumentTypeError(f"unknown gRPC status code {text!r}")


def _parse_failure(text: str) -> tuple[str, tuple[grpc.StatusCode, str]]:
    method, _, rest = text.partition("=")
    code, _, message = rest.partition(":")
    return _method_name(method), (_status_code(code), message)


def _parse_delay(text: str) -> tuple[str, float]:
    method, _, seconds = text.partition("=")
    try:
        return _method_name(method), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad delay {text!r}, want METHOD=SECONDS") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fake in-memory CRI runtime for tests.")
    parser.add_argument("--socket", required=True, type=Path, help="unix socket path to serve on")
    parser.add_argument("--journal", required=True, type=Path, help="JSON-lines file recording every call")
    parser.add_argument("--name", default="fake", help="runtime name, embedded in ids")
    parser.add_argument("--url-base", default="", help="prefix of Exec/Attach/PortForward urls")
    parser.add_argument(
        "--fail", action="append", default=[], type=_parse_failure, metavar="METHOD=CODE:message",
        help="make METHOD always fail with this gRPC status",
    )
    parser.add_argument(
        "--delay", action="append", default=[], type=_parse_delay, metavar="METHOD=SECONDS",
        help="sleep before answering METHOD",
    )
    parser.add_argument("--state", type=Path, help="keep sandboxes and containers in this file")
    parser.add_argument("--control", type=Path, help="JSON file of delays and failures, read on every call")
    parser.add_argument(
        "--cri-versions", default="v1", type=_cri_versions, metavar="V[,V]",
        help="CRI versions to serve: v1, v1alpha2 or both (v1,v1alpha2)",
    )
    return parser.parse_args(argv)


def _cri_versions(text: str) -> dict[str, CriMethod]:
    methods: dict[str, CriMethod] = {}
    for version in text.split(","):
        if version not in CRI_VERSIONS:
            raise argparse.ArgumentTypeError(f"unknown CRI version {version!r}")
        methods.update(_cri_methods(version))
    return methods


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT, then stop and remove the socket."""
    args.socket.unlink(missing_ok=True)  # a SIGKILLed predecessor leaves its socket behind
    journal = Journal(args.journal)
    state = RuntimeState(args.name, args.url_base)
    if args.state is not None:
        state.sandboxes, state.containers = fakeknobs.load_state(args.state, FakeContainer)
    handler = CriHandler(state, journal, dict(args.fail), dict(args.delay), args.cri_versions,
                         fakeknobs.Control(args.control), args.state)
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix://{args.socket}")
    # Handlers go in before serving, so an early SIGTERM still cleans up the socket.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    print(f"{READY_MESSAGE}: {args.name} serving on {args.socket}", file=sys.stderr, flush=True)
    await stop.wait()

    # No grace: open event streams would otherwise hold shutdown up.
    await server.stop(grace=None)
    args.socket.unlink(missing_ok=True)
    journal.close()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


# --- test-side helpers ------------------------------------------------------


@dataclass
class FakeRuntime:
    """Handle on a fake runtime process started by start_fake()."""

    name: str
    socket: Path
    journal: Path
    log: Path
    proc: subprocess.Popen

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def entries(self, method: str | None = None) -> list[dict]:
        """Journal entries so far, optionally only those of one method."""
        return [e for e in read_journal(self.journal) if method is None or e["method"] == method]

    def stop(self, timeout: float = 5.0) -> int:
        """Terminate the process (even if SIGSTOPped) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            # A stopped process only acts on SIGTERM once continued.
            self.proc.send_signal(signal.SIGCONT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _socket_path(tmp_path: Path, name: str) -> Path:
    """Keep the socket in tmp_path unless that path is too long for a unix socket."""
    socket = tmp_path / f"{name}.sock"
    if len(str(socket)) <= MAX_SOCKET_PATH:
        return socket
    # Deterministic, so restarting the same fake reuses the same socket.
    short_dir = Path(tempfile.gettempdir()) / f"fakecri-{sha256_hex(str(tmp_path))[:12]}"
    short_dir.mkdir(exist_ok=True)
    return short_dir / f"{name}.sock"


def _wait_ready(fake: FakeRuntime, log_offset: int, deadline: float) -> None:
    # Watch for the fake's ready line rather than probing: a probe RPC would land
    # in the journal, and a connectivity probe costs 0.2 s on channel close.
    while READY_MESSAGE.encode() not in fake.log.read_bytes()[log_offset:]:
        _check_alive(fake)
        if time.monotonic() > deadline:
            raise TimeoutError(f"fake runtime {fake.name} is not serving on {fake.socket}")
        time.sleep(0.01)


def _check_alive(fake: FakeRuntime) -> None:
    if fake.proc.poll() is not None:
        raise RuntimeError(f"fake runtime {fake.name} exited {fake.proc.returncode}:\n{fake.log.read_text()}")


def start_fake(tmp_path: Path, name: str = "fake", *extra_args: str, timeout: float = 10.0) -> FakeRuntime:
    """Start a fake runtime process and return once it is serving.

    Socket, journal (<name>.journal.jsonl) and log (<name>.log) live in tmp_path,
    so calling this again with the same name restarts the "same" runtime.
    """
    socket = _socket_path(tmp_path, name)
    journal = tmp_path / f"{name}.journal.jsonl"
    log_path = tmp_path / f"{name}.log"
    command = [
        sys.executable, str(Path(__file__).resolve()),
        "--socket", str(socket),
        "--journal", str(journal),
        "--name", name,
        *extra_args,
    ]
    with open(log_path, "ab") as log:
        log_offset = log.tell()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    fake = FakeRuntime(name, socket, journal, log_path, proc)
    try:
        _wait_ready(fake, log_offset, time.monotonic() + timeout)
    except BaseException:
        fake.stop()
        raise
    return fake


if __name__ == "__main__":
    main()
