"""No SSRF through image references, at pull time (issue 15): the agent refuses registries on
loopback, link-local, private or other special addresses, and names that resolve to one, unless
the operator trusts them; it connects only to addresses it checked, redirects and token services
included. No test here sends a packet beyond loopback: refused addresses are refused before any
socket is opened, and names resolve through a resolver of the test's own (or /etc/hosts)."""

import json
import os
import subprocess
from pathlib import Path

import httpcore
import pytest

from cloud import registries as plane
from nodes.agent.images import ImageError, OciImageStore
from nodes.agent.oci.egress import GuardedBackend, RegistryPolicy
from nodes.agent.oci.reference import parse_reference
from tests.agent.conftest_images import HELLO, LOCAL_REGISTRY, FakeRegistry, image_parts, layer

REPO = Path(__file__).resolve().parents[2]
REFUSAL_HINT = "--trusted-registry, GANTRY_TRUSTED_REGISTRIES"


def fake_resolver(answers: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"{host}: Name or service not known")
        return answers[host]
    return resolve


def store_with(tmp_path, *, trusted=(), answers=None, insecure=()) -> OciImageStore:
    policy = RegistryPolicy(trusted, resolve=fake_resolver(answers or {}))
    return OciImageStore(tmp_path / "images", policy=policy,
                         insecure_registries=frozenset({LOCAL_REGISTRY, *insecure}))


@pytest.mark.parametrize("registry", [
    "0.0.0.0", "127.1:5000", "10.0.0.1", "100.64.0.1", "[fe80::1]:5000", "[64:ff9b::a9fe:a9fe]", "[4000::1]",
    "localhost:5000", "registry.localhost", "8.8.8.8", "[2606:4700::1111]:443", "[::ffff:8.8.8.8]",
])
def test_plane_and_agent_refuse_the_same_references(registry):
    """Both judge with protocol/addresses.py (tests/agent/test_addresses.py proves the rule itself):
    what the plane refuses when a customer writes it, the node refuses before it connects."""
    reference = f"{registry}/team/app:1"
    plane_refuses = plane.registry_refusal(reference, trusted=[], resolve=lambda host: []) is not None
    try:
        RegistryPolicy([]).check_reference(parse_reference(reference))
        agent_refuses = False
    except ImageError:
        agent_refuses = True
    assert plane_refuses == agent_refuses == (not registry.startswith(("8.", "[2606", "[::ffff:8")))


@pytest.mark.parametrize(("ref", "reason"), [
    ("localhost:5000/gantry/hello", "registry localhost:5000 is a loopback address"),
    ("127.0.0.1:5000/gantry/hello", "registry 127.0.0.1:5000 is a loopback address"),
    ("127.1:5000/gantry/hello", "registry 127.1:5000 is a loopback address"),
    ("10.11.12.13:5000/team/app", "registry 10.11.12.13:5000 is a private address"),
    ("169.254.169.254/latest/app", "registry 169.254.169.254 is a link-local address"),
    ("[::1]:5000/gantry/hello", "registry [::1]:5000 is a loopback address"),
])
async def test_special_addresses_are_refused_before_any_connection(local_registry, tmp_path, ref, reason):
    # 127.0.0.1:5000 answers (local_registry) and is insecure, but not trusted by this store.
    store = store_with(tmp_path, insecure=("localhost:5000", "127.1:5000"))
    with pytest.raises(ImageError) as err:
        await store.ensure_disk(ref)
    assert err.value.permanent
    assert str(err.value).startswith(reason) and REFUSAL_HINT in str(err.value)
    assert not list((tmp_path / "images").glob("blobs/sha256/*")), "nothing was pulled"


async def test_a_name_resolving_to_loopback_is_refused(local_registry, tmp_path):
    store = store_with(tmp_path, answers={"registry.gantry.test": ["127.0.0.1"]},
                       insecure=("registry.gantry.test:5000",))
    with pytest.raises(ImageError) as err:
        await store.ensure_disk("registry.gantry.test:5000/gantry/hello")
    assert err.value.permanent
    assert str(err.value).startswith("registry registry.gantry.test:5000 resolves to 127.0.0.1, a loopback address")


async def test_one_special_address_among_public_ones_is_enough_to_refuse(tmp_path):
    store = store_with(tmp_path, answers={"registry.gantry.test": ["93.184.215.14", "::1"]})
    with pytest.raises(ImageError, match="resolves to ::1, a loopback address"):
        await store.ensure_disk("registry.gantry.test/gantry/hello")


async def test_the_trusted_registry_still_works(local_registry, tmp_path):
    disk = await store_with(tmp_path, trusted=[LOCAL_REGISTRY]).ensure_disk(HELLO)
    assert disk.path.is_file()


async def test_trust_is_per_port_unless_the_entry_names_none(local_registry, tmp_path):
    with pytest.raises(ImageError, match="is a loopback address"):
        await store_with(tmp_path, trusted=["127.0.0.1:5001"]).ensure_disk(HELLO)
    assert (await store_with(tmp_path, trusted=["127.0.0.1"]).ensure_disk(HELLO)).path.is_file()


async def test_a_redirect_to_an_untrusted_address_is_refused(fake_registry: FakeRegistry, local_registry, tmp_path):
    """Registries send blob downloads elsewhere (storage, a CDN); a trusted registry cannot
    lend its trust to where it sends the node."""
    parts = image_parts([layer(("app", "file", b"x", 0o755))])
    fake_registry.serve_image("gantry/app", "latest", parts)
    blob = json.loads(parts["manifest"])["layers"][0]["digest"]
    fake_registry.redirects[f"/v2/gantry/app/blobs/{blob}"] = f"http://{LOCAL_REGISTRY}/v2/gantry/hello/blobs/{blob}"
    store = store_with(tmp_path, trusted=[fake_registry.addr], insecure=(fake_registry.addr,))

    with pytest.raises(ImageError) as err:
        await store.ensure_disk(f"{fake_registry.addr}/gantry/app")

    assert str(err.value).startswith(
        f"registry {fake_registry.addr} sent this node to {LOCAL_REGISTRY}, which is a loopback address")
    assert err.value.permanent


async def test_the_token_service_is_checked_too(fake_registry: FakeRegistry, tmp_path):
    fake_registry.token = "t"
    fake_registry.realm = "http://169.254.169.254/latest/meta-data/iam"
    fake_registry.serve_image("gantry/app", "latest", image_parts([layer(("app", "file", b"x", 0o755))]))
    store = store_with(tmp_path, trusted=[fake_registry.addr], insecure=(fake_registry.addr,))

    with pytest.raises(ImageError) as err:
        await store.ensure_disk(f"{fake_registry.addr}/gantry/app")

    assert f"sent this node to 169.254.169.254:80, which is a link-local address" in str(err.value)


class RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self):
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connects.append((host, port))
        raise httpcore.ConnectError("recorded")

    async def sleep(self, seconds):
        pass


async def test_the_connection_goes_to_the_checked_address_not_the_name():
    """DNS rebinding: a second lookup could answer 127.0.0.1 after the check saw a public
    address. There is no second lookup: the socket is opened to the address checked."""
    inner = RecordingBackend()
    policy = RegistryPolicy([], resolve=fake_resolver({"registry.example.test": ["93.184.215.14", "93.184.215.15"]}))
    backend = GuardedBackend(policy, "registry.example.test", inner)

    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("registry.example.test", 443)

    assert inner.connects == [("93.184.215.14", 443), ("93.184.215.15", 443)]


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_the_agent_resolves_names_itself_at_pull_time(local_registry, agent_cli, tmp_path):
    """The real resolver: `vm run` in a mount namespace whose /etc/hosts maps a registry name
    to loopback (nsswitch reads files before DNS, so no query leaves). The pull is refused with
    the reason; the same command with the name trusted pulls from that very registry."""
    if os.geteuid() != 0:
        pytest.skip("mount namespaces need root")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 registry.gantry.test\n")

    def vm_run(name: str, *extra: str) -> tuple[int, dict]:
        argv = agent_cli.argv("vm", "run", name, "--image", "registry.gantry.test:5000/gantry/hello:latest",
                              "--insecure-registry", "registry.gantry.test:5000", *extra)
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        done = subprocess.run(["unshare", "--mount", "sh", "-c", script, str(hosts), *argv], capture_output=True,
                              text=True, timeout=240, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, json.loads(done.stdout.splitlines()[-1])

    # Trust names what customers write: 127.0.0.1:5000 being trusted does not cover a name for it.
    code, info = vm_run("refused", "--trusted-registry", LOCAL_REGISTRY)
    assert code == 1 and info["permanent"] is True
    assert info["error"].startswith("registry registry.gantry.test:5000 resolves to 127.0.0.1, a loopback address")

    code, info = vm_run("trusted", "--trusted-registry", "registry.gantry.test:5000")
    assert code == 0 and info["state"] == "running", info
    agent_cli("vm", "rm", "trusted")
