import pytest
from django.core.exceptions import ValidationError

from cloud.validators import env_errors, validate_env_name, validate_image_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref", [
    "ubuntu", "ubuntu:22.04", "library/ubuntu", "docker.io/library/ubuntu:latest", "ghcr.io/org/image:tag",
    "localhost/app", "localhost:5000/app:dev", "127.0.0.1:5000/team/app", "registry.example.com:443/a/b/c:v1.2-rc_3",
    f"ubuntu@{DIGEST}", f"ghcr.io/org/image:tag@{DIGEST}", "a__b/c.d-e---f", "[::1]:5000/app", "My-Registry.io/app",
    "vllm/vllm-openai:v0.6.3",
])
def test_valid_references_pass(ref):
    assert validate_image_reference(ref) == ref


@pytest.mark.parametrize("ref", [
    "", "Ubuntu", "Library/ubuntu", "ubuntu:", ":tag", "ubuntu@sha256:abc", "ubuntu@md5:" + "a" * 32,
    f"ubuntu@{DIGEST.upper()}", "a b", " ubuntu", "ubuntu:" + "t" * 129, "ubuntu:-tag", "-ubuntu", "ubuntu-",
    "a..b", "a/", "/a", "a//b", "https://ghcr.io/org/image", "ghcr.io:/image", "x" * 256, "ubuntu:tag:tag",
    "registry.io:port/app", None, 42,
])
def test_invalid_references_fail(ref):
    with pytest.raises(ValidationError):
        validate_image_reference(ref)


@pytest.mark.parametrize("name", ["A", "_", "PATH", "my_var_2", "a" * 255])
def test_valid_env_names_pass(name):
    assert validate_env_name(name) == name


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A B", "É", "A=B", "a" * 256, 5])
def test_invalid_env_names_fail(name):
    with pytest.raises(ValidationError):
        validate_env_name(name)


def test_env_values_must_be_strings_without_nul():
    assert env_errors({"A": "1"}) is None
    assert set(env_errors({"A": 1, "B": None, "C": "x\x00y"})) == {"A", "B", "C"}


def test_env_is_bounded_in_count_and_size():
    assert isinstance(env_errors({f"V{i}": "" for i in range(201)}), str)
    assert isinstance(env_errors({"BIG": "x" * (64 * 1024)}), str)
    assert isinstance(env_errors("A=1"), str)
