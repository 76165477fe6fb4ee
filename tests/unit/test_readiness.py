"""systemd's notify protocol when systemd asks for nothing: no notify socket, and the
watchdog's interval (with a socket and a real criproxy: tests/process/test_readiness.py)."""
from __future__ import annotations

from criproxy.process import readiness


def test_outside_systemd_nothing_is_sent(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert not readiness.notify("READY=1")
    assert readiness.watchdog_interval() is None


def test_the_watchdog_pings_at_half_the_interval(monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert readiness.watchdog_interval() == 15.0
