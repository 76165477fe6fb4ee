"""A runtime that takes connections before it answers Version is taken up once it does.

containerd serves its socket ~50 ms before its CRI plugin has recovered its state
and answers Version "UNKNOWN: server is not initialized yet" meanwhile. A worker
that connected then kept the runtime down for good (the channel stayed READY, so
nothing asked again): every call to it failed until criproxy restarted, and after
-staleFor its pods left kubelet's relists. Found by `make soak`.
"""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from tests.support import fakeknobs
from tests.support.fakeruntime import start_fake
from tests.support.harness import short_dir, start_proxy

NOT_READY = ("UNKNOWN", "server is not initialized yet")


def test_a_runtime_that_refused_version_is_up_as_soon_as_it_answers() -> None:
    base = short_dir("rs-")
    control = base / "alt.control"
    fakeknobs.set_delays(control, {}, {"Version": NOT_READY})
    primary = start_fake(base, "primary")
    alt = start_fake(base, "alt", "--control", str(control))
    proxy = start_proxy(f"{base / 'primary.sock'},alt:{base / 'alt.sock'}", workdir=base,
                        wait_for=["primary"])
    try:
        down = proxy.wait_state("alt", "down")
        assert "server is not initialized yet" in down["reason"], down
        stub = api_pb2_grpc.RuntimeServiceStub(proxy.channel())
        with pytest.raises(grpc.RpcError) as refused:
            stub.RunPodSandbox(cri.RunPodSandboxRequest(config=pod("early")), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        fakeknobs.set_delays(control, {})  # the runtime has recovered its state
        proxy.wait_state("alt", "up", timeout=5)
        ran = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=pod("late")), timeout=10)
        assert ran.pod_sandbox_id.startswith("alt__")
    finally:
        proxy.stop()
        primary.stop()
        alt.stop()


def pod(name: str) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=name, namespace="rs"),
        annotations={"kubernetes.io/target-runtime": "alt"})
