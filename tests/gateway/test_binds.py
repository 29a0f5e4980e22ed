"""`ADDR:PORT` options and how HAProxy is told them."""

from __future__ import annotations

import pytest

from gateway.binds import parse_bind


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
