"""A registered runtime that leaves leaves nothing behind (issue 30, item 5):
no metric series, no `criproxy status` row, no `criproxy doctor` line names
it; the other runtimes' series, and requests counted under several runtimes,
stay. Process-level: the real criproxy, a fake runtime registered in
-runtimesDir and made to leave after -leaveAfter.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import Cluster
from tests.process.registering import node, published, register, routed, status_text
from tests.process.routing_util import Kubelet, wait_until
from tests.support.harness import short_dir
from tests.support.observing import run_cli, sample, scrape

__all__ = ["node"]  # the fixture, imported to be used here

LEAVER = "vm.cloud"


@pytest.fixture
def proc() -> Iterator[Path]:
    """An empty /proc for doctor: no kubelet on this node to check."""
    path = short_dir("cpl-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def doctor_text(cluster: Cluster, proc: Path) -> str:
    result = run_cli("doctor", "-rundir", str(cluster.proxy.rundir), "--proc", str(proc),
                     "--kubelet-config", str(proc / "none.yaml"))
    return result.stdout + result.stderr


def naming(samples: dict, runtime: str) -> set[str]:
    """The names of the scraped series labelled with `runtime`."""
    return {name for name, labels in samples if ("runtime", runtime) in labels}


def test_a_runtime_that_left_has_no_series_status_row_or_doctor_line(
        node: Cluster, proc: Path) -> None:
    kubelet = Kubelet(node)
    register(node, LEAVER)
    pod = routed(kubelet, LEAVER)
    kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=5)
    kubelet.rt.Version(cri.VersionRequest(), timeout=5)
    kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)
    node.proxy.wait_state(LEAVER, "up")
    wait_until(lambda: LEAVER in node.proxy.status()["requests"], 10,
               f"{LEAVER}'s request rates in status")
    before = scrape(node.proxy)
    assert {"criproxy_requests_total", "criproxy_request_duration_seconds_count",
            "criproxy_runtime_up", "criproxy_runtime_state", "criproxy_worker_restarts_total",
            "criproxy_worker_pending_calls", "criproxy_runtime_bad_answers_total",
            "criproxy_fanout_skipped_total", "criproxy_list_stale_answers_total",
            "criproxy_runtime_foreign_claims_total"} <= naming(before, LEAVER)
    assert LEAVER in status_text(node.proxy) and LEAVER in doctor_text(node, proc)

    (node.proxy.runtimes_dir / f"{LEAVER}.sock").unlink()
    wait_until(lambda: not published(node.proxy)["runtimes"], 15, f"{LEAVER} to leave")
    wait_until(lambda: all(r["label"] != LEAVER for r in node.proxy.status()["runtimes"]),
               5, "the front to drop it")

    after = scrape(node.proxy)
    assert naming(after, LEAVER) == set()
    assert naming(after, "primary") == naming(before, "primary")
    several = {"runtime": "*", "method": "ListPodSandbox", "code": "OK"}
    assert sample(after, "criproxy_requests_total", **several) == \
        sample(before, "criproxy_requests_total", **several) >= 1
    assert LEAVER not in node.proxy.status()["requests"]
    assert LEAVER not in status_text(node.proxy)
    assert LEAVER not in doctor_text(node, proc)
