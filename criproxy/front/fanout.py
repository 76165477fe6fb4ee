"""Lists asked of every runtime, merged into one answer (the FAN_OUT rule).

Each runtime gets part of the caller's time (-listBudget); one that cannot
answer, or answers what does not decode, is represented by its last answer
from the pod record, or left out (logged) when it has none.
"""
from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf.message import Message

from criproxy import logs
from criproxy.front.callerrors import BadAnswer
from criproxy.front.rewrite import owners
from criproxy.front.routing import Method
from criproxy.front.slowlists import ASK_AGAIN_TIMEOUT
from criproxy.front.workerlink import CallError, WorkerLink
from criproxy.ops import metrics
from criproxy.record import listfilter
from criproxy.record.podrecord import SANDBOXES

log = logging.getLogger("criproxy.front")

# Share of the caller's remaining time a fan-out spends waiting for runtimes.
_CALLER_SHARE = 0.8


class ListFanOut:
    """The Dispatcher's fan-out Lists: a mixin of Dispatcher (front/dispatch.py), whose
    links, record, owners, names, slow_lists, _call, _fit_request, _forward, _own_claims
    and _present it uses; it keeps the Lists it last showed in _shown_lists."""

    async def _fan_out(self, method: Method, request: Message, raw: bytes,
                       timeout: float | None) -> bytes:
        named = owners(request, self.names)
        if len(named) > 1:
            return b""  # a filter naming two runtimes' objects matches nothing
        if named:
            return await self._to_owner(named.pop(), method, request, raw, timeout)
        asked = list(self.links.items())  # runtimes may join or leave meanwhile
        sent = [self.record.sent(name) for name, _link in asked]
        results = await asyncio.gather(
            *(self._list_from(name, link, method, request, raw, timeout, seq)
              for (name, link), seq in zip(asked, sent)),
            return_exceptions=True)
        return self._merge(method, request, [name for name, _link in asked], results, sent)

    async def _list_from(self, runtime: str, link: WorkerLink, method: Method,
                         request: Message, raw: bytes, timeout: float | None,
                         sent_seq: int) -> bytes:
        """The runtime's answer within its budget; a runtime that missed it once is
        not waited for again (slowlists.py): its last answer stands in at once."""
        if self.slow_lists.is_slow(runtime):
            self.slow_lists.ask_again(runtime, link.label, lambda: self._ask_aside(
                runtime, method, request, raw, sent_seq))
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"runtime {link.label} did not answer a List within -listBudget; "
                            "it is asked again aside")
        budget = self._list_budget(link, timeout)
        try:
            return await self._call(runtime, method, raw, budget)
        except CallError as err:
            if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.slow_lists.missed(runtime, link.label, method.name, budget)
            raise

    async def _ask_aside(self, runtime: str, method: Method, request: Message, raw: bytes,
                         sent_seq: int) -> bool:
        """A List to a slow runtime no caller waits for; its answer feeds the record.
        False while it is still too slow; a runtime that fails at once instead is
        no longer slow (its link says why its calls fail)."""
        try:
            answer = await self._call(runtime, method, raw, ASK_AGAIN_TIMEOUT)
        except CallError as err:
            return err.code != grpc.StatusCode.DEADLINE_EXCEEDED
        if runtime in self.links:
            self._fresh_part(runtime, method, request, answer, sent_seq)
        return True

    def _list_budget(self, link: WorkerLink, timeout: float | None) -> float:
        """Wait for a runtime only part of the caller's time, so a slow one is
        represented by its last answer before the caller's deadline; a runtime
        still starting gets its -startWait on top."""
        budget = self.config.list_budget + link.start_wait_left()
        return min(timeout * _CALLER_SHARE, budget) if timeout else budget

    async def _to_owner(self, runtime: str, method: Method, request: Message, raw: bytes,
                        timeout: float | None) -> bytes:
        """A List whose filter names one runtime's object: that runtime's answer,
        within the same budget as a fan-out, or its last answer."""
        budget = self._list_budget(self.links[runtime], timeout)
        try:
            if self.slow_lists.is_slow(runtime):
                # As _forward would: the record filters by the runtime's own ids.
                self._fit_request(runtime, request, False)
                raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"runtime {self.links[runtime].label} did not answer a List "
                                "within -listBudget")
            return await self._forward(runtime, method, request, raw, budget, whole=True)
        except CallError as err:
            last = self._last_answer(runtime, method, request, err)
            if last is None:
                raise
            return last

    def _merge(self, method: Method, request: Message, asked: list[str], results: list,
               sent: list[int]) -> bytes:
        """Concatenate answers in -connect order (protobuf concatenation merges); a
        runtime that could not answer, or answered bytes that do not decode, is
        represented by its last answer."""
        parts, errors = [], []
        for name, result, sent_seq in zip(asked, results, sent):
            if isinstance(result, BaseException) and not isinstance(result, CallError):
                raise result
            if name not in self.links:
                continue  # it left while it was asked
            if not isinstance(result, CallError):
                result = self._fresh_part(name, method, request, result, sent_seq)
            if isinstance(result, CallError):
                last = self._last_answer(name, method, request, result)
                if last is None:
                    errors.append(result)
                else:
                    parts.append(last)
            else:
                parts.append(result)
        if not parts:
            raise errors[0]
        return b"".join(parts)

    def _fresh_part(self, runtime: str, method: Method, request: Message, answer: bytes,
                    sent_seq: int) -> bytes | BadAnswer:
        """A runtime's answer as its part of a merged List, or why it cannot be one."""
        complete = not listfilter.is_filtered(request)
        if complete:
            answer = self.record.as_before(runtime, method.name, answer)
        try:
            own = self._own_claims(runtime, method, answer, complete)
            shown = self._shown_part(runtime, method, own, complete)
        except BadAnswer as bad:
            return bad
        self.record.answered(runtime, method.name, request, own, sent_seq)
        if complete and method.name == SANDBOXES:
            self.owners.listed(runtime, own)
        return shown

    def _shown_part(self, runtime: str, method: Method, answer: bytes, complete: bool) -> bytes:
        """An unfiltered List answered as before is shown as before: not decoded,
        checked and, for a named runtime, prefixed and encoded again at each relist."""
        if not complete:
            return self._present(runtime, method, answer, whole=True)
        before = self._shown_lists.get((runtime, method.name))
        if before is not None and before[0] == answer:
            return before[1]
        shown = self._present(runtime, method, answer, whole=True)
        self._shown_lists[(runtime, method.name)] = (answer, shown)
        return shown

    def _last_answer(self, runtime: str, method: Method, request: Message,
                     err: CallError) -> bytes | None:
        last = self.record.last_answer(runtime, method.name, request)
        if last is None:
            self._log_skipped(method, self.links[runtime], err)
            return None
        metrics.last_answer_served(self.links[runtime].label, method.name)
        return self._present(runtime, method, self._own_claims(runtime, method, last))

    def _log_skipped(self, method: Method, link: WorkerLink, err: CallError) -> None:
        metrics.runtime_skipped(link.label, method.name)
        if err.code == grpc.StatusCode.DEADLINE_EXCEEDED or logs.enabled(2):
            log.warning("%s: answering without runtime %s: %s", method.name, link.label, err)
