"""Every runtime's event stream (GetContainerEvents) merged into one for kubelet.

A runtime whose stream ends is subscribed again; one that cannot stream
(UNIMPLEMENTED) ends the merged stream, so that kubelet relists instead of
missing its containers. A runtime joining or leaving ends it too: kubelet then
subscribes again, to every runtime there is.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc

from criproxy.front.callerrors import BadAnswer, check_version, parse
from criproxy.front.routing import Method
from criproxy.front.workerlink import CallError

log = logging.getLogger("criproxy.front")

_RESUBSCRIBE_DELAY = 1.0
_EVENT_QUEUE = 1024


class EventStreams:
    """The Dispatcher's merged event streams: a mixin of Dispatcher (front/dispatch.py),
    whose links and _present it uses; it keeps the open streams in _merged_streams."""

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
        while True:
            await link.wait_up()
            try:
                check_version(link, method)
                async for item in link.stream(method.path, raw):
                    shown = self._shown_event(runtime, method, item)
                    if shown is not None and not _offer(merged, shown):
                        log.warning("%s: subscriber too slow, dropping its stream", method.name)
                        return
            except CallError as err:
                if err.code == grpc.StatusCode.UNIMPLEMENTED:
                    # A merged stream lacking this runtime's events would hide its
                    # containers: end it, so kubelet falls back to relisting.
                    _offer(merged, CallError(err.code, f"runtime {link.label}: {err.message}"))
                    return
                log.warning("%s: stream of runtime %s ended: %s; re-subscribing",
                            method.name, link.label, err)
            await asyncio.sleep(_RESUBSCRIBE_DELAY)

    def _shown_event(self, runtime: str, method: Method, item: bytes) -> bytes | None:
        """An event as kubelet sees it; one that does not decode is dropped (and
        counted), not the runtime's stream with it."""
        try:
            return self._present(runtime, method, item, whole=True)
        except BadAnswer as bad:
            log.warning("%s: dropping an event: %s", method.name, bad.message)
            return None

    def _end_merged_streams(self, why: str) -> None:
        """An event stream follows the runtimes there were when it began: end it, so
        kubelet subscribes again to every runtime (and relists meanwhile)."""
        for merged in self._merged_streams:
            _end(merged, CallError(grpc.StatusCode.UNAVAILABLE,
                                   f"{why}; subscribe again for its events"))


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
