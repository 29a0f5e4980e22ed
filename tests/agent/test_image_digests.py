"""Image digests are data, never paths (issue 23). A registry the test controls (on 127.0.0.1;
the real one refuses to store such manifests) serves manifests and indexes whose digests are
paths or otherwise malformed to the real agent pull path; each is refused, saying the digest is
malformed, before any blob is asked for, and no file outside the store is read, written or
removed. A blob in the cache is hashed again before use: a tampered one is deleted and fetched
again. What the cache reads back from its own files is checked as well. The hypothesis fuzz of
manifests and indexes is in test_image_digest_fuzz.py."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from nodes.agent.images import ImageError, OciImageStore
from tests.agent.conftest_images import OCI_INDEX, OCI_MANIFEST, digest_of, image_parts, layer
from tests.agent.hostile_registry import FsCalls, HostileRegistry, outside
from tests.agent.test_images import cat

CANARY = b'{"config": {"Env": ["STOLEN=the node\'s own file"]}, "os": "linux", "architecture": "amd64"}'
MALFORMED = "has a malformed digest"


@pytest.fixture
async def registry() -> HostileRegistry:
    registry = HostileRegistry()
    await registry.start()
    yield registry
    await registry.stop()


@pytest.fixture
def node(tmp_path) -> Path:
    """A node's directory: canaries beside the (future) image store, which a digest that is a
    path would name: <node>/canary (three levels up from blobs/sha256/), <node>/canary.json and
    <node>/canary.ext4 (two levels up from disks/)."""
    root = tmp_path / "node"
    root.mkdir()
    for name in ("canary", "canary.json", "canary.ext4"):
        (root / name).write_bytes(CANARY)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root but the store, with its content hash and mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "images"]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            data = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            found[str(path)] = (data, st.st_mtime_ns, st.st_mode)
    return found


def store_for(node: Path, registry: HostileRegistry) -> OciImageStore:
    addr = frozenset({registry.addr})
    return OciImageStore(node / "images", insecure_registries=addr, trusted_registries=addr)


def hostile_digests(node: Path) -> dict[str, str]:
    return {
        "absolute path": f"sha256:{node}/canary",
        "host path": "sha256:/etc/x",
        "climbing path": "sha256:../../../canary",
        "climbing after hex": f"sha256:{'a' * 64}/../../../../canary",
        "uppercase hex": "sha256:" + "A" * 64,
        "63 hex digits": "sha256:" + "a" * 63,
        "65 hex digits": "sha256:" + "a" * 65,
        "trailing newline": "sha256:" + "a" * 64 + "\n",
        "other algorithm": "sha512:" + "a" * 128,
        "no algorithm": "a" * 64,
        "empty": "",
    }


def _entries(node: Path):
    for where in ("config", "layer", "index entry"):
        for name, digest in hostile_digests(node).items():
            yield pytest.param(where, digest, id=f"{where}-{name}")
    yield pytest.param("config", 42, id="config-not-a-string")
    yield pytest.param("layer", None, id="layer-null")


@pytest.mark.parametrize(("where", "digest"), list(_entries(Path("/NODE"))))
async def test_a_malformed_digest_is_refused_before_anything_touches_the_disk(registry, node, where, digest):
    if isinstance(digest, str):
        digest = digest.replace("/NODE", str(node))
    parts = image_parts([layer(("app", "file", b"app", 0o755))])
    manifest = json.loads(parts.pop("manifest"))
    if where == "config":
        manifest["config"]["digest"] = digest
    elif where == "layer":
        manifest["layers"].append({"mediaType": manifest["layers"][0]["mediaType"], "digest": digest,
                                   "size": len(CANARY)})
    body = json.dumps(manifest).encode()
    if where == "index entry":
        registry.routes[f"/v2/evil/app/manifests/{digest_of(body)}"] = (OCI_MANIFEST, body)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest_of(body), "size": len(body),
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    registry.routes["/v2/evil/app/manifests/latest"] = (OCI_INDEX if where == "index entry" else OCI_MANIFEST, body)
    # What a path-digest would name, served too: the old code fetched what it had not cached.
    for blob_digest, data in parts.items():
        registry.routes[f"/v2/evil/app/blobs/{blob_digest}"] = ("application/octet-stream", data)
    store = store_for(node, registry)
    before = snapshot(node)

    with FsCalls() as calls, pytest.raises(ImageError) as err:
        await store.ensure_disk(f"{registry.addr}/evil/app")

    assert MALFORMED in str(err.value) and err.value.permanent, str(err.value)
    assert "a digest is sha256: followed by 64 lowercase hex digits" in str(err.value)
    assert registry.blob_requests() == [], "refused before any blob is asked for"
    assert [r for r in registry.requests if "/manifests/" in r] == ["/v2/evil/app/manifests/latest"]
    assert outside(calls, store.root) == []
    assert snapshot(node) == before
    assert not list((store.root / "blobs" / "sha256").iterdir()) and not list((store.root / "disks").iterdir())


async def test_a_well_formed_image_still_pulls(registry, node):
    """The control for the test above: the same image, digests intact, is pulled and unpacked,
    touching only the store."""
    registry.serve_image("fine/app", "latest", image_parts([layer(("app", "file", b"app", 0o755))]))
    store = store_for(node, registry)
    before = snapshot(node)
    with FsCalls() as calls:
        disk = await store.ensure_disk(f"{registry.addr}/fine/app")
    assert "app" in await cat(disk.path, "/app")
    assert outside(calls, store.root) == [], outside(calls, store.root)
    assert snapshot(node) == before


# -- blobs already in the cache -----------------------------------------------------------------

def two_images_sharing(shared: str) -> tuple[dict, dict, str]:
    """Two images that share one blob (`shared`: "layer" or "config") and differ in another."""
    common = layer(("app", "file", b"the real app\n", 0o755))
    if shared == "layer":
        first = image_parts([common], config={"Env": ["WHICH=first"]})
        second = image_parts([common], config={"Env": ["WHICH=second"]})
        return first, second, digest_of(common)
    # One config, two manifests: the second lists one more layer (the agent does not hold a
    # config's diff_ids against the layers, so the config can stay the same).
    first = image_parts([common])
    extra = layer(("two", "file", b"2", 0o644))
    manifest = json.loads(first["manifest"])
    manifest["layers"].append({**manifest["layers"][0], "digest": digest_of(extra), "size": len(extra)})
    second = {**first, digest_of(extra): extra, "manifest": json.dumps(manifest).encode()}
    return first, second, manifest["config"]["digest"]


def tamper(path: Path, how: str, node: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    if how == "same size":
        path.write_bytes(bytes(b ^ 0x55 for b in data))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "symlink":
        path.symlink_to(node / "canary")


@pytest.mark.parametrize("shared", ["layer", "config"])
@pytest.mark.parametrize("how", ["same size", "truncated", "symlink"])
async def test_a_tampered_cached_blob_is_deleted_and_fetched_again(registry, node, shared, how):
    first, second, blob = two_images_sharing(shared)
    registry.serve_image("team/first", "latest", first)
    registry.serve_image("team/second", "latest", second)
    store = store_for(node, registry)
    await store.ensure_disk(f"{registry.addr}/team/first")
    cached = store.root / "blobs" / "sha256" / blob.split(":")[1]
    tamper(cached, how, node)
    before = snapshot(node)
    registry.requests.clear()

    disk = await store.ensure_disk(f"{registry.addr}/team/second")

    assert f"/v2/team/second/blobs/{blob}" in registry.requests, "the tampered blob was fetched again"
    assert digest_of(cached.read_bytes()) == blob and not cached.is_symlink()
    assert "the real app" in await cat(disk.path, "/app")
    if shared == "layer":
        assert disk.config.env["WHICH"] == "second"
    assert snapshot(node) == before, "a symlinked blob is removed, never what it points at"


async def test_an_intact_cached_blob_is_not_downloaded_again(registry, node):
    first, second, blob = two_images_sharing("layer")
    registry.serve_image("team/first", "latest", first)
    registry.serve_image("team/second", "latest", second)
    store = store_for(node, registry)
    await store.ensure_disk(f"{registry.addr}/team/first")
    registry.requests.clear()
    await store.ensure_disk(f"{registry.addr}/team/second")
    # Asked about (a HEAD: this repository must serve it too), not downloaded: the fake
    # registry records both alike, so count them: once, where a download would GET it after.
    assert registry.requests.count(f"/v2/team/second/blobs/{blob}") == 1


# -- the cache's own files, read back -------------------------------------------------------------

async def test_cache_entries_naming_paths_are_ignored(registry, node):
    """A ref entry or a disk's metadata that names a path (written by an older agent that took
    digests as paths, or by anything else) is neither served nor followed on eviction."""
    registry.serve_image("team/app", "latest", image_parts([layer(("app", "file", b"app", 0o755))]))
    store = store_for(node, registry)
    ref = f"{registry.addr}/team/app:latest"
    disk = await store.ensure_disk(ref)
    store.root.joinpath("refs", hashlib.sha256(ref.encode()).hexdigest()).write_text("sha256:../../canary")
    pinned = f"{registry.addr}/team/app@sha256:{'0' * 64}"
    store.root.joinpath("refs", hashlib.sha256(pinned.encode()).hexdigest()).write_text("sha256:../../canary")
    meta = json.loads(disk.path.with_suffix(".json").read_text())
    meta["blobs"].append("sha256:../../../canary")
    disk.path.with_suffix(".json").write_text(json.dumps(meta))
    before = snapshot(node)

    with FsCalls() as calls:
        with pytest.raises(ImageError, match="not found"):
            await store.ensure_disk(pinned)  # not the planted entry: the registry decides
        registry.failing = 503
        with pytest.raises(ImageError, match="HTTP 503"):
            await store.ensure_disk(ref, tenant="t")  # no fallback to a path
        store.cache_limit_bytes = 0
        await store.evict(in_use=set())

    assert outside(calls, store.root) == []
    assert snapshot(node) == before


def test_the_cache_builds_paths_from_checked_digests_only(tmp_path):
    from nodes.agent.oci.cache import CacheDir
    from nodes.agent.oci.digest import Digest

    cache = CacheDir(tmp_path)
    good = Digest("sha256:" + "ab" * 32)
    assert cache.blob(good) == tmp_path / "blobs" / "sha256" / ("ab" * 32)
    for unchecked in ("sha256:" + "ab" * 32, "sha256:/etc/x"):
        with pytest.raises(TypeError):
            cache.blob(unchecked)
    with pytest.raises(ImageError, match=MALFORMED):
        Digest("sha256:/etc/x", "layer 0")


@pytest.mark.parametrize("text", ['["sha256:../x"]', '"sha256:/etc/x"', "42", "null"])
def test_disk_metadata_that_is_not_an_object_counts_as_absent(tmp_path, text):
    from nodes.agent.oci.cache import CacheDir
    from nodes.agent.oci.digest import Digest

    cache = CacheDir(tmp_path)
    cache.mkdirs()
    digest = Digest("sha256:" + "cd" * 32)
    cache.disk(digest).write_bytes(b"")
    cache.meta(digest).write_text(text)
    assert cache.read_meta(digest) is None
