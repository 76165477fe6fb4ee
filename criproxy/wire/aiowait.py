"""Waiting for an asyncio.Event, at most so long: the one way criproxy does it.

Not asyncio.wait_for: on Python 3.11 it runs the wait in a task of its own, and
when a cancel reaches the caller just as that task finishes (the event set in
the same turn of the loop), wait_for returns the result and the cancel is lost.
A loop that was meant to stop then runs on, and whoever awaits it (a shutdown)
waits forever (commit 4aef7c4: WorkerLink's probe loop did exactly that).

Here the wait stays in the caller's task and a timer interrupts it
(asyncio.timeout, which counts cancels: only its own becomes a timeout, any other
passes through). Setting the event from a timer instead, as the probe loop did,
is right only for an event nobody else waits on; a future raced against the
event would need a task to wait on the event, the cost wait_for has.
"""
from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """True once `event` is set, False when `timeout` seconds (None: no limit) ran
    out first. A cancel always propagates, whenever it comes."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()  # set in the turn the timer fired: it was in time
    return True
