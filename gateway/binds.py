"""`ADDR:PORT` command-line addresses (`--https-bind 0.0.0.0:443`, `--control-bind [::1]:8443`), and
the TCP frontend's address and port range (`--tcp-bind 0.0.0.0 --tcp-ports 20000-20999`)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from gateway.table import PortRange

# Every port of the range is a listening socket (a file descriptor) in each HAProxy worker, and one
# more while a reload hands them over: a bound on what a typo (1-65535) can cost.
MAX_TCP_PORTS = 10_000
_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")


@dataclass(frozen=True)
class Bind:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def host(self) -> str:
        return str(self.address)

    def haproxy(self) -> str:
        """HAProxy's spelling, the family explicit; `v4v6` lets `[::]` take IPv4 too."""
        if self.address.version == 4:
            return f"ipv4@{self.address}:{self.port}"
        dual = " v4v6" if self.address.is_unspecified else ""
        return f"ipv6@{self.address}:{self.port}{dual}"

    def url_host(self) -> str:
        return f"[{self.address}]" if self.address.version == 6 else str(self.address)

    def __str__(self) -> str:
        return f"{self.url_host()}:{self.port}"


@dataclass(frozen=True)
class TcpListen:
    """The TCP frontend: every port of `ports` on `address`."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    ports: PortRange

    def haproxy(self) -> str:
        """`ipv4@ADDR:LO-HI`: HAProxy binds each port of the range; `v4v6` as for Bind."""
        family = f"ipv{self.address.version}"
        dual = " v4v6" if self.address.version == 6 and self.address.is_unspecified else ""
        return f"{family}@{self.address}:{self.ports}{dual}"

    def __str__(self) -> str:
        return f"{Bind(self.address, self.ports.low).url_host()}:{self.ports}"


def parse_bind(text: str) -> Bind:
    """`1.2.3.4:443` or `[2001:db8::1]:443`; ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
    return Bind(address=_address(host, text), port=int(port))


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`1.2.3.4`, `::` or `[::]`: an address to listen on, no port."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    return _address(host, text)


def parse_port_range(text: str) -> PortRange:
    """`LO-HI`, both ends included, at most MAX_TCP_PORTS ports."""
    match = _RANGE.fullmatch(text)
    if match is None or not 0 < int(match[1]) <= int(match[2]) < 65536:
        raise ValueError(f"{text!r} is not LO-HI with ports from 1 to 65535, LO not above HI")
    ports = PortRange(int(match[1]), int(match[2]))
    if len(ports) > MAX_TCP_PORTS:
        raise ValueError(f"{text!r} holds {len(ports)} ports; at most {MAX_TCP_PORTS}")
    return ports


def _address(host: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address literal") from None
    if address.version == 6 and address.scope_id is not None:
        raise ValueError(f"{text!r}: scoped IPv6 addresses are not supported")
    return address
