"""cloud/registries.py: which registries a customer may name, as plain functions. The address
rule it applies is protocol/addresses.py's (tests/agent/test_addresses.py)."""

import pytest

from cloud.registries import registry_of, registry_refusal


@pytest.mark.parametrize(("reference", "registry"), [
    ("nginx", None), ("library/nginx:1", None), ("acme/app", None), ("ghcr.io/org/app:1", "ghcr.io"),
    ("localhost/app", "localhost"), ("127.0.0.1:5000/a/b", "127.0.0.1:5000"), ("[::1]:5000/app", "[::1]:5000"),
    (f"host:5/app@sha256:{'a' * 64}", "host:5"),
])
def test_registry_of_follows_dockers_rule(reference, registry):
    assert registry_of(reference) == registry


def test_names_resolving_to_any_special_address_are_refused():
    answers = {"mixed.test": ["93.184.215.14", "10.0.0.1"], "public.test": ["93.184.215.14", "2606:4700::1"]}
    refusal = registry_refusal("mixed.test/app", trusted=[], resolve=lambda host: answers[host])
    assert refusal.startswith("registry mixed.test resolves to 10.0.0.1, a private address")
    assert registry_refusal("public.test/app", trusted=[], resolve=lambda host: answers[host]) is None


def test_docker_hub_is_never_resolved():
    def resolve(host):
        raise AssertionError(f"resolved {host}")
    assert registry_refusal("ollama/ollama:latest", trusted=[], resolve=resolve) is None
