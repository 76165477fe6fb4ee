"""The streaming URL of an Exec, Attach or PortForward answer, as kubelet gets it.

kubelet's streaming proxy connects, from the node, wherever this URL points,
and a runtime may be a tenant (one registered from a pod). So a URL is read
as RFC 3986 says, and only one that stays on the node reaches kubelet:

- an absolute URL: http or https only, passed unchanged;
- a network-path reference `//host[:port]/path` (cri-dockerd's): made `http:`;
- a path, with or without its leading slash: made absolute with the base
  (-streamUrl, trusted: the operator gave it);
- the host of the first two must be loopback, unspecified (Linux connects
  0.0.0.0 and :: to the node itself), `localhost`, one of the node's own
  addresses, or in -streamHosts. Other names are refused, not looked up: no
  DNS on the request path, and a name's address may change after the check.

Anything else is the runtime's bad answer (BadStreamUrl).
"""
from __future__ import annotations

import ipaddress
import re
import socket
import time
from pathlib import Path
from typing import Callable
from urllib.parse import SplitResult, urlsplit

from criproxy.setting_values import StreamHost

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The problems, worded to fit BadAnswer's "answered Exec with <problem> <message>".
EMPTY = "no streaming URL, in"
UNPARSED = "a streaming URL that does not parse, in"
OFF_NODE = "a streaming URL off the node, in"

# Control characters and spaces: Go's url.Parse refuses the first, Python's
# urlsplit silently drops some; neither belongs in a URL kubelet is to open.
_ODD_CHARACTERS = re.compile(r"[\x00-\x20\x7f]")
_SHOWN_LENGTH = 200
# How often a host not among the node's addresses has them read again, so
# that an address added since is eventually accepted.
NODE_ADDRESSES_REFRESH = 30.0


class BadStreamUrl(ValueError):
    """A URL kubelet must not get; `problem` is one of the wordings above."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem


def default_stream_base(port: int) -> str:
    """http://<node address>:<port>, the base when -streamUrl is not given."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = "127.0.0.1"
    return f"http://{address}:{port}"


def local_ipv4(fib_trie: str) -> set[IPNetwork]:
    """The node's IPv4 addresses, from /proc/net/fib_trie: each leaf `|-- ADDR`
    followed by a `/LEN host LOCAL` line is a local address (or range: 127.0.0.0/8)."""
    found: set[IPNetwork] = set()
    leaf = ""
    for line in fib_trie.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "|--":
            leaf = words[1]
        elif len(words) >= 3 and words[1:3] == ["host", "LOCAL"] and leaf:
            found.add(ipaddress.ip_network(f"{leaf}{words[0]}", strict=False))
    return found


def local_ipv6(if_inet6: str) -> set[IPNetwork]:
    """The node's IPv6 addresses, from /proc/net/if_inet6 (32 hex digits first)."""
    return {ipaddress.IPv6Network(int(line.split()[0], 16))
            for line in if_inet6.splitlines() if line.strip()}


def read_node_addresses(proc_net: Path = Path("/proc/net")) -> set[IPNetwork]:
    """Every address of the node's interfaces; a file that cannot be read adds none."""
    found: set[IPNetwork] = set()
    for name, parse in (("fib_trie", local_ipv4), ("if_inet6", local_ipv6)):
        try:
            found |= parse((proc_net / name).read_text())
        except (OSError, ValueError):
            continue
    return found


class NodeAddresses:
    """The node's own addresses, read when first needed and again, at most once per
    NODE_ADDRESSES_REFRESH, when an address is not among them."""

    def __init__(self, read: Callable[[], set[IPNetwork]] = read_node_addresses,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._networks: set[IPNetwork] = set()
        self._read_at: float | None = None

    def __contains__(self, address: IPAddress) -> bool:
        if any(address in network for network in self._networks):
            return True
        now = self._clock()
        if self._read_at is not None and now - self._read_at < NODE_ADDRESSES_REFRESH:
            return False
        self._networks, self._read_at = self._read(), now
        return any(address in network for network in self._networks)


class StreamUrls:
    """What kubelet gets for a runtime's streaming URL (see the module's docstring)."""

    def __init__(self, base: str, allowed: tuple[StreamHost, ...] = (),
                 node: NodeAddresses | None = None) -> None:
        self.base = base.rstrip("/")
        self._names = {"localhost"} | {h for h in allowed if isinstance(h, str)}
        self._networks = [h for h in allowed if not isinstance(h, str)]
        self._node = node if node is not None else NodeAddresses()

    def shown(self, url: str) -> str:
        """The URL kubelet gets for `url`; BadStreamUrl if it must get none."""
        if not url:
            raise BadStreamUrl(EMPTY, "kubelet refuses an answer without a URL")
        if _ODD_CHARACTERS.search(url):
            raise BadStreamUrl(UNPARSED, f"{_shown(url)} holds a space or control character")
        if url.startswith("//"):
            url = "http:" + url
        parts = _split(url)
        if not parts.scheme:
            return self.base + "/" + url.lstrip("/")
        self._check_host(_absolute_host(url, parts))
        return url

    def _check_host(self, host: str) -> None:
        if not self._on_node(host):
            raise BadStreamUrl(OFF_NODE, f"host {_cut(host)} is neither loopback nor an "
                                         "address of this node, and not in -streamHosts")

    def _on_node(self, host: str) -> bool:
        if host in self._names:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a name: never looked up
        address = getattr(address, "ipv4_mapped", None) or address
        if any(address in network for network in self._networks):
            return True
        if getattr(address, "scope_id", None):
            return False  # fe80::X%eth1 may be another machine's, on another link
        return address.is_loopback or address.is_unspecified or address in self._node


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as err:
        raise BadStreamUrl(UNPARSED, f"{_shown(url)}: {err}") from None


def _absolute_host(url: str, parts: SplitResult) -> str:
    """The host of an absolute URL kubelet can open: http(s), a host, a valid port."""
    if parts.scheme not in ("http", "https"):
        raise BadStreamUrl(UNPARSED, f"{_shown(url)}: scheme {_cut(parts.scheme)!r} is not "
                                     "http or https")
    try:
        parts.port  # read for its check: a port that is not 0..65535, or no number, raises
    except ValueError as err:
        raise BadStreamUrl(UNPARSED, f"{_shown(url)}: {err}") from None
    if "@" in parts.netloc:
        raise BadStreamUrl(UNPARSED, f"{_shown(url)} holds user info: which host it names "
                                     "depends on who reads it")
    if not parts.hostname:
        raise BadStreamUrl(UNPARSED, f"{_shown(url)} names no host")
    return parts.hostname


def _shown(url: str) -> str:
    """The URL for a message: quoted, and cut if long."""
    return repr(_cut(url))


def _cut(text: str) -> str:
    """What a message quotes of the runtime's text: no more than _SHOWN_LENGTH."""
    return text if len(text) <= _SHOWN_LENGTH else text[:_SHOWN_LENGTH] + "..."
