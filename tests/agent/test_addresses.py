"""protocol/addresses.py: the one rule for which addresses an image reference may send the plane
(cloud/registries.py) and a node (nodes/agent/oci/egress.py) to. Both call these functions, so
what is proved here holds for both."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import addresses as a

SPECIAL = ("is_private", "is_loopback", "is_link_local", "is_multicast", "is_reserved", "is_unspecified")
# Ranges `ipaddress` flags, to make the draws land in them (uniform 128-bit draws almost never do).
# Documentation ranges (TEST-NET-1/2/3, 2001:db8::/32) are refused whatever a Python version's
# `ipaddress` says of them: no registry is ever there.
DOCUMENTATION = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
FLAGGED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001::/23", "fc00::/7", "fe80::/10", "ff00::/8",
    "::/8", "4000::/3", "fe00::/9", *DOCUMENTATION,
)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _flagged(address) -> bool:
    return any(getattr(address, name) for name in SPECIAL) or not address.is_global


def _in(networks):
    return st.sampled_from(networks).flatmap(lambda network: st.ip_addresses(network=network))


def _forms(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """The IPv6 spellings that lead to `v4`: IPv4-mapped, NAT64 (RFC 6052) and 6to4."""
    return [ipaddress.IPv6Address(f"::ffff:{v4}"), ipaddress.IPv6Address(int(NAT64.network_address) | int(v4)),
            ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80))]


@given(st.one_of(st.ip_addresses(), _in(FLAGGED)))
def test_every_address_ipaddress_calls_special_is_refused(address):
    if a.embedded_ipv4(address) is not None:
        return  # judged by the IPv4 address it leads to: the next test
    assert (a.special_address(address) is not None) == _flagged(address), address


@given(st.one_of(st.ip_addresses(v=4), _in(tuple(n for n in FLAGGED if ":" not in n))))
def test_ipv6_forms_of_an_ipv4_address_are_judged_by_it(v4):
    for form in _forms(v4):
        assert a.embedded_ipv4(form) == v4
        assert a.special_address(form) == a.special_address(v4), form


@given(_in(DOCUMENTATION))
def test_documentation_ranges_are_refused(address):
    assert a.special_address(address) is not None
    for form in _forms(address) if address.version == 4 else ():
        assert a.special_address(form) is not None


@pytest.mark.parametrize(("address", "kind"), [
    ("0.0.0.0", "unspecified"), ("127.0.0.53", "loopback"), ("169.254.169.254", "link-local"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("100.64.0.1", "special-purpose"),
    ("224.0.0.251", "multicast"), ("255.255.255.255", "private"), ("192.0.2.1", "private"), ("240.0.0.1", "private"),
    ("::", "unspecified"), ("::1", "loopback"), ("fe80::1", "link-local"), ("fd00::1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::a00:1", "private"), ("2002:a9fe:a9fe::", "link-local"),
    ("64:ff9b::a9fe:a9fe", "link-local"), ("4000::1", "reserved"), ("::8.8.8.8", "reserved"),
    ("8.8.8.8", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None), ("64:ff9b::808:808", None),
])
def test_special_addresses(address, kind):
    assert a.special_address(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("ghcr.io", None), ("10.foo", None),
])
def test_ip_literal_reads_what_the_c_resolver_would(host, address):
    found = a.ip_literal(host)
    assert (str(found) if found else None) == address


def test_resolved_addresses_may_carry_a_zone():
    assert a.resolved_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


def test_split_host_port():
    assert a.split_host_port("Registry.IO:443") == ("registry.io", 443)
    assert a.split_host_port("[::1]:5000") == ("::1", 5000)
    assert a.split_host_port("[fe80::1]") == ("fe80::1", None)
    assert a.split_host_port("10.0.0.1") == ("10.0.0.1", None)


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LocalHost", True), ("registry.localhost", True), ("localhost.", True),
    ("localhost.example.com", False), ("mylocalhost", False),
])
def test_localhost_names_are_loopback(host, loopback):
    assert a.is_loopback_name(host) is loopback


def test_trust_is_per_port_unless_the_entry_names_none():
    trusted = a.parse_trusted(["Registry.Example:5000", " 10.0.0.5 ", "", "[fd00::1]:443"])
    assert a.is_trusted("registry.example", 5000, trusted)
    assert not a.is_trusted("registry.example", 5001, trusted)
    assert not a.is_trusted("registry.example", None, trusted)
    assert a.is_trusted("10.0.0.5", 80, trusted) and a.is_trusted("10.0.0.5", None, trusted)
    assert a.is_trusted("[fd00::1]", 443, trusted) and not a.is_trusted("fd00::1", 80, trusted)
