"""What criproxy's supervisord plugins share: they act on supervisord's events.

supervisord loads a plugin through its rpcinterface factory hook, once per
start and again on every reload; each load's plugin replaces the last one, so
that no event is handled twice.
"""
from __future__ import annotations

from typing import Any, Callable

from supervisor import events

_installed: dict[str, "EventPlugin"] = {}


class EventPlugin:
    """Subscribes its (event class, callback) pairs while it is installed."""

    def __init__(self, subscriptions: list[tuple[type, Callable[[Any], None]]]) -> None:
        self._subscriptions = subscriptions

    def needs_tick(self) -> bool:
        """Whether it waits for a Tick5Event to act (supervisord then keeps its
        one-second poll; see wakeup.py). A plugin that acts on ticks says when."""
        return any(kind is events.Tick5Event for kind, _ in self._subscriptions)

    def _subscribe(self) -> None:
        for kind, callback in self._subscriptions:
            events.subscribe(kind, callback)

    def _unsubscribe(self) -> None:
        # A reload (SIGHUP) clears every subscription before it loads plugins again.
        for kind, callback in self._subscriptions:
            if (kind, callback) in events.callbacks:
                events.unsubscribe(kind, callback)


def installed() -> list["EventPlugin"]:
    return list(_installed.values())


def install(name: str, plugin: EventPlugin) -> EventPlugin:
    """Make `plugin` the one listening under `name`; the one before stops."""
    previous = _installed.pop(name, None)
    if previous is not None:
        previous._unsubscribe()
    _installed[name] = plugin
    plugin._subscribe()
    return plugin
