"""Runtimes too slow for -listBudget: answered for at once, asked again aside.

A hung runtime (stopped, deadlocked) takes calls and never answers them. The
first List that waits -listBudget for it finds that out; from then on its part
of every List is its last answer, at once, so that no relist waits on it again
(nor the Lists kubelet makes for the pods on other runtimes, such as the pod of
a runtime that runs in a pod: a runtime's own pod never waits on it). Meanwhile
one List at a time is sent to it aside, with a longer deadline; its answer
makes it a runtime like the others again.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger("criproxy.front")

# How long a List asked aside may take before the next List asks again.
ASK_AGAIN_TIMEOUT = 30.0


class SlowLists:
    def __init__(self) -> None:
        self._asking: dict[str, asyncio.Task | None] = {}  # slow runtime -> List asked aside

    def is_slow(self, runtime: str) -> bool:
        return runtime in self._asking

    def missed(self, runtime: str, label: str, method: str, budget: float) -> None:
        if runtime not in self._asking:
            log.warning("runtime %s did not answer %s within %.3gs: its Lists are answered "
                        "from its last answer at once until it answers one again",
                        label, method, budget)
            self._asking[runtime] = None

    def ask_again(self, runtime: str, label: str, ask: Callable[[], Awaitable[bool]]) -> None:
        """Send one List aside, unless one is on its way; `ask` says if it answered."""
        if self._asking.get(runtime, False) is None:
            task = asyncio.get_running_loop().create_task(self._asked(runtime, label, ask))
            self._asking[runtime] = task

    async def _asked(self, runtime: str, label: str,
                     ask: Callable[[], Awaitable[bool]]) -> None:
        answered = await ask()
        if runtime not in self._asking:
            return
        if answered:
            del self._asking[runtime]
            log.info("runtime %s answers Lists again", label)
        else:
            self._asking[runtime] = None  # the next List asks again

    def forget(self, runtime: str) -> None:
        """The runtime left."""
        task = self._asking.pop(runtime, None)
        if task is not None:
            task.cancel()
