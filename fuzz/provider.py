"""A FuzzedDataProvider in plain Python: the same input gives the same choices
with or without atheris, so a stored input replays exactly in `make test`.

Every read takes bytes from the front of the input; an exhausted input reads
as zeros (so every input, even empty, is a complete one).
"""
from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


class Provider:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int_in(self, low: int, high: int) -> int:
        """An int in [low, high], from as few bytes as the range needs."""
        span = high - low
        if span <= 0:
            return low
        value, width = 0, 0
        while span >> (8 * width):
            value = value << 8 | self.byte()
            width += 1
        return low + value % (span + 1)

    def bool(self) -> bool:
        return bool(self.byte() & 1)

    def chance(self, one_in: int) -> bool:
        return self.int_in(0, one_in - 1) == 0

    def pick(self, choices: Sequence[T]) -> T:
        return choices[self.int_in(0, len(choices) - 1)]

    def take(self, count: int) -> bytes:
        count = max(0, min(count, self.remaining()))
        self.pos += count
        return self.data[self.pos - count:self.pos]

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def text(self, max_length: int = 40) -> str:
        """A string of up to `max_length` characters: ASCII mostly, any code point
        (no lone surrogates: protobuf refuses them before the wire) now and then."""
        length = self.int_in(0, max_length)
        raw = self.take(length)
        if raw[:1] == b"\xff":
            return raw[1:].decode("utf-8", errors="replace")
        if raw[:1] == b"\xfe":
            return "".join(chr(b * 0x1F1 % 0x10FFFF) for b in raw[1:]
                           if not 0xD800 <= b * 0x1F1 % 0x10FFFF < 0xE000)
        return raw.decode("latin-1")
