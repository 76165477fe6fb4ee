"""Three fake runtimes behind a real criproxy (supervisord, front, workers): the
process layer's usual setup, as a fixture (tests/process/conftest.py) or by hand."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.support.fakeruntime import FakeRuntime, start_fake
from tests.support.harness import Proxy, short_dir, start_proxy

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
