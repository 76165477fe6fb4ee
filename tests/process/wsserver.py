"""A loopback stand-in for a runtime's streaming server, for tests/support/wsexec.py.

It answers a websocket exec (`v4.channel.k8s.io`: channel 1 stdout, 3 the final
status) with `ran <path>` on stdout, so a test proves that a streaming URL
criproxy handed out leads here, and to the path the runtime meant.
"""
from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading

_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(payload: bytes, opcode: int = 2) -> bytes:
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        return head + bytes([len(payload)]) + payload
    return head + bytes([126]) + struct.pack(">H", len(payload)) + payload


def _accept_key(request: bytes) -> str:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            digest = hashlib.sha1(value.strip() + _WEBSOCKET_GUID).digest()
            return base64.b64encode(digest).decode()
    raise ValueError("no Sec-WebSocket-Key")


class StreamServer:
    """Serves websocket execs on 127.0.0.1:`port` until closed; `paths` were asked for."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.paths: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            with connection:
                self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        connection.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                return
            request += chunk
        path = request.split(b" ", 2)[1].decode()
        self.paths.append(path)
        connection.sendall(
            ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Accept: {_accept_key(request)}\r\n"
             "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n").encode()
            + _frame(b"\x01ran " + path.encode())
            + _frame(b'\x03{"status": "Success"}')
            + _frame(b"", opcode=8))
