"""An answer over -maxAnswerBytes: how the worker says it, and how the front knows it.

The worker's gRPC channel refuses such an answer (or stream item) itself, at its
length prefix, before it takes the memory, with RESOURCE_EXHAUSTED: the code of
a caller that asked too much. The runtime is at fault, not kubelet, so the
worker fails the call with INTERNAL, as the front does any answer it cannot
take (front/callerrors.py), in these words; the error crosses the hop as
(code, message) like any other, and the front counts it among the runtime's bad
answers by them (a runtime that wrote them itself only blames itself).
"""
from __future__ import annotations

import re

# grpc's own words for an answer over the channel's receive limit. A runtime's
# server refusing kubelet's request says "SERVER:" (or is not grpc core at all).
_REFUSED = re.compile(r"CLIENT: Received message larger than max \((\d+) vs\. (\d+)\)")
_OVER = ", over -maxAnswerBytes ("


def refused_size(details: str, limit: int) -> int | None:
    """The size of the answer the channel refused against `limit`, from grpc's words;
    None when these are not them."""
    found = _REFUSED.search(details)
    if found is None or int(found.group(2)) != limit:
        return None
    return int(found.group(1))


def too_big(label: str, method_path: str, size: int, limit: int) -> str:
    """The error message: which runtime, which method, how big, and the limit."""
    method = method_path.rsplit("/", 1)[-1]
    return f"runtime {label} answered {method} with {size} bytes{_OVER}{limit} bytes)"


def is_too_big(label: str, message: str) -> bool:
    return message.startswith(f"runtime {label} answered ") and _OVER in message
