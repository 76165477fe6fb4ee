"""The Prometheus exposition formats: text 0.0.4, or OpenMetrics 1.0 when the
scraper asks for it.

Written here, without prometheus_client: that library, with the http.server,
wsgiref, email and urllib modules it loads, was 3 MB of the front's memory for
a few lines of text (issue 26). The output is the same, line for line, as
prometheus_client 0.26 wrote it.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable


class Family:
    """One metric family, as a scrape shows it: (suffix, labels, value) samples."""

    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = []

    def add(self, labels: Iterable[tuple[str, str]], value: float, suffix: str = "") -> None:
        self.samples.append((suffix, tuple(labels), value))


def counter(name: str, help_text: str) -> Family:
    return Family(name, "counter", help_text)


def gauge(name: str, help_text: str) -> Family:
    return Family(name, "gauge", help_text)


def go_float(value: float) -> str:
    """A number as Prometheus (Go) writes it: +Inf, NaN, 1.0, 1e+07."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape(text: str, quote: bool = True) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r'\"') if quote else text


def _sample_lines(family: Family, out: list[str]) -> None:
    for suffix, labels, value in family.samples:
        name = family.name + suffix
        if labels:
            name += "{" + ",".join(f'{key}="{_escape(val)}"'
                                   for key, val in sorted(labels)) + "}"
        out.append(f"{name} {go_float(value)}\n")


def text_format(families: Iterable[Family]) -> bytes:
    """Prometheus text format 0.0.4 (a counter's family is named NAME_total)."""
    out: list[str] = []
    for family in families:
        shown = family.name + ("_total" if family.kind == "counter" else "")
        out.append(f"# HELP {shown} {_escape(family.help, quote=False)}\n")
        out.append(f"# TYPE {shown} {family.kind}\n")
        _sample_lines(family, out)
    return "".join(out).encode()


def openmetrics_format(families: Iterable[Family]) -> bytes:
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape(family.help)}\n")
        out.append(f"# TYPE {family.name} {family.kind}\n")
        _sample_lines(family, out)
    out.append("# EOF\n")
    return "".join(out).encode()


TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"


def choose_format(accept: str) -> tuple[Callable[[Iterable[Family]], bytes], str]:
    """OpenMetrics when the scraper accepts it (Prometheus does), else the text format."""
    for accepted in accept.split(","):
        if accepted.split(";")[0].strip() == "application/openmetrics-text":
            return openmetrics_format, OPENMETRICS_TYPE
    return text_format, TEXT_TYPE

