"""The process layer's fixtures: fake runtimes behind a real criproxy (supervisord,
front, workers), started as processes over unix sockets."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.process.cluster import Cluster, start_cluster, stop_cluster
from tests.support.fakeknobs import set_delays
from tests.support.fakeruntime import start_fake
from tests.support.harness import short_dir, start_proxy


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Shared by a module's tests: use unique object names, read journals by offset."""
    started = start_cluster()
    yield started
    stop_cluster(started)


@pytest.fixture
def controlled_alt() -> Iterator[tuple[Cluster, Path]]:
    """primary and alt behind criproxy, alt's delays, failures and garbage answers
    set through its control file (tests/support/fakeknobs.py) while it runs."""
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
