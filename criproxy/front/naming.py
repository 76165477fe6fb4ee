"""How objects of named runtimes are shown to kubelet.

Sandbox and container ids of runtime `alt` become `alt__<id>`, image names
become `alt/<image>`; digests (`sha256:<hex>`) stay as they are because they
name content, not a runtime's object. Primary objects are never touched.
"""
from __future__ import annotations

import functools
import re

from criproxy.settings import HandlerRoute

ID_SEPARATOR = "__"
IMAGE_SEPARATOR = "/"
PRIMARY = ""

_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")


# The same few image names recur in every List answer; the regex is the costly part.
@functools.lru_cache(maxsize=4096)
def is_digest(image: str) -> bool:
    return bool(_DIGEST_RE.match(image))


class Names:
    """Tells which runtime owns an id, an image or a RuntimeClass handler."""

    def __init__(self, runtime_names: list[str],
                 handlers: tuple[HandlerRoute, ...] = ()) -> None:
        self._named = frozenset(n for n in runtime_names if n)
        self._handlers = {route.handler: route for route in handlers}

    @property
    def handlers(self) -> list[HandlerRoute]:
        return list(self._handlers.values())

    def handler_route(self, handler: str) -> HandlerRoute | None:
        return self._handlers.get(handler) if handler else None

    def split_id(self, object_id: str) -> tuple[str, str]:
        """`alt__x` → ("alt", "x"); an id with no known prefix belongs to the primary."""
        name, sep, rest = object_id.partition(ID_SEPARATOR)
        if sep and name in self._named:
            return name, rest
        # A name may end with "_" (never hold "__"): `x_` shows id `abc` as `x___abc`,
        # whose first "__" comes one character early.
        if sep and rest.startswith("_") and name + "_" in self._named:
            return name + "_", rest[1:]
        return PRIMARY, object_id

    def prefix_owner(self, image: str) -> str | None:
        """The named runtime whose prefix `image` carries, if any."""
        name, sep, _rest = image.partition(IMAGE_SEPARATOR)
        return name if sep and name in self._named else None

    def is_plain_image(self, image: str) -> bool:
        """A name with no runtime prefix, and not a digest (which fits any runtime)."""
        return not is_digest(image) and self.prefix_owner(image) is None

    def split_image(self, image: str, handler: str = "") -> tuple[str | None, str]:
        """`alt/img` → ("alt", "img"); a digest → (None, digest): it fits any runtime.

        An image without a prefix belongs to the runtime of its ImageSpec's
        RuntimeClass handler when that is mapped, else to the primary.
        """
        if is_digest(image):
            return None, image
        name, sep, rest = image.partition(IMAGE_SEPARATOR)
        if sep and name in self._named:
            return name, rest
        route = self.handler_route(handler)
        return (route.runtime if route else PRIMARY), image


def prefix_id(runtime: str, object_id: str) -> str:
    if not runtime or not object_id:
        return object_id
    return runtime + ID_SEPARATOR + object_id


def prefix_image(runtime: str, image: str) -> str:
    if not runtime or not image or is_digest(image):
        return image
    return runtime + IMAGE_SEPARATOR + image
