"""Unit tests: the streaming URLs kubelet gets (criproxy/front/streamurl.py, issue 34
and issue 30 item 3), and -streamHosts."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from criproxy.front import streamurl
from criproxy.front.streamurl import (EMPTY, OFF_NODE, UNPARSED, BadStreamUrl, NodeAddresses,
                                      StreamUrls, local_ipv4, local_ipv6, read_node_addresses)
from criproxy.setting_values import stream_hosts
from criproxy.settings import ConfigError, config_from_args, config_from_values, to_values

BASE = "http://10.1.2.3:11250"
NODE = {ipaddress.ip_network("10.1.2.3/32"), ipaddress.ip_network("fd00::2/128")}


def urls(allowed: str = "") -> StreamUrls:
    return StreamUrls(BASE + "/", stream_hosts(allowed), NodeAddresses(lambda: set(NODE)))


@pytest.mark.parametrize("answered, shown", [
    # absolute, http or https: unchanged
    ("http://127.0.0.1:10010/exec/T", "http://127.0.0.1:10010/exec/T"),
    ("https://127.0.0.1:10010/exec/T", "https://127.0.0.1:10010/exec/T"),
    ("HTTP://127.0.0.1/exec/T", "HTTP://127.0.0.1/exec/T"),
    ("http://[::1]:10010/x", "http://[::1]:10010/x"),
    ("http://localhost/attach/T?stdout=1", "http://localhost/attach/T?stdout=1"),
    ("http://10.1.2.3:35000/cri/exec/T", "http://10.1.2.3:35000/cri/exec/T"),
    ("http://[fd00::2]:35000/x", "http://[fd00::2]:35000/x"),
    ("http://0.0.0.0:35000/x", "http://0.0.0.0:35000/x"),
    ("http://[::ffff:127.0.0.1]:35000/x", "http://[::ffff:127.0.0.1]:35000/x"),
    ("http://127.0.0.1:10010", "http://127.0.0.1:10010"),
    # network-path reference (cri-dockerd): http
    ("//127.0.0.1:40593/cri/exec/TOKEN", "http://127.0.0.1:40593/cri/exec/TOKEN"),
    ("//[::1]:9/x", "http://[::1]:9/x"),
    ("//localhost/x?a=b", "http://localhost/x?a=b"),
    ("//127.0.0.1/x", "http://127.0.0.1/x"),
    # a path: on the base, with or without its leading slash
    ("/cri/exec/TOKEN", BASE + "/cri/exec/TOKEN"),
    ("cri/exec/TOKEN", BASE + "/cri/exec/TOKEN"),
    ("/cri/portforward/T?port=80", BASE + "/cri/portforward/T?port=80"),
    ("./exec/T", BASE + "/./exec/T"),
])
def test_each_form_of_url(answered: str, shown: str) -> None:
    assert urls().shown(answered) == shown


@pytest.mark.parametrize("answered, problem, named", [
    ("", EMPTY, "without a URL"),
    ("https://169.254.169.254/latest/meta-data/", OFF_NODE, "host 169.254.169.254"),
    ("//169.254.169.254/latest/meta-data/", OFF_NODE, "host 169.254.169.254"),
    ("http://8.8.8.8:80/x", OFF_NODE, "host 8.8.8.8"),
    ("http://10.1.2.4:35000/x", OFF_NODE, "host 10.1.2.4"),
    ("http://[fd00::3]:35000/x", OFF_NODE, "host fd00::3"),
    ("http://[::ffff:169.254.169.254]/x", OFF_NODE, "host ::ffff:169.254.169.254"),
    ("http://metadata.google.internal/x", OFF_NODE, "host metadata.google.internal"),
    ("http://localhost.evil.example/x", OFF_NODE, "host localhost.evil.example"),
    ("http://2130706433/x", OFF_NODE, "host 2130706433"),  # 127.0.0.1 to inet_aton, a name here
    ("http://0177.0.0.1/x", OFF_NODE, "host 0177.0.0.1"),
    ("http://[fe80::1%25eth0]/x", OFF_NODE, "fe80::1%25eth0"),
    ("ftp://127.0.0.1/x", UNPARSED, "scheme 'ftp'"),
    ("unix:/run/x.sock", UNPARSED, "scheme 'unix'"),
    ("localhost:10010/x", UNPARSED, "scheme 'localhost'"),
    ("http:/x", UNPARSED, "names no host"),
    ("http://:80/x", UNPARSED, "names no host"),
    ("///x", UNPARSED, "names no host"),
    ("http://127.0.0.1:99999/x", UNPARSED, "out of range"),
    ("http://127.0.0.1:port/x", UNPARSED, "'http://127.0.0.1:port/x'"),
    ("http://[::1/x", UNPARSED, "IPv6"),
    ("http://127.0.0.1@169.254.169.254/x", UNPARSED, "user info"),
    ("http://127.0.0.1\\@169.254.169.254/x", UNPARSED, "user info"),
    ("http://127.0.0.1\t.evil/x", UNPARSED, "control character"),
    (" http://169.254.169.254/x", UNPARSED, "space"),
    ("/cri/exec/T\n", UNPARSED, "control character"),
])
def test_refused(answered: str, problem: str, named: str) -> None:
    with pytest.raises(BadStreamUrl) as refused:
        urls().shown(answered)
    assert refused.value.problem == problem
    assert named in str(refused.value)


@pytest.mark.parametrize("answered", ["ftp://127.0.0.1/" + "x" * 10_000,
                                      "http://" + "a" * 10_000 + ".example/x",
                                      "s" * 10_000 + "://127.0.0.1/x"])
def test_a_long_url_is_cut_in_the_message(answered: str) -> None:
    with pytest.raises(BadStreamUrl) as refused:
        urls().shown(answered)
    assert len(str(refused.value)) < 500


@pytest.mark.parametrize("answered", ["http://203.0.113.9:8080/x", "//198.51.100.200/x",
                                      "https://Streams.Example:443/x", "http://[2001:db8::7]/x"])
def test_hosts_the_operator_allows(answered: str) -> None:
    allowed = urls("203.0.113.9, 198.51.100.0/24,streams.example,2001:db8::/32")
    assert allowed.shown(answered).endswith("/x")
    with pytest.raises(BadStreamUrl):
        urls().shown(answered)


def test_a_listed_name_is_that_name_only() -> None:
    with pytest.raises(BadStreamUrl):
        urls("streams.example").shown("http://evil.streams.example/x")


# --- the node's own addresses ----------------------------------------------------

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
              /24 link UNICAST
        |-- 192.0.2.255
           /32 link BROADCAST
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
"""


def test_local_addresses_from_proc() -> None:
    assert local_ipv4(FIB_TRIE) == {ipaddress.ip_network("127.0.0.0/8"),
                                    ipaddress.ip_network("127.0.0.1/32"),
                                    ipaddress.ip_network("192.0.2.2/32")}
    assert local_ipv6(IF_INET6) == {ipaddress.ip_network("::1/128"),
                                    ipaddress.ip_network("fd00::2/128"),
                                    ipaddress.ip_network("fe80::fc:ff:fe00:1/128")}


def test_read_node_addresses(tmp_path: Path) -> None:
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    assert ipaddress.ip_network("192.0.2.2/32") in read_node_addresses(tmp_path)  # no if_inet6
    (tmp_path / "if_inet6").write_text("not hex\n")
    assert ipaddress.ip_network("192.0.2.2/32") in read_node_addresses(tmp_path)
    assert read_node_addresses(tmp_path / "missing") == set()


def test_this_machines_addresses_are_its_own() -> None:
    addresses = read_node_addresses()
    assert any(network.version == 4 and not network.network_address.is_loopback
               for network in addresses) or not Path("/proc/net/fib_trie").exists()


def test_node_addresses_are_read_when_needed_and_again_at_most_every_30s() -> None:
    now = [100.0]
    node = [{ipaddress.ip_network("10.0.0.1/32")}]
    reads = []

    def read() -> set:
        reads.append(now[0])
        return set(node[0])

    addresses = NodeAddresses(read, lambda: now[0])
    assert reads == []
    assert ipaddress.ip_address("10.0.0.1") in addresses and reads == [100.0]
    node[0] = {ipaddress.ip_network("10.0.0.2/32")}  # an address added since
    assert ipaddress.ip_address("10.0.0.2") not in addresses
    now[0] += streamurl.NODE_ADDRESSES_REFRESH - 1
    assert ipaddress.ip_address("10.0.0.2") not in addresses and reads == [100.0]
    now[0] += 1
    assert ipaddress.ip_address("10.0.0.2") in addresses and len(reads) == 2
    assert ipaddress.ip_address("10.0.0.1") not in addresses and len(reads) == 2


# --- -streamHosts ------------------------------------------------------------------

def test_stream_hosts_setting_parses_and_round_trips() -> None:
    config = config_from_args(["-connect", "/a", "-streamHosts",
                               "10.0.0.0/8, [fd00::1],Node-1.Example,192.0.2.7"])
    assert config.stream_hosts == (ipaddress.ip_network("10.0.0.0/8"),
                                   ipaddress.ip_network("fd00::1/128"), "node-1.example",
                                   ipaddress.ip_network("192.0.2.7/32"))
    assert to_values(config)["stream_hosts"] == "10.0.0.0/8,fd00::1/128,node-1.example,192.0.2.7/32"
    assert config_from_values(to_values(config)) == config
    assert config_from_values({"connect": "/a"}).stream_hosts == ()


@pytest.mark.parametrize("value, named", [
    ("10.0.0.1/8", "host bits set"),
    ("10.0.0.256", "'10.0.0.256'"),
    ("node.example:8080", "without a port"),
    ("10.0.0.1:80", "without a port"),
    ("[::1]:80", "'[::1]:80'"),
    ("a,,b", "empty"),
    ("bad_name", "'bad_name'"),
    ("*.example", "'*.example'"),
])
def test_bad_stream_hosts_are_refused(value: str, named: str) -> None:
    with pytest.raises(ConfigError, match="-streamHosts") as refused:
        config_from_args(["-connect", "/a", "-streamHosts", value])
    assert named in str(refused.value)
