"""A real Prometheus (Debian's package) for tests: installed when missing, run
on loopback with its own storage, asked through its HTTP API.

Also reads the metric names a PromQL expression uses, so tests can check that
the shipped rules and dashboard use only series criproxy exports.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import runtimes_script

BINARIES = ("prometheus", "promtool")
START_TIMEOUT = 60.0


def ensure_prometheus() -> None:
    """apt-get install Debian's prometheus when its binaries are missing (root only).

    Without root (and without the package) there is nothing to test with: skip.
    As root, as in CI, the package is always installed, so the tests always run.
    """
    if all(shutil.which(binary) for binary in BINARIES):
        return
    if os.geteuid() != 0:
        pytest.skip("needs promtool and prometheus (Debian's prometheus package); "
                    "run as root to have the test install it")
    runtimes_script().apt_install(["prometheus"])
    missing = [binary for binary in BINARIES if not shutil.which(binary)]
    assert not missing, f"the prometheus package installed no {missing}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Prometheus:
    """A Prometheus process this test started (ended by its pid)."""

    proc: subprocess.Popen
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its `data`, or an AssertionError naming the error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as err:
            answer = json.load(err)
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's samples."""
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query giving one sample, None if it gives none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: more than one sample: {result}"
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict]:
        """Active (pending or firing) alerts named `name`."""
        return [alert for alert in self.api("alerts")["alerts"]
                if alert["labels"]["alertname"] == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _config(targets: list[str], rules: Path) -> str:
    # JSON is YAML: no YAML library needed. Short intervals keep the test short;
    # a scrape may take up to 2 s on a busy machine (a failed one would make
    # every series stale and reset pending alerts).
    return json.dumps({
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "criproxy",
                            "static_configs": [{"targets": targets}]}],
    })


def start_prometheus(workdir: Path, targets: list[str], rules: Path) -> Prometheus:
    """Start Prometheus scraping `targets` as job `criproxy`; return once it is ready."""
    config = workdir / "prometheus.yml"
    config.write_text(_config(targets, rules))
    for _ in range(3):  # another process may take the free port first
        port = _free_port()
        log_path = workdir / "prometheus.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        prometheus = Prometheus(proc, port, log_path)
        if _wait_ready(prometheus):
            return prometheus
        prometheus.stop()
        if "address already in use" not in prometheus.log():
            break
    raise AssertionError(f"Prometheus did not start:\n{prometheus.log()[-4000:]}")


def _wait_ready(prometheus: Prometheus) -> bool:
    url = f"http://127.0.0.1:{prometheus.port}/-/ready"
    deadline = time.monotonic() + START_TIMEOUT
    while prometheus.proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


# --- metric names in PromQL ------------------------------------------------------

# Words of PromQL that are neither functions (followed by "(") nor metric names.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana's label_values()) reads."""
    expr = re.sub(r"^\s*label_values\((.*),\s*\w+\)\s*$", r"\1", expr, flags=re.S)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)            # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)           # ranges
    expr = _GROUPING.sub(" ", expr)
    names = set()
    for word in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", expr):
        if expr[word.end():].lstrip().startswith("("):
            continue  # a function or aggregation
        if word.group().lower() not in _KEYWORDS:
            names.add(word.group())
    return names
