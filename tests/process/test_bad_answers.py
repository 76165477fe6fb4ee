"""A runtime that answers bytes that do not decode (issue 25's finding): beside a
healthy primary it must not break the merged Lists, and the calls aimed at it
fail with INTERNAL naming it, never with a code that blames the caller.

Real criproxy in front of two fake runtimes; `alt` answers garbage through its
control file, so the same runtime can misbehave and recover without a restart.
"""
from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import Cluster
from tests.process.routing_util import Kubelet, wait_until
from tests.support.fakeknobs import set_delays

# Not protobuf at all: a length-delimited field claiming more bytes than follow.
NOT_PROTOBUF = bytes.fromhex("0aff ffff ff0f 1234")
LISTS = ("ListPodSandbox", "ListContainers", "ListImages")


def invalid_utf8_sandboxes() -> bytes:
    """Well-formed protobuf whose pod name is not UTF-8: criproxy's slim decode
    would carry it through, and kubelet's decoder refuses the whole merged answer."""
    pod = cri.PodSandbox(id="garbled", metadata=cri.PodSandboxMetadata(name="QQ"))
    return cri.ListPodSandboxResponse(items=[pod]).SerializeToString().replace(b"QQ", b"\xc3\x28")


def metric(cluster: Cluster, name: str, runtime: str) -> float:
    host, _, port = cluster.proxy.status()["metrics"].removeprefix("http://").rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", "/metrics")
    for line in connection.getresponse().read().decode().splitlines():
        if line.startswith(f'{name}{{runtime="{runtime}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} for runtime {runtime}")


@pytest.mark.parametrize("garbage", [NOT_PROTOBUF, invalid_utf8_sandboxes()],
                         ids=["not-protobuf", "invalid-utf8"])
def test_garbage_from_one_runtime_leaves_the_merged_lists_whole(
        controlled_alt: tuple[Cluster, Path], garbage: bytes) -> None:
    cluster, control = controlled_alt
    kubelet = Kubelet(cluster)
    primary_pod, alt_pod = kubelet.run_pod("primary"), kubelet.run_pod("alt")
    assert {primary_pod, alt_pod} <= {p.id for p in kubelet.rt.ListPodSandbox(
        cri.ListPodSandboxRequest(), timeout=5).items}  # alt's last answer is kept
    # A single runtime's answer is decoded only as far as renaming needs (slim.py):
    # what does not even parse is refused; a bad label reaches the caller as it
    # would without criproxy, and fails that one call only.
    set_delays(control, {}, garbage={**{m: garbage for m in LISTS},
                                     "PodSandboxStatus": NOT_PROTOBUF})

    for _ in range(10):
        listed = kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5).items
        assert {primary_pod, alt_pod} <= {p.id for p in listed}
        assert all(p.id != "alt__garbled" for p in listed)
        kubelet.rt.ListContainers(cri.ListContainersRequest(), timeout=5)
        kubelet.img.ListImages(cri.ListImagesRequest(), timeout=5)
    alone = kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(
        filter=cri.PodSandboxFilter(id=alt_pod)), timeout=5).items
    assert [p.id for p in alone] == [alt_pod]  # from its last answer

    with pytest.raises(grpc.RpcError) as failed:
        kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=alt_pod),
                                    timeout=5)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "runtime alt answered PodSandboxStatus" in failed.value.details()

    wait_until(lambda: cluster.proxy.runtime_status("alt")["bad_answers"] >= 31, 5,
               "the status file to count alt's bad answers")
    status = cluster.proxy.runtime_status("alt")
    assert "runtime alt answered" in status["last_bad_answer"]
    assert cluster.proxy.runtime_status("primary")["bad_answers"] == 0
    assert metric(cluster, "criproxy_runtime_bad_answers_total", "alt") >= 31
    shown = subprocess.run([sys.executable, "-m", "criproxy", "status", "-rundir",
                            str(cluster.proxy.rundir)], capture_output=True, text=True).stdout
    assert "misbehaving" in shown


def test_a_runtime_that_answers_well_again_is_fresh_again(controlled_alt: tuple[Cluster, Path]) -> None:
    cluster, control = controlled_alt
    kubelet = Kubelet(cluster)
    alt_pod = kubelet.run_pod("alt")
    kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)
    set_delays(control, {}, garbage={"ListPodSandbox": NOT_PROTOBUF})
    kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)
    wait_until(lambda: cluster.proxy.runtime_status("alt")["serving_last_answer"], 5,
               "alt's sandboxes served from its last answer")
    set_delays(control, {})
    listed = kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5).items
    assert alt_pod in {p.id for p in listed}
    wait_until(lambda: not cluster.proxy.runtime_status("alt")["serving_last_answer"], 5,
               "alt's sandboxes fresh again")
