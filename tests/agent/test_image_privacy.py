"""A private image stays private (issue 23). The node's image cache serves a pull only as far
as the registry would serve it: tenant B, naming tenant A's private `repo@sha256:...` on A's
node without credentials, gets the registry's 401 reason, not A's cached disk; a layer A pulled
is not B's because B's own manifest names its digest; and a registry that fails (429, 5xx) is
covered by the cache only for the tenant it let pull the image before. Registries here are the
real docker-registry with basic auth (conftest_images.auth_registry) and test servers on
127.0.0.1."""

import json

import pytest

from protocol import wire as p
from nodes.agent.images import ImageError, OciImageStore, PullProgress
from tests.agent.conftest_images import AuthRegistry, digest_of, image_parts, layer
from tests.agent.hostile_registry import HostileRegistry
from tests.agent.test_images import cat

A, B = "tenant-a", "tenant-b"


def store_for(tmp_path, *addrs: str) -> OciImageStore:
    trusted = frozenset(addrs)
    return OciImageStore(tmp_path / "images", insecure_registries=trusted, trusted_registries=trusted)


async def test_tenant_b_naming_tenant_as_private_digest_gets_the_registrys_401(auth_registry: AuthRegistry, tmp_path):
    store = store_for(tmp_path, auth_registry.addr)
    creds = (auth_registry.user, auth_registry.password)
    tagged = await store.ensure_disk(f"{auth_registry.addr}/gantry/hello:latest", credentials=creds, tenant=A)
    pinned = f"{auth_registry.addr}/gantry/hello@{tagged.digest}"
    disk = await store.ensure_disk(pinned, credentials=creds, tenant=A)  # A's replica, pinned: cached on A's node

    with pytest.raises(ImageError) as anonymous:
        await store.ensure_disk(pinned, tenant=B)
    with pytest.raises(ImageError) as guessed:
        await store.ensure_disk(pinned, credentials=(auth_registry.user, "guessed"), tenant=B)

    assert str(anonymous.value) == (f"registry {auth_registry.addr} requires credentials for gantry/hello "
                                    "(or the repository does not exist)")
    assert str(guessed.value) == f"registry {auth_registry.addr} rejected the credentials for gantry/hello"
    assert anonymous.value.permanent and guessed.value.permanent
    # A's own replicas still start from the cache, after the same check.
    seen: list[PullProgress] = []
    assert (await store.ensure_disk(pinned, credentials=creds, tenant=A, progress=seen.append)).path == disk.path
    assert [s.phase for s in seen] == ["cached"]


@pytest.fixture
async def private_registry() -> HostileRegistry:
    """Tenant A's registry: basic auth (alice), image team/app:v1 also served by digest."""
    registry = HostileRegistry()
    await registry.start()
    registry.basic = "alice:a-password"
    yield registry
    await registry.stop()


def serve_private_app(registry: HostileRegistry) -> tuple[str, bytes]:
    """Serves team/app:v1 (and by digest); returns its digest and its private layer."""
    private = layer(("secret", "file", b"tenant A's model weights\n", 0o644))
    parts = image_parts([private])
    registry.serve_image("team/app", "v1", parts)
    registry.routes[f"/v2/team/app/manifests/{digest_of(parts['manifest'])}"] = registry.routes["/v2/team/app/manifests/v1"]
    return digest_of(parts["manifest"]), private


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_failing_registry_is_covered_by_the_cache_for_the_same_tenant_only(private_registry, tmp_path, status):
    registry = private_registry
    digest, _ = serve_private_app(registry)
    store = store_for(tmp_path, registry.addr)
    creds = ("alice", "a-password")
    pinned, tagged = f"{registry.addr}/team/app@{digest}", f"{registry.addr}/team/app:v1"
    disk = await store.ensure_disk(pinned, credentials=creds, tenant=A)
    await store.ensure_disk(tagged, credentials=creds, tenant=A)
    registry.failing = status

    for ref in (pinned, tagged):
        # A, whose pull the registry allowed before: the cached copy, while the registry fails.
        assert (await store.ensure_disk(ref, credentials=creds, tenant=A)).path == disk.path
        # B, even holding working credentials, and a replica of no known tenant: the registry's
        # error, retried later like any registry outage; never A's disk, nor a hint that it is here.
        for tenant, credentials in ((B, None), (B, creds), (None, creds)):
            with pytest.raises(ImageError) as err:
                await store.ensure_disk(ref, credentials=credentials, tenant=tenant)
            assert f"HTTP {status}" in str(err.value) and not err.value.permanent
            assert "cache" not in str(err.value)


async def test_a_refusal_is_never_covered_by_the_cache(private_registry, tmp_path):
    """The registry's no (the credentials were revoked, the image deleted) is final, even for
    the tenant that pulled the image before."""
    registry = private_registry
    digest, _ = serve_private_app(registry)
    store = store_for(tmp_path, registry.addr)
    pinned = f"{registry.addr}/team/app@{digest}"
    await store.ensure_disk(pinned, credentials=("alice", "a-password"), tenant=A)
    registry.basic = "alice:rotated"
    with pytest.raises(ImageError, match="rejected the credentials") as err:
        await store.ensure_disk(pinned, credentials=("alice", "a-password"), tenant=A)
    assert err.value.permanent


async def test_a_cached_private_layer_is_not_served_to_another_repository(private_registry, tmp_path):
    """B knows the digest of A's private layer and publishes, on a registry of B's own, a
    manifest that lists it. B's registry does not have the blob: the node must not build B's
    image from A's copy."""
    digest, private = serve_private_app(private_registry)
    own = HostileRegistry()
    await own.start()
    try:
        store = store_for(tmp_path, private_registry.addr, own.addr)
        await store.ensure_disk(f"{private_registry.addr}/team/app@{digest}", credentials=("alice", "a-password"),
                                tenant=A)
        parts = image_parts([layer(("mine", "file", b"b", 0o644))])
        manifest = json.loads(parts["manifest"])
        manifest["layers"].append({**manifest["layers"][0], "digest": digest_of(private), "size": len(private)})
        parts["manifest"] = json.dumps(manifest).encode()
        own.serve_image("b/steal", "latest", parts)

        with pytest.raises(ImageError) as err:
            await store.ensure_disk(f"{own.addr}/b/steal", tenant=B)

        assert str(err.value).startswith(f"blob {digest_of(private)} of {own.addr}/b/steal not found")
        assert err.value.permanent
        assert f"/v2/b/steal/blobs/{digest_of(private)}" in own.requests
        assert len(list((tmp_path / "images" / "disks").glob("*.ext4"))) == 1, "only A's disk"
        # Once B's registry does serve those bytes (B has them: nothing was private), it works.
        own.routes[f"/v2/b/steal/blobs/{digest_of(private)}"] = ("application/octet-stream", private)
        disk = await store.ensure_disk(f"{own.addr}/b/steal", tenant=B)
        assert "model weights" in await cat(disk.path, "/secret")
    finally:
        await own.stop()


async def test_a_cached_private_disk_is_not_served_to_another_repository_with_the_same_manifest(
        private_registry, tmp_path):
    """B got hold of A's manifest bytes (not the layers) and serves them from a registry of B's
    own, which needs no blob to answer a manifest: the digest matches A's cached disk, but B's
    repository does not hold the blobs, so B does not get the disk."""
    digest, private = serve_private_app(private_registry)
    manifest = private_registry.routes["/v2/team/app/manifests/v1"]
    own = HostileRegistry()
    await own.start()
    try:
        store = store_for(tmp_path, private_registry.addr, own.addr)
        disk = await store.ensure_disk(f"{private_registry.addr}/team/app:v1", credentials=("alice", "a-password"),
                                       tenant=A)
        own.routes["/v2/b/copy/manifests/latest"] = manifest

        with pytest.raises(ImageError) as err:
            await store.ensure_disk(f"{own.addr}/b/copy", tenant=B)

        assert str(err.value).startswith("blob sha256:") and f" of {own.addr}/b/copy not found" in str(err.value)
        assert err.value.permanent
        # A repository that does hold every blob is served from the cache (nothing downloaded).
        for blob, data in image_parts([private]).items():
            if blob != "manifest":
                own.routes[f"/v2/b/copy/blobs/{blob}"] = ("application/octet-stream", data)
        assert (await store.ensure_disk(f"{own.addr}/b/copy", tenant=B)).path == disk.path
    finally:
        await own.stop()


def test_the_plane_names_the_tenant_in_the_spec_and_older_frames_still_decode():
    spec = p.ReplicaSpec(name="r-1", image="registry.example.com/a/app:1", tenant_id="7")
    frame = p.encode(p.ReplicaStart(command_id="c", replica=p.DesiredReplica("r-1", spec)))
    assert p.decode(frame).replica.spec.tenant_id == "7"
    older = json.loads(frame)
    del older["replica"]["spec"]["tenant_id"]  # a plane from before the field: same version
    assert p.decode(json.dumps(older)).replica.spec.tenant_id is None


@pytest.mark.django_db
def test_the_plane_puts_the_deployments_tenant_in_the_spec():
    from cloud.deployments.models import Replica
    from cloud.deployments.services.agents import replica_spec
    from tests.deployments.factories import deployment_for
    from tests.factories import TenantFactory

    tenant, other = TenantFactory(), TenantFactory()
    deployment_for(other)
    deployment = deployment_for(tenant)
    replica = Replica.objects.filter(deployment=deployment).first()
    assert replica_spec(replica, gpu_bdfs=[]).tenant_id == str(tenant.pk) != str(other.pk)
