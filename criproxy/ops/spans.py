"""Whether a process makes spans of its own (-otlpEndpoint): `load_tracer`.

The front and each worker call `load_tracer` once at start. With spans off it
returns None and criproxy/ops/tracing.py, with the OpenTelemetry SDK, is never
imported; the trace context still passes on (criproxy/wire/tracecontext.py).
Kept apart from tracing.py so that asking costs nothing when the answer is no.
"""
from __future__ import annotations

from typing import Optional

from criproxy.wire.tracecontext import Tracer


def load_tracer(endpoint: str, process: str, runtime: str = "") -> Optional[Tracer]:
    """A Tracer exporting to `endpoint`, or None when spans are off ("")."""
    if not endpoint:
        return None
    # Imported only now: the OpenTelemetry SDK and exporter would cost every
    # process memory and start-up time for nothing when spans are off.
    from criproxy.ops.tracing import otlp_tracer
    return otlp_tracer(endpoint, process, runtime)
