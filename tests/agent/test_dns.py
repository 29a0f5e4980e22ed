"""The nameservers a VM gets: the host's upstream resolvers, never a loopback stub."""

from __future__ import annotations

from nodes.agent.net import dns


def test_parse_keeps_reachable_ipv4_nameservers_in_order():
    text = (
        "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver 10.0.0.2 # office\n"
        "nameserver ::1\nnameserver 2001:db8::53\nnameserver 10.0.0.2\n  nameserver   192.0.2.53\n"
        "nameserver not-an-address\nnameserver 0.0.0.0\noptions edns0\nnameserver 198.51.100.1\n"
        "nameserver 198.51.100.2\n"
    )
    assert dns.parse(text) == ["10.0.0.2", "192.0.2.53", "198.51.100.1"]  # at most three, like libc


def test_a_local_stub_falls_back_to_systemd_resolved_upstreams(tmp_path):
    stub, upstream, missing = tmp_path / "resolv.conf", tmp_path / "upstream.conf", tmp_path / "missing"
    stub.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    upstream.write_text("nameserver 192.0.2.1\nnameserver 192.0.2.2\n")
    assert dns.host_nameservers((stub, upstream)) == ("192.0.2.1", "192.0.2.2")
    assert dns.host_nameservers((missing, stub)) == ()
