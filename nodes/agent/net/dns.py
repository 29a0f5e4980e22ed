"""Which nameservers a VM gets: the host's own upstream resolvers, as Docker does.

A VM reaches the internet through the host's NAT, so it can use whatever the host resolves
with, except loopback addresses (a local stub such as systemd-resolved's 127.0.0.53 is the
host's, and the bridge guard keeps VMs off the host's loopback). When resolv.conf only names
such a stub, systemd-resolved's own list of upstream servers is used instead.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_UPSTREAMS = Path("/run/systemd/resolve/resolv.conf")
MAX_NAMESERVERS = 3  # the C library reads no more


def parse(text: str) -> list[str]:
    """The IPv4 `nameserver` addresses of a resolv.conf that a VM can reach, in order."""
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(fields[1])
        except ValueError:
            continue
        if address.version == 4 and not address.is_loopback and not address.is_unspecified and fields[1] not in found:
            found.append(fields[1])
    return found[:MAX_NAMESERVERS]


def host_nameservers(paths: tuple[Path, ...] = (RESOLV_CONF, RESOLVED_UPSTREAMS)) -> tuple[str, ...]:
    """Blocking (reads files): the first of `paths` that names a reachable nameserver."""
    for path in paths:
        try:
            servers = parse(path.read_text(errors="replace"))
        except OSError:
            continue
        if servers:
            return tuple(servers)
    return ()
