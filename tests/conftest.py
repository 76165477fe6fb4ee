"""Shared fixtures: fake runtimes behind a real criproxy (supervisord, front, workers)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.fakeknobs import set_delays
from tests.fakeruntime import FakeRuntime, start_fake
from tests.harness import Proxy, short_dir, start_proxy

STREAM_URL = "http://127.0.0.1:11250"
ALT_URL_BASE = "http://127.0.0.1:10001"


@dataclass
class Cluster:
    """Three fake runtimes — primary, `alt`, `vm.cloud` — behind one proxy."""

    proxy: Proxy
    fakes: dict[str, FakeRuntime]
    base: Path


def start_cluster(*proxy_args: str) -> Cluster:
    base = short_dir("cpt-")
    fakes = {"primary": start_fake(base, "primary"),
             "alt": start_fake(base, "alt", "--url-base", ALT_URL_BASE),
             "vm.cloud": start_fake(base, "vm.cloud")}
    connect = (f"{fakes['primary'].socket},alt:{fakes['alt'].socket},"
               f"vm.cloud:unix://{fakes['vm.cloud'].socket}")
    proxy = start_proxy(connect, "-streamUrl", STREAM_URL, *proxy_args, workdir=base,
                        wait_for=list(fakes))
    return Cluster(proxy, fakes, base)


def stop_cluster(cluster: Cluster) -> None:
    cluster.proxy.stop()
    for fake in cluster.fakes.values():
        fake.stop()
    shutil.rmtree(cluster.base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Shared by a module's tests: use unique object names, read journals by offset."""
    started = start_cluster()
    yield started
    stop_cluster(started)


@pytest.fixture
def controlled_alt() -> Iterator[tuple[Cluster, Path]]:
    """primary and alt behind criproxy, alt's delays, failures and garbage answers
    set through its control file (tests/fakeknobs.py) while it runs."""
    base = short_dir("cpc-")
    control = base / "alt-control.json"
    set_delays(control, {})
    fakes = {"primary": start_fake(base, "primary"),
             "alt": start_fake(base, "alt", "--control", str(control))}
    proxy = start_proxy(f"{fakes['primary'].socket},alt:{fakes['alt'].socket}", workdir=base,
                        wait_for=list(fakes))
    cluster = Cluster(proxy, fakes, base)
    yield cluster, control
    stop_cluster(cluster)


@pytest.fixture
def private_cluster() -> Iterator[Cluster]:
    """A cluster of a test's own, for tests that kill, stop or restart processes."""
    started = start_cluster()
    yield started
    stop_cluster(started)
