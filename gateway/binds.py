"""`ADDR:PORT` command-line addresses (`--https-bind 0.0.0.0:443`, `--control-bind [::1]:8443`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


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


def parse_bind(text: str) -> Bind:
    """`1.2.3.4:443` or `[2001:db8::1]:443`; ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address literal") from None
    if address.version == 6 and address.scope_id is not None:
        raise ValueError(f"{text!r}: scoped IPv6 addresses are not supported")
    return Bind(address=address, port=int(port))
