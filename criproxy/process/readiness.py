"""Telling systemd that criproxy serves, and that it still does (sd_notify(3)).

The unit is Type=notify with NotifyAccess=all: `systemctl start` returns, and
units ordered After=criproxy.service (kubelet) start, only once the front has
sent READY=1 — after its socket is listening and every worker has reported
(or -startWait ran out), so kubelet's first call is answered, not refused.

With WatchdogSec=, the front pings systemd only after its own gRPC server has
answered a health check over a fresh connection to the listen socket: a front
that is alive but no longer answers stops the pings and systemd restarts
criproxy. Runtimes are not part of the check (a runtime that is down is
answered for, not a reason to restart criproxy).

The protocol is one datagram to $NOTIFY_SOCKET; no libsystemd needed. Outside
systemd (no NOTIFY_SOCKET) every function here does nothing.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Awaitable, Callable, Iterable

log = logging.getLogger("criproxy.readiness")


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1\\nSTATUS=...") to systemd; False if not under it."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as err:
            log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], err)
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half systemd's WatchdogSec=), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 2e6


async def announce_ready(settled: Iterable[Awaitable[None]], status: Callable[[], str]) -> None:
    """READY=1 once every runtime's first start settled (each wait ends by -startWait)."""
    await asyncio.gather(*settled)
    notify(f"READY=1\nSTATUS={status()}")


async def watchdog_forever(probe: Callable[[float], Awaitable[None]], interval: float) -> None:
    """Ping systemd after each probe that succeeds; say why when one fails."""
    failing = False
    while True:
        try:
            await probe(interval / 2)
            notify("WATCHDOG=1")
            if failing:
                log.info("watchdog: the front answers its own health check again")
            failing = False
        except Exception as err:  # noqa: BLE001 - any failure means no ping
            if not failing:
                log.error("watchdog: the front does not answer its own health check "
                          "(%s); systemd restarts criproxy if this lasts", err)
            failing = True
        await asyncio.sleep(interval)
