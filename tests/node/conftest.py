"""The node layer's fixtures: a machine booted with Debian's systemd as PID 1
(tests/node/nspawn.py), the package built once per run, and fake runtimes on the
host whose sockets the machine sees. Every test of a machine needs root: `share`,
which each of them takes, fails without it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.node import nspawn
from tests.node.systemd_node import FAKES_INSIDE, SHARE
from tests.support.fakeruntime import FakeRuntime, start_fake
from tests.support.harness import REPO, short_dir


@pytest.fixture(scope="session")
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/node/test_systemd_*.py need root (systemd-nspawn, cgroups, dpkg in "
                    "the container); CI runs as root")


@pytest.fixture(scope="session")
def share(as_root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bound read-only at /share in every machine: the package, a newer build of it
    (newer.deb) and the kubelet stand-in."""
    out = tmp_path_factory.mktemp("share")
    nspawn.build_package(out)
    shutil.copy(REPO / "tests" / "node" / "kubelet_standin.py", out)
    return out


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeRuntime]]:
    """Two fake runtimes on the host, `primary` and `alt`, in one directory."""
    base = short_dir("nsf-")
    started: dict[str, FakeRuntime] = {}
    try:
        for name in ("primary", "alt"):
            started[name] = start_fake(base, name)
        yield started
    finally:
        for fake in started.values():
            fake.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node(share: Path, fakes: dict[str, FakeRuntime],
         request: pytest.FixtureRequest) -> Iterator[nspawn.Machine]:
    """A freshly booted machine with the package and the fakes' sockets at hand."""
    fakes_dir = fakes["primary"].socket.parent
    with nspawn.booted(request.node.name[5:30], binds=[f"{fakes_dir}:{FAKES_INSIDE}"],
                       binds_ro=[f"{share}:{SHARE}"]) as machine:
        yield machine
