"""wait_event (criproxy/wire/aiowait.py): an event, at most so long, and a cancel is
never lost — the hazard of asyncio.wait_for on Python 3.11 (commit 4aef7c4)."""
from __future__ import annotations

import asyncio
import sys
from typing import Awaitable, Callable

import pytest

from criproxy.wire.aiowait import wait_event


async def _cancel_as_the_event_is_set(wait: Callable[[asyncio.Event], Awaitable]) -> str:
    """Cancel the waiter in the very turn of the loop that sets its event, as a
    worker lost while the front stops did; say how the wait ended."""
    event = asyncio.Event()
    waiter = asyncio.ensure_future(wait(event))
    await asyncio.sleep(0)  # the waiter waits now
    event.set()
    waiter.cancel()
    try:
        await waiter
    except asyncio.CancelledError:
        return "cancelled"
    return "returned"


async def _cancel_as_the_timer_fires() -> str:
    loop = asyncio.get_running_loop()
    # Due just before wait_event's own timer: the loop's clock ticks by the
    # millisecond, so both almost always fire in the same turn.
    loop.call_at(loop.time() + 0.01, lambda: waiter.cancel())
    waiter = asyncio.ensure_future(wait_event(asyncio.Event(), 0.01))
    try:
        await waiter
    except asyncio.CancelledError:
        return "cancelled"
    return "returned"


def test_a_cancel_as_the_event_is_set_is_not_swallowed() -> None:
    assert asyncio.run(_cancel_as_the_event_is_set(lambda e: wait_event(e, 30))) == "cancelled"


def test_a_cancel_as_the_timer_fires_is_not_swallowed() -> None:
    for _ in range(20):
        assert asyncio.run(_cancel_as_the_timer_fires()) == "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for is built on timeout since 3.12")
def test_the_same_cancel_is_swallowed_by_wait_for_on_3_11() -> None:
    """The hazard itself, so that the test above is known to reproduce it."""
    result = asyncio.run(_cancel_as_the_event_is_set(
        lambda e: asyncio.wait_for(e.wait(), 30)))
    assert result == "returned"


def test_true_when_the_event_is_set_in_time() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, event.set)
        woken = await wait_event(event, 30)
        return woken, await wait_event(event, 0)  # set already: no wait at all
    assert asyncio.run(scenario()) == (True, True)


def test_false_when_the_time_runs_out() -> None:
    async def scenario() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        woken = await wait_event(asyncio.Event(), 0.05)
        return woken, loop.time() - started
    woken, waited = asyncio.run(scenario())
    assert not woken
    assert waited >= 0.04  # the loop may run a timer a clock tick early


def test_no_timeout_waits_for_the_event() -> None:
    async def scenario() -> bool:
        event = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, event.set)
        return await wait_event(event, None)
    assert asyncio.run(scenario())
