"""Every runtime's event stream (GetContainerEvents) merged into one for kubelet.

A runtime whose stream ends is subscribed again; one that cannot stream
(UNIMPLEMENTED) ends the merged stream, so that kubelet relists instead of
missing its containers. A runtime joining or leaving ends it too: kubelet then
subscribes again, to every runtime there is.

A runtime that sends more than -eventBurst events at once, or more than
-eventRate a second beyond that, has its events cut: its own stream is cancelled
(logged) and subscribed again once its bucket is full again (-eventBurst /
-eventRate seconds, 10 s by default). Cancelled, not thinned: the front then
spends nothing on a flood, where dropping events one by one would still receive
each. The other runtimes' events flow on. What kubelet misses of that runtime
meanwhile its relist still finds (every second; every 5 minutes beside the
evented PLEG, which only this runtime's containers wait for). Ending the merged
stream instead would make everyone pay for one runtime: kubelet gives up on the
evented PLEG for good after five stream errors.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

import grpc

from criproxy.front.callerrors import BadAnswer, check_version, parse
from criproxy.front.ratelimit import TokenBucket
from criproxy.front.routing import Method
from criproxy.front.workerlink import CallError, WorkerLink

log = logging.getLogger("criproxy.front")

_RESUBSCRIBE_DELAY = 1.0
_EVENT_QUEUE = 1024


class EventStreams:
    """The Dispatcher's merged event streams: a mixin of Dispatcher (front/dispatch.py),
    whose links, _own_claims and _present it uses; it keeps the open streams in
    _merged_streams."""

    async def stream_merge(self, method: Method, raw: bytes) -> AsyncIterator[bytes]:
        """Every runtime's stream, merged; a runtime that drops out is re-subscribed."""
        parse(method.request, raw)
        merged: asyncio.Queue = asyncio.Queue(_EVENT_QUEUE)
        followers = [asyncio.create_task(self._follow(name, method, raw, merged))
                     for name in self.links]
        self._merged_streams.add(merged)
        try:
            while True:
                item = await merged.get()
                if isinstance(item, CallError):
                    raise item
                yield item
        finally:
            self._merged_streams.discard(merged)
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    async def _follow(self, runtime: str, method: Method, raw: bytes,
                      merged: asyncio.Queue) -> None:
        link = self.links[runtime]
        events = TokenBucket(self.config.event_rate, self.config.event_burst)
        while True:
            await link.wait_up()
            try:
                check_version(link, method)
                pause = await self._relay(runtime, link, method, raw, merged, events)
            except CallError as err:
                if err.code == grpc.StatusCode.UNIMPLEMENTED:
                    # A merged stream lacking this runtime's events would hide its
                    # containers: end it, so kubelet falls back to relisting.
                    _offer(merged, CallError(err.code, f"runtime {link.label}: {err.message}"))
                    return
                log.warning("%s: stream of runtime %s ended: %s; re-subscribing",
                            method.name, link.label, err)
                pause = _RESUBSCRIBE_DELAY
            if pause is None:
                return
            await asyncio.sleep(pause)

    async def _relay(self, runtime: str, link: WorkerLink, method: Method, raw: bytes,
                     merged: asyncio.Queue, events: TokenBucket) -> float | None:
        """One subscription's events into the merged stream while the runtime keeps
        within its bucket; the pause before subscribing again, None when the
        subscriber is gone. Leaving the loop closes the stream: the worker cancels it."""
        async with contextlib.aclosing(link.stream(method.path, raw)) as items:
            async for item in items:
                if not events.take():
                    return _cut(link, method, events)
                shown = self._shown_event(runtime, method, item)
                if shown is not None and not _offer(merged, shown):
                    log.warning("%s: subscriber too slow, dropping its stream", method.name)
                    return None
        return _RESUBSCRIBE_DELAY

    def _shown_event(self, runtime: str, method: Method, item: bytes) -> bytes | None:
        """An event as kubelet sees it; one that does not decode is dropped (and
        counted), not the runtime's stream with it."""
        try:
            own = self._own_claims(runtime, method, item)
            return None if own is None else self._present(runtime, method, own, whole=True)
        except BadAnswer as bad:
            log.warning("%s: dropping an event: %s", method.name, bad.message)
            return None

    def _end_merged_streams(self, why: str) -> None:
        """An event stream follows the runtimes there were when it began: end it, so
        kubelet subscribes again to every runtime (and relists meanwhile)."""
        for merged in self._merged_streams:
            _end(merged, CallError(grpc.StatusCode.UNAVAILABLE,
                                   f"{why}; subscribe again for its events"))


def _cut(link: WorkerLink, method: Method, events: TokenBucket) -> float:
    """A runtime over its event rate: how long its events are cut (logged once a cut,
    so at most once a second)."""
    pause = max(_RESUBSCRIBE_DELAY, events.time_to_full())
    log.warning("%s: runtime %s sent events faster than -eventRate %g/s beyond "
                "-eventBurst %d: its events are cut for %.0fs (kubelet's relist still sees "
                "its containers)", method.name, link.label, events.rate, events.burst, pause)
    return pause


def _end(merged: asyncio.Queue, error: CallError) -> None:
    """End a merged stream after the events queued so far (the oldest one dropped
    to make room, if it has to be)."""
    if merged.full():
        merged.get_nowait()
    merged.put_nowait(error)


def _offer(merged: asyncio.Queue, item: bytes | CallError) -> bool:
    """Queue an event; when the subscriber fell too far behind, end its stream."""
    try:
        merged.put_nowait(item)
        return True
    except asyncio.QueueFull:
        while not merged.empty():
            merged.get_nowait()
        merged.put_nowait(CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"event subscriber too slow: {_EVENT_QUEUE} events unread"))
        return False
