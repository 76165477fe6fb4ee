"""A minimal websocket client for a CRI streaming URL (exec), loopback only.

The streaming server containerd runs (k8s.io/kubelet/pkg/cri/streaming) serves an exec URL
over SPDY or, on an `Upgrade: websocket` request, over websocket with the
`v4.channel.k8s.io` subprotocol: every binary message starts with its channel byte
(1 stdout, 2 stderr, 3 the final status as JSON). kubectl exec speaks the same to the
API server, which proxies it to this URL.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    status: dict

    @property
    def exit_code(self) -> int:
        if self.status.get("status") == "Success":
            return 0
        for cause in self.status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        raise ValueError(f"no exit code in {self.status}")


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        data += chunk
    return data


def _frames(sock: socket.socket, rest: bytes):
    """Yield (opcode, payload) of the server's (unmasked) frames until close or EOF."""
    buffered = [rest]

    def read(n: int) -> bytes:
        head = b"".join(buffered)
        if len(head) >= n:
            buffered[:] = [head[n:]]
            return head[:n]
        buffered[:] = [b""]
        return head + _read_exact(sock, n - len(head))

    while True:
        try:
            b0, b1 = read(2)
        except (ConnectionError, ValueError):
            return
        length = b1 & 0x7F
        if length == 126:
            length, = struct.unpack(">H", read(2))
        elif length == 127:
            length, = struct.unpack(">Q", read(8))
        mask = read(4) if b1 & 0x80 else b""
        payload = read(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        opcode = b0 & 0x0F
        if opcode == 8:
            return
        yield opcode, payload


def ws_exec(url: str, timeout: float = 15.0) -> ExecResult:
    """Run the exec a CRI Exec call prepared at `url`; its output and final status."""
    parsed = urlparse(url)
    if parsed.hostname != "127.0.0.1":
        raise ValueError(f"{url}: only loopback here")
    path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((parsed.hostname, parsed.port or 80), timeout=timeout) as sock:
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n"
                      "Origin: http://127.0.0.1\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"no upgrade answer from {url}: {head!r}")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status_line + b" ":
            raise ConnectionError(f"{url}: {status_line.decode(errors='replace')}")
        out = {1: b"", 2: b"", 3: b""}
        for opcode, payload in _frames(sock, rest):
            if opcode in (1, 2) and payload and payload[0] in out:
                out[payload[0]] += payload[1:]
    return ExecResult(out[1], out[2], json.loads(out[3]) if out[3] else {})
