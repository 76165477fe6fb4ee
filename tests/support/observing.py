"""Reading a running criproxy from outside, as an operator would: its /metrics
endpoint (TCP or unix socket), the address it published in status.json, and its CLI."""
from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import REPO, Proxy


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def wait_until(check: Callable[[], object], timeout: float = 15.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what or check}")
        time.sleep(0.05)


def metrics_address(proxy: Proxy) -> str:
    def bound() -> str:
        try:
            return proxy.status().get("metrics") or ""
        except (OSError, ValueError):
            return ""
    return str(wait_until(bound, what="the metrics endpoint in status.json"))


def scrape(proxy: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the front's /metrics, keyed by (name, sorted labels)."""
    address = metrics_address(proxy)
    if address.startswith("unix:"):
        connection: http.client.HTTPConnection = _UnixHTTPConnection(address[len("unix:"):])
    else:
        host, _, port = address.rpartition(":")
        connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        connection.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "criproxy", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
