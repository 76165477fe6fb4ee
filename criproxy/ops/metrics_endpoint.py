"""The HTTP endpoint serving the front's metrics.

Served from the front's event loop (no thread): `GET /metrics` (or `/`) on
`-metricsAddress`, `host:port` or `unix:/path`.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Callable

from criproxy.ops import metrics
from criproxy.ops.exposition import choose_format

log = logging.getLogger("criproxy.front")


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        verb, path, *_ = lines[0].split(" ") + ["", ""]
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        accept = next((v.strip() for k, v in headers.items() if k.lower() == "accept"), "")
        if verb not in ("GET", "HEAD"):
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path.split("?")[0] not in ("/", "/metrics"):
            status, ctype, body = "404 Not Found", "text/plain", b"see /metrics\n"
        else:
            encoder, ctype = choose_format(accept)
            status, body = "200 OK", encoder(metrics.collect())
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        if verb != "HEAD":
            writer.write(body)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            asyncio.TimeoutError, UnicodeError):
        pass  # a broken scrape; the scraper tries again
    finally:
        writer.close()


# Scrapes answered at once. Any local user may connect to a TCP endpoint: without
# a cap, idle connections would use up the front's file descriptors, and the front
# could accept neither kubelet nor its workers' reconnections. Extra ones are closed.
MAX_SCRAPES = 16
_scrapes = 0


async def _answer_bounded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global _scrapes
    if _scrapes >= MAX_SCRAPES:
        writer.close()
        return
    _scrapes += 1
    try:
        await _answer(reader, writer)
    finally:
        _scrapes -= 1


class Endpoint:
    """The metrics HTTP server; it keeps trying to bind until it succeeds."""

    RETRY = 10.0

    def __init__(self, address: str, socket_mode: int = 0o660, group_id: int = -1) -> None:
        self.address = address
        self.bound = ""  # host:port or unix:/path actually bound, for status.json
        self.error = ""
        self._mode = socket_mode
        self._gid = group_id
        self._server: asyncio.AbstractServer | None = None
        self._task: asyncio.Task | None = None
        # Called when `bound` or `error` changes (the front's status file shows them).
        self.on_change: Callable[[], None] | None = None

    def start(self) -> None:
        if self.address:
            self._task = asyncio.create_task(self._bind_forever())

    async def _bind_forever(self) -> None:
        while True:
            try:
                await self._bind()
                log.info("metrics served on http %s/metrics", self.bound)
                self._changed()
                return
            except OSError as err:
                if not self.error:
                    log.error("cannot serve metrics on %s: %s; retrying every %.0fs",
                              self.address, err, self.RETRY)
                if self.error != str(err):
                    self.error = str(err)
                    self._changed()
            await asyncio.sleep(self.RETRY)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _bind(self) -> None:
        if self.address.startswith("unix:"):
            path = Path(self.address[len("unix:"):])
            if path.is_symlink() or (path.exists() and not path.is_socket()):
                raise OSError(f"{path} exists and is not a socket; not removing it")
            path.unlink(missing_ok=True)
            self._server = await asyncio.start_unix_server(_answer_bounded, str(path))
            os.chmod(path, self._mode)
            if self._gid != -1:
                os.chown(path, -1, self._gid)
            self.bound = self.address
        else:
            host, _, port = self.address.rpartition(":")
            host = host.strip("[]")
            self._server = await asyncio.start_server(_answer_bounded, host, int(port))
            sockname = self._server.sockets[0].getsockname()
            shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
            self.bound = f"{shown}:{sockname[1]}"
        self.error = ""

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            if self.address.startswith("unix:"):
                Path(self.address[len("unix:"):]).unlink(missing_ok=True)
