"""How each setting's value is read and checked: one parser per kind of value.

settings.py names these in its SETTINGS table; each takes the raw string (flag
or settings file) and returns the value or raises ValueError saying what a
right one looks like (settings.py adds the flag and the value given).
"""
from __future__ import annotations

import ipaddress
import math
import os
import re


def verbosity(value: str) -> int:
    level = int(value)
    if not 0 <= level <= 10:
        raise ValueError("must be 0..10")
    return level


def positive_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a finite number > 0")
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number > 0")
    return number


def rate(value: str) -> float:
    """So many a second (a parser of its own: positive_float values are seconds)."""
    return positive_float(value)


# An answer limit below a full node's ListContainers (about 1 KiB a container)
# would fail relists; gRPC takes at most a signed 32-bit length.
_ANSWER_BYTES = (1024 * 1024, 2**31 - 1)


def answer_bytes(value: str) -> int:
    size = int(value)
    if not _ANSWER_BYTES[0] <= size <= _ANSWER_BYTES[1]:
        raise ValueError(f"must be {_ANSWER_BYTES[0]}..{_ANSWER_BYTES[1]} bytes "
                         "(kubelet's own limit is 16777216)")
    return size


def port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError("must be 1..65535")
    return port


def stream_url(value: str) -> str:
    if value and not re.match(r"^https?://[^/]+", value):
        raise ValueError("must be an absolute http(s) URL")
    return value.rstrip("/")


# A host a streaming URL may name (-streamHosts): an address or network, or a name.
StreamHost = ipaddress.IPv4Network | ipaddress.IPv6Network | str
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                        r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
# Meant as an address or a network, not a name: digits and dots, a '/' or '[', or
# two ':' (one is more likely a port).
_IP_LIKE = re.compile(r"^([0-9.]+|.*[/\[].*|.*:.*:.*)$")


def stream_hosts(value: str) -> tuple[StreamHost, ...]:
    """Comma-separated IP addresses, CIDRs and host names; empty: none."""
    if not value.strip():
        return ()
    return tuple(_stream_host(entry.strip()) for entry in value.split(","))


def _stream_host(entry: str) -> StreamHost:
    if not entry:
        raise ValueError("an entry is empty")
    try:
        return ipaddress.ip_network(entry.removeprefix("[").removesuffix("]"))
    except ValueError as err:
        if _IP_LIKE.match(entry):
            raise ValueError(f"{entry!r}: {err}") from None
    if not _HOST_NAME.match(entry.lower()):
        raise ValueError(f"{entry!r} is neither an IP address, a CIDR (10.0.0.0/8) "
                         "nor a host name (give hosts without a port)")
    return entry.lower()


def stream_hosts_string(hosts: tuple[StreamHost, ...]) -> str:
    return ",".join(map(str, hosts))


def group(value: str) -> str:
    """A group that exists: a typo must stop criproxy, not crash-loop the front."""
    if value:
        import grp
        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError("no such group") from None
    return value


def runtimes_dir(value: str) -> str:
    """An absolute directory, or `off`/empty (returned as "")."""
    value = value.strip()
    if value in ("", "off"):
        return ""
    if not value.startswith("/"):
        raise ValueError("must be an absolute path, or off")
    return os.path.normpath(value)


def metrics_address(value: str) -> str:
    """`host:port`, `[v6]:port`, `unix:/path`, or `off`/empty (returned as "")."""
    value = value.strip()
    if value in ("", "off"):
        return ""
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError("a unix socket needs an absolute path: unix:/path")
        return "unix:/" + path.lstrip("/")  # unix://path and unix:/path alike
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port, unix:/path or off")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("port must be 0..65535")
    return f"{host}:{int(port)}"


def otlp_endpoint(value: str) -> str:
    """An OTLP/gRPC collector: `host:port`, `http://host:port`, `unix:/path`, or
    `off`/empty (returned as ""). Plain text only: collectors run on the node."""
    value = value.strip()
    if value.startswith("https://"):
        raise ValueError("TLS is not supported: name a collector on the node, "
                         "host:port or unix:/path")
    address = metrics_address(value.removeprefix("http://").rstrip("/"))
    if address.endswith(":0") and not address.startswith("unix:"):
        raise ValueError("port must be 1..65535")
    return address
