"""`ADDR:PORT` options and how HAProxy is told them."""

from __future__ import annotations

import pytest

from gateway.binds import TcpListen, parse_address, parse_bind, parse_port_range


@pytest.mark.parametrize("text,haproxy,shown", [
    ("127.0.0.1:443", "ipv4@127.0.0.1:443", "127.0.0.1:443"),
    ("0.0.0.0:80", "ipv4@0.0.0.0:80", "0.0.0.0:80"),
    ("[::1]:8443", "ipv6@::1:8443", "[::1]:8443"),
    ("[::]:443", "ipv6@:::443 v4v6", "[::]:443"),
])
def test_addresses_in_both_families(text, haproxy, shown):
    bind = parse_bind(text)
    assert (bind.haproxy(), str(bind)) == (haproxy, shown)


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "localhost:443", "::1:443",
                                  "[fe80::1%eth0]:443", "127.0.0.1:４４３", "127.0.0.1:+443", " 127.0.0.1:443",
                                  "127.0.0.1:443\n"])
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError):
        parse_bind(text)


@pytest.mark.parametrize("address,ports,haproxy,shown", [
    ("198.51.100.34", "20000-20999", "ipv4@198.51.100.34:20000-20999", "198.51.100.34:20000-20999"),
    ("0.0.0.0", "20000-20000", "ipv4@0.0.0.0:20000-20000", "0.0.0.0:20000-20000"),
    ("[::]", "1-10000", "ipv6@:::1-10000 v4v6", "[::]:1-10000"),
    ("2001:db8::1", "20000-20010", "ipv6@2001:db8::1:20000-20010", "[2001:db8::1]:20000-20010"),
])
def test_the_tcp_frontend_binds_a_whole_range(address, ports, haproxy, shown):
    listen = TcpListen(parse_address(address), parse_port_range(ports))
    assert (listen.haproxy(), str(listen)) == (haproxy, shown)


@pytest.mark.parametrize("text", ["20000", "20000-", "-20000", "20000-19999", "0-10", "65535-65536", "1-10001",
                                  " 1-2", "1-2\n", "１-2", "+1-2", "1--2", "1-2-3"])
def test_a_port_range_that_is_not_lo_hi_or_too_wide_is_refused(text):
    with pytest.raises(ValueError):
        parse_port_range(text)


@pytest.mark.parametrize("text", ["localhost", "198.51.100.34:1", "[::1", "fe80::1%eth0", "", "0"])
def test_a_tcp_address_that_is_not_an_ip_literal_is_refused(text):
    with pytest.raises(ValueError):
        parse_address(text)
