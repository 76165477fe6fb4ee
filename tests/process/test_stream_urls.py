"""Streaming URLs through a real criproxy (issue 34, issue 30 item 3): each form a
runtime answers reaches kubelet as a URL it can open, a real websocket exec runs
through the one criproxy hands out, and a URL off the node is the runtime's bad
answer (INTERNAL naming it and the host, counted).

primary answers relative URLs (`/cri/exec/TOKEN`); alt answers network-path
references (`//127.0.0.1:PORT/cri/exec/TOKEN`, as cri-dockerd does) to a loopback
streaming server of the test's own (tests/process/wsserver.py), or, through its control
file, any URL a test sets.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from criproxy.front.streamurl import read_node_addresses
from tests.process.cluster import STREAM_URL, Cluster
from tests.process.routing_util import Kubelet, wait_until
from tests.process.wsserver import StreamServer
from tests.support.fakeknobs import set_delays
from tests.support.fakeruntime import start_fake
from tests.support.harness import short_dir, start_proxy
from tests.support.wsexec import ws_exec

ALLOWED = "198.51.100.0/24,streams.example"


@dataclass
class Node:
    cluster: Cluster
    kubelet: Kubelet
    control: Path
    server: StreamServer
    containers: dict[str, str]  # runtime -> a container of it
    sandboxes: dict[str, str]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    base = short_dir("cps-")
    control = base / "alt-control.json"
    set_delays(control, {})
    server = StreamServer()
    fakes = {"primary": start_fake(base, "primary"),
             "alt": start_fake(base, "alt", "--url-base", f"//127.0.0.1:{server.port}",
                               "--control", str(control))}
    proxy = start_proxy(f"{fakes['primary'].socket},alt:{fakes['alt'].socket}",
                        "-streamUrl", STREAM_URL, "-streamHosts", ALLOWED, workdir=base,
                        wait_for=list(fakes))
    cluster = Cluster(proxy, fakes, base)
    kubelet = Kubelet(cluster)
    pods = {runtime: kubelet.pod_with_container(runtime) for runtime in ("primary", "alt")}
    yield Node(cluster, kubelet, control, server, {r: c for r, (_s, c) in pods.items()},
               {r: s for r, (s, _c) in pods.items()})
    proxy.stop()
    for fake in fakes.values():
        fake.stop()
    server.close()
    shutil.rmtree(base, ignore_errors=True)


def stream_urls(node: Node, runtime: str) -> dict[str, str]:
    rt, container = node.kubelet.rt, node.containers[runtime]
    return {
        "exec": rt.Exec(cri.ExecRequest(container_id=container, cmd=["sh"], stdout=True),
                        timeout=10).url,
        "attach": rt.Attach(cri.AttachRequest(container_id=container, stdout=True),
                            timeout=10).url,
        "portforward": rt.PortForward(cri.PortForwardRequest(
            pod_sandbox_id=node.sandboxes[runtime], port=[80]), timeout=10).url,
    }


def exec_answering(node: Node, url: str) -> str:
    """The URL kubelet gets for an Exec that alt answers with `url`."""
    set_delays(node.control, {}, garbage={"Exec": cri.ExecResponse(url=url).SerializeToString()})
    try:
        return node.kubelet.rt.Exec(cri.ExecRequest(container_id=node.containers["alt"],
                                                    cmd=["sh"], stdout=True), timeout=10).url
    finally:
        set_delays(node.control, {})


def test_a_network_path_url_is_made_http_and_a_real_exec_runs_through_it(node: Node) -> None:
    urls = stream_urls(node, "alt")
    for kind, url in urls.items():
        assert re.fullmatch(rf"http://127\.0\.0\.1:{node.server.port}/cri/{kind}/[0-9a-f]+",
                            url), (kind, url)

    result = ws_exec(urls["exec"])

    assert result.stdout == f"ran /cri/exec/{urls['exec'].rsplit('/', 1)[1]}".encode()
    assert result.exit_code == 0
    assert node.server.paths[-1] == urls["exec"].removeprefix(f"http://127.0.0.1:{node.server.port}")


def test_a_relative_url_is_made_absolute_on_stream_url(node: Node) -> None:
    for kind, url in stream_urls(node, "primary").items():
        assert re.fullmatch(rf"{re.escape(STREAM_URL)}/cri/{kind}/[0-9a-f]+", url), (kind, url)


@pytest.mark.parametrize("answered, shown", [
    ("http://[::1]:10010/cri/exec/T", "http://[::1]:10010/cri/exec/T"),
    ("https://localhost:10010/cri/exec/T?tty=1", "https://localhost:10010/cri/exec/T?tty=1"),
    ("cri/exec/T", STREAM_URL + "/cri/exec/T"),
    ("http://198.51.100.7:8080/cri/exec/T", "http://198.51.100.7:8080/cri/exec/T"),
    ("//streams.example/cri/exec/T", "http://streams.example/cri/exec/T"),
], ids=["loopback-ipv6", "localhost", "path", "allowed-cidr", "allowed-name"])
def test_urls_on_the_node_or_allowed_pass(node: Node, answered: str, shown: str) -> None:
    assert exec_answering(node, answered) == shown


def test_an_address_of_the_node_itself_passes(node: Node) -> None:
    own = [n.network_address for n in read_node_addresses()
           if n.num_addresses == 1 and not n.network_address.is_loopback
           and n.network_address.version == 4]
    if not own:
        pytest.skip("this machine has no IPv4 address besides loopback")
    url = f"http://{own[0]}:35000/cri/exec/T"
    assert exec_answering(node, url) == url


@pytest.mark.parametrize("answered, refused", [
    ("https://169.254.169.254/latest/meta-data/", "host 169.254.169.254"),
    ("//169.254.169.254/latest/meta-data/", "host 169.254.169.254"),
    ("http://8.8.8.8/x", "host 8.8.8.8"),
    ("http://[2001:db8::1]:80/x", "host 2001:db8::1"),
    ("http://metadata.google.internal/x", "host metadata.google.internal"),
    ("http://198.51.101.7/x", "host 198.51.101.7"),
    ("ftp://127.0.0.1/x", "scheme 'ftp'"),
    ("", "no streaming URL"),
], ids=["metadata", "metadata-network-path", "public-ip", "public-ipv6", "name-not-listed",
        "outside-allowed", "ftp", "empty"])
def test_a_url_off_the_node_is_the_runtimes_bad_answer(node: Node, answered: str,
                                                       refused: str) -> None:
    before = node.cluster.proxy.runtime_status("alt")["bad_answers"]

    with pytest.raises(grpc.RpcError) as failed:
        exec_answering(node, answered)

    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details().startswith("runtime alt answered Exec with ")
    assert refused in failed.value.details()
    wait_until(lambda: node.cluster.proxy.runtime_status("alt")["bad_answers"] > before, 5,
               "the status file to count alt's bad answer")
    assert refused in node.cluster.proxy.runtime_status("alt")["last_bad_answer"]
    assert node.cluster.proxy.runtime_status("primary")["bad_answers"] == 0

