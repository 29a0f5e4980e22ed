"""cloud/registries.py: which registries a customer may name, as plain functions."""

import ipaddress

import pytest

from cloud.registries import ip_literal, registry_of, registry_refusal, special_address, split_host_port


@pytest.mark.parametrize(("reference", "registry"), [
    ("nginx", None), ("library/nginx:1", None), ("acme/app", None), ("ghcr.io/org/app:1", "ghcr.io"),
    ("localhost/app", "localhost"), ("127.0.0.1:5000/a/b", "127.0.0.1:5000"), ("[::1]:5000/app", "[::1]:5000"),
    (f"host:5/app@sha256:{'a' * 64}", "host:5"),
])
def test_registry_of_follows_dockers_rule(reference, registry):
    assert registry_of(reference) == registry


def test_split_host_port():
    assert split_host_port("Registry.IO:443") == ("registry.io", 443)
    assert split_host_port("[::1]:5000") == ("::1", 5000)
    assert split_host_port("[fe80::1]") == ("fe80::1", None)
    assert split_host_port("10.0.0.1") == ("10.0.0.1", None)


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
    ("[::1]", "::1"), ("ghcr.io", None), ("10.foo", None),
])
def test_ip_literal_reads_what_the_c_resolver_would(host, address):
    found = ip_literal(host)
    assert (str(found) if found else None) == address


def test_names_resolving_to_any_special_address_are_refused():
    answers = {"mixed.test": ["93.184.215.14", "10.0.0.1"], "public.test": ["93.184.215.14", "2606:4700::1"]}
    refusal = registry_refusal("mixed.test/app", trusted=[], resolve=lambda host: answers[host])
    assert refusal.startswith("registry mixed.test resolves to 10.0.0.1, a private address")
    assert registry_refusal("public.test/app", trusted=[], resolve=lambda host: answers[host]) is None


def test_docker_hub_is_never_resolved():
    def resolve(host):
        raise AssertionError(f"resolved {host}")
    assert registry_refusal("ollama/ollama:latest", trusted=[], resolve=resolve) is None


@pytest.mark.parametrize(("address", "kind"), [
    ("0.0.0.0", "unspecified"), ("127.0.0.53", "loopback"), ("169.254.169.254", "link-local"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("100.64.0.1", "special-purpose"),
    ("224.0.0.251", "multicast"), ("255.255.255.255", "private"), ("192.0.2.1", "private"),
    ("::", "unspecified"), ("::1", "loopback"), ("fe80::1", "link-local"), ("fd00::1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::a00:1", "private"), ("2002:a9fe:a9fe::", "link-local"),
    ("8.8.8.8", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None),
])
def test_special_addresses(address, kind):
    assert special_address(ipaddress.ip_address(address)) == kind
