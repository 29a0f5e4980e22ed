"""OciImageStore against real registries (docker-registry on loopback) and real tools
(mkfs.ext4, qemu-img, debugfs); only the digest-mismatch case needs a registry that lies."""

import asyncio
import gzip
import json
import os
import time
from pathlib import Path

import pytest

from nodes.agent.images import ImageError, OciImageStore, PullProgress
from nodes.agent.oci.egress import RegistryPolicy
from nodes.agent.oci.reference import parse_reference
from tests.agent.conftest_images import (
    HELLO, LOCAL_REGISTRY, AuthRegistry, FakeRegistry, digest_of, image_parts, layer, push_image, push_index,
)

TRUSTED = frozenset({LOCAL_REGISTRY})  # the loopback registries here are the operator's own


def own_registry_store(root: Path, addr: str) -> OciImageStore:
    """A store reaching `addr` (a test registry on loopback) over plain HTTP, and trusting it."""
    return OciImageStore(root, insecure_registries=frozenset({addr}), trusted_registries=frozenset({addr}))


async def run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def ls(disk: Path, directory: str) -> set[str]:
    """Names in `directory` of an ext4 image, read with debugfs (no mount needed)."""
    out = await run("debugfs", "-R", f"ls -p {directory}", str(disk))
    # ls -p prints /inode/mode/uid/gid/name/size/ per entry
    return {f.split("/")[5] for f in out.splitlines() if f.startswith("/")} - {".", ".."}


async def cat(disk: Path, path: str) -> str:
    return await run("debugfs", "-R", f"cat {path}", str(disk))


@pytest.fixture
def store(tmp_path) -> OciImageStore:
    return OciImageStore(tmp_path / "images", trusted_registries=TRUSTED)


async def test_pulls_hello_into_an_ext4_disk(local_registry, store):
    seen: list[PullProgress] = []
    disk = await store.ensure_disk(HELLO, progress=seen.append)

    assert disk.ref == HELLO and disk.digest.startswith("sha256:")
    assert disk.path.is_file() and disk.path.stat().st_size == disk.size_bytes
    assert {"hello.sh", "bin", "etc", "tmp"} <= await ls(disk.path, "/")
    assert {"busybox", "sh", "httpd"} <= await ls(disk.path, "/bin")
    assert "GREETING" in await cat(disk.path, "/hello.sh")
    assert disk.config.env["GREETING"] == "Hello from Gantry" and disk.config.env["PORT"] == "8080"
    assert disk.config.entrypoint == ["/hello.sh"] and disk.config.cmd == ["serve"]
    assert disk.config.exposed_ports == [8080] and disk.config.workdir == "/"
    phases = [p.phase for p in seen]
    assert phases[0] == "resolve" and phases[-1] == "disk" and "unpack" in phases
    pulls = [p for p in seen if p.phase == "pull"]
    assert pulls[-1].total_bytes > 900_000 and pulls[-1].done_bytes == pulls[-1].total_bytes
    assert not list((store.root / "tmp").iterdir()), "the unpacked rootfs is removed"


async def test_second_pull_is_a_cache_hit(local_registry, store):
    first = await store.ensure_disk(HELLO)
    blobs = {p: p.stat().st_mtime_ns for p in (store.root / "blobs" / "sha256").iterdir()}
    seen: list[PullProgress] = []

    second = await store.ensure_disk("127.0.0.1:5000/gantry/hello", progress=seen.append)

    assert second == first
    assert [p.phase for p in seen] == ["resolve", "cached"]
    assert {p: p.stat().st_mtime_ns for p in (store.root / "blobs" / "sha256").iterdir()} == blobs


async def test_concurrent_pulls_of_one_image_build_one_disk(local_registry, store):
    phases: list[list[str]] = [[], []]
    disks = await asyncio.gather(*(
        store.ensure_disk(HELLO, progress=lambda p, i=i: phases[i].append(p.phase)) for i in range(2)))

    assert disks[0] == disks[1]
    assert sorted("pull" in p for p in phases) == [False, True]
    stem = disks[0].path.stem
    assert sorted(p.name for p in (store.root / "disks").iterdir()) == [f"{stem}.ext4", f"{stem}.json"]


async def test_digest_reference_is_not_pulled_again_once_cached(local_registry, store):
    disk = await store.ensure_disk(HELLO)
    pinned = f"127.0.0.1:5000/gantry/hello@{disk.digest}"
    assert (await store.ensure_disk(pinned)).digest == disk.digest
    seen: list[PullProgress] = []
    # Only a HEAD of the manifest asks the registry whether this pull may have it.
    assert (await store.ensure_disk(pinned, progress=seen.append)).path == disk.path
    assert [p.phase for p in seen] == ["cached"]


async def test_overlay_is_a_thin_qcow2_backed_by_the_cached_disk(local_registry, store, tmp_path):
    disk = await store.ensure_disk(HELLO)
    overlay = tmp_path / "vm" / "root.qcow2"
    overlay.parent.mkdir()

    await store.create_overlay(disk, overlay)

    info = json.loads(await run("qemu-img", "info", "--output=json", str(overlay)))
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(disk.path) and info["backing-filename-format"] == "raw"
    assert info["virtual-size"] == disk.size_bytes
    assert info["actual-size"] < 1 << 20


async def test_whiteouts_and_opaque_dirs_are_applied(local_registry, store):
    lower = layer(("a", "dir", None, 0o755), ("a/keep", "file", b"keep", 0o644),
                  ("a/gone", "file", b"gone", 0o644), ("o", "dir", None, 0o750),
                  ("o/old", "file", b"old", 0o644), ("o/sub", "dir", None, 0o755),
                  ("o/sub/deep", "file", b"deep", 0o644), ("x", "file", b"x", 0o600))
    upper = layer(("a/.wh.gone", "file", b"", 0o644), ("o/.wh..wh..opq", "file", b"", 0o644),
                  ("o/new", "file", b"new", 0o4755), ("x", "file", b"replaced", 0o640),
                  ("y", "hardlink", "x", 0o640))
    await push_image(local_registry, "gantry-test/whiteout", "v1", [lower, upper])

    disk = await store.ensure_disk(f"{local_registry}/gantry-test/whiteout:v1")

    assert await ls(disk.path, "/a") == {"keep"}
    assert await ls(disk.path, "/o") == {"new"}
    assert await cat(disk.path, "/x") == "replaced"
    stat = await run("debugfs", "-R", "stat /o/new", str(disk.path))
    assert "Mode:  04755" in stat
    links = await run("debugfs", "-R", "stat /y", str(disk.path))
    assert "Links: 2" in links


async def test_zstd_layers_are_applied(local_registry, store):
    gz = layer(("etc", "dir", None, 0o755), ("etc/motd", "file", b"from gzip", 0o644))
    upper = layer(("etc/motd", "file", b"zstd works", 0o644))
    proc = await asyncio.create_subprocess_exec("zstd", "-q", "-c", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    zst, _ = await proc.communicate(gzip.decompress(upper))
    await push_image(local_registry, "gantry-test/zstd", "latest", [gz, zst])

    disk = await store.ensure_disk(f"{local_registry}/gantry-test/zstd")

    assert await cat(disk.path, "/etc/motd") == "zstd works"


async def test_multi_arch_index_resolves_to_amd64(local_registry, store):
    files = [layer(("arch", "file", b"amd64", 0o644))]
    amd64 = await push_image(local_registry, "gantry-test/multi", "amd64", files)
    arm64 = await push_image(local_registry, "gantry-test/multi", "arm64",
                             [layer(("arch", "file", b"arm64", 0o644))], arch="arm64")
    await push_index(local_registry, "gantry-test/multi", "latest", [("arm64", arm64), ("amd64", amd64)])
    await push_index(local_registry, "gantry-test/multi", "arm-only", [("arm64", arm64)])

    disk = await store.ensure_disk(f"{local_registry}/gantry-test/multi")

    assert disk.digest == amd64
    assert await cat(disk.path, "/arch") == "amd64"
    with pytest.raises(ImageError, match=r"no linux/amd64 variant \(it offers linux/arm64\)") as err:
        await store.ensure_disk(f"{local_registry}/gantry-test/multi:arm-only")
    assert err.value.permanent


D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("ref, canonical, endpoint", [
    ("busybox", "docker.io/library/busybox:latest", "registry-1.docker.io"),
    ("nginx:1.27-alpine", "docker.io/library/nginx:1.27-alpine", "registry-1.docker.io"),
    ("bitnami/redis", "docker.io/bitnami/redis:latest", "registry-1.docker.io"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1", "registry-1.docker.io"),
    ("ghcr.io/acme/app/api:v1.2", "ghcr.io/acme/app/api:v1.2", "ghcr.io"),
    ("localhost/app", "localhost/app:latest", "localhost"),
    ("127.0.0.1:5000/gantry/hello", "127.0.0.1:5000/gantry/hello:latest", "127.0.0.1:5000"),
    (f"quay.io/x/y@{D}", f"quay.io/x/y@{D}", "quay.io"),
    (f"quay.io/x/y:tag@{D}", f"quay.io/x/y:tag@{D}", "quay.io"),
])
def test_references_get_docker_defaults(ref, canonical, endpoint):
    parsed = parse_reference(ref)
    assert str(parsed) == canonical and parsed.endpoint == endpoint
    assert parsed.reference == (D if "@" in ref else canonical.rsplit(":", 1)[1])


@pytest.mark.parametrize("ref, reason", [
    ("", "it is empty"),
    ("Gantry/Hello", "must be lowercase"),
    ("127.0.0.1:5000/gantry/hello:bad tag", "whitespace"),
    ("127.0.0.1:5000/gantry/hello:-x", "tag '-x' is not valid"),
    ("gantry/hello@sha256:abc", "the digest must be sha256"),
    ("127.0.0.1:5000//hello", "'' is not a valid repository path component"),
])
async def test_bad_reference_is_refused(store, ref, reason):
    with pytest.raises(ImageError, match=reason) as err:
        await store.ensure_disk(ref)
    assert err.value.permanent and "invalid image reference" in str(err.value)


async def test_unreachable_registry_is_transient_and_named(store):
    with socket_closed() as port:
        store.insecure_registries = frozenset({f"127.0.0.1:{port}"})
        store.policy = RegistryPolicy([f"127.0.0.1:{port}"])
        with pytest.raises(ImageError) as err:
            await store.ensure_disk(f"127.0.0.1:{port}/gantry/hello")
    assert str(err.value) == f"registry 127.0.0.1:{port} is unreachable: Connection refused"
    assert not err.value.permanent


async def test_missing_tag_is_permanent(local_registry, store):
    with pytest.raises(ImageError) as err:
        await store.ensure_disk(f"{local_registry}/gantry/hello:no-such-tag")
    assert "image 127.0.0.1:5000/gantry/hello:no-such-tag not found" in str(err.value)
    assert err.value.permanent


async def test_credentials_are_checked_by_the_registry(auth_registry: AuthRegistry, tmp_path):
    store = own_registry_store(tmp_path, auth_registry.addr)
    ref = f"{auth_registry.addr}/gantry/hello"

    with pytest.raises(ImageError) as wrong:
        await store.ensure_disk(ref, credentials=(auth_registry.user, "wrong"))
    with pytest.raises(ImageError) as missing:
        await store.ensure_disk(ref)
    disk = await store.ensure_disk(ref, credentials=(auth_registry.user, auth_registry.password))

    assert str(wrong.value) == f"registry {auth_registry.addr} rejected the credentials for gantry/hello"
    assert wrong.value.permanent
    assert "requires credentials for gantry/hello" in str(missing.value) and missing.value.permanent
    assert "hello.sh" in await ls(disk.path, "/")


async def test_plain_http_only_for_insecure_registries(local_registry, tmp_path):
    store = OciImageStore(tmp_path, insecure_registries=frozenset(), trusted_registries=TRUSTED)
    with pytest.raises(ImageError, match="registry 127.0.0.1:5000 is unreachable"):
        await store.ensure_disk(HELLO)


async def test_digest_mismatch_is_refused_and_nothing_is_cached(fake_registry: FakeRegistry, tmp_path):
    store = own_registry_store(tmp_path, fake_registry.addr)
    good = layer(("file", "file", b"the real content", 0o644))
    parts = image_parts([good])
    parts[digest_of(good)] = layer(("file", "file", b"tampered content", 0o644))
    fake_registry.serve_image("gantry/tampered", "latest", parts)

    with pytest.raises(ImageError) as err:
        await store.ensure_disk(f"{fake_registry.addr}/gantry/tampered")

    assert str(err.value).startswith(f"digest mismatch for blob {digest_of(good)} of "
                                     f"{fake_registry.addr}/gantry/tampered: got ")
    assert err.value.permanent
    assert not (tmp_path / "blobs" / "sha256" / digest_of(good).split(":")[1]).exists()
    assert [p.name for p in (tmp_path / "blobs" / "sha256").iterdir() if p.name.startswith(".")] == []
    assert not list((tmp_path / "disks").iterdir())


@pytest.mark.parametrize("body, reason", [
    (b"not json", "a manifest that is not JSON"),
    (b'{"schemaVersion": 2, "layers": []}', "a malformed manifest"),
    (b'{"schemaVersion": 2, "manifests": [{"platform": {"os": "linux", "architecture": "amd64"}}]}',
     "a malformed index"),
    (b'{"schemaVersion": 1, "fsLayers": []}', "schema 1 manifests, which are not supported"),
])
async def test_malformed_manifests_are_refused(fake_registry: FakeRegistry, tmp_path, body, reason):
    store = own_registry_store(tmp_path, fake_registry.addr)
    fake_registry.routes["/v2/gantry/odd/manifests/latest"] = ("application/json", body)
    with pytest.raises(ImageError, match=reason) as err:
        await store.ensure_disk(f"{fake_registry.addr}/gantry/odd")
    assert err.value.permanent


async def test_cached_disk_serves_a_tag_while_its_registry_is_down(fake_registry: FakeRegistry, tmp_path):
    store = own_registry_store(tmp_path, fake_registry.addr)
    fake_registry.serve_image("gantry/app", "v1", image_parts([layer(("app", "file", b"v1", 0o755))]))
    ref = f"{fake_registry.addr}/gantry/app:v1"
    disk = await store.ensure_disk(ref, tenant="tenant-a")
    await fake_registry.stop()
    seen: list[PullProgress] = []

    again = await store.ensure_disk(ref, tenant="tenant-a", progress=seen.append)

    assert again.path == disk.path and seen[-1].phase == "cached"
    # Only for the tenant the registry let pull it (tests/agent/test_image_privacy.py).
    for other in ("tenant-b", None):
        with pytest.raises(ImageError, match="unreachable"):
            await store.ensure_disk(ref, tenant=other)
    with pytest.raises(ImageError, match="unreachable") as err:
        await store.ensure_disk(f"{fake_registry.addr}/gantry/app:v2")
    assert not err.value.permanent


async def test_anonymous_bearer_token_flow(fake_registry: FakeRegistry, tmp_path):
    store = own_registry_store(tmp_path, fake_registry.addr)
    fake_registry.token = "anon-token"
    fake_registry.serve_image("library/app", "latest", image_parts([layer(("app", "file", b"x", 0o755))]))

    disk = await store.ensure_disk(f"{fake_registry.addr}/library/app")

    assert await ls(disk.path, "/") >= {"app"}
    assert fake_registry.token_requests[0] == "scope=repository%3Alibrary%2Fapp%3Apull&service=fake-registry"


async def test_token_service_refusing_credentials_is_permanent(fake_registry: FakeRegistry, tmp_path):
    store = own_registry_store(tmp_path, fake_registry.addr)
    fake_registry.token, fake_registry.token_basic = "secret-token", "bob:right"
    fake_registry.serve_image("bob/app", "latest", image_parts([layer(("app", "file", b"x", 0o755))]))
    ref = f"{fake_registry.addr}/bob/app"

    with pytest.raises(ImageError) as err:
        await store.ensure_disk(ref, credentials=("bob", "wrong"))
    assert str(err.value) == f"registry {fake_registry.addr} rejected the credentials for bob/app"
    assert err.value.permanent
    assert (await store.ensure_disk(ref, credentials=("bob", "right"))).path.is_file()


def usage(root: Path) -> int:
    files = [*(root / "disks").glob("*.ext4"), *(root / "blobs" / "sha256").iterdir()]
    return sum(p.stat().st_blocks * 512 for p in files)


async def test_eviction_drops_least_recently_used_images_not_in_use(local_registry, tmp_path):
    refs = {}
    for name in "abc":
        await push_image(local_registry, f"gantry-test/evict-{name}", "latest",
                         [layer((name, "file", name.encode() * 1000, 0o644))])
        refs[name] = f"{local_registry}/gantry-test/evict-{name}"
    store = OciImageStore(tmp_path, trusted_registries=TRUSTED)
    a, b, c = [await store.ensure_disk(refs[n]) for n in "abc"]
    overlay = tmp_path / "a.qcow2"
    await store.create_overlay(a, overlay)  # a use: b is now the least recent, then c
    assert await store.evict(in_use=set()) == []  # under the 20 GiB default

    store.cache_limit_bytes = usage(tmp_path) - 1
    assert await store.evict(in_use={b.digest}) == [c.digest]
    assert not c.path.exists() and b.path.exists() and a.path.exists()

    store.cache_limit_bytes = 0
    assert await store.evict(in_use={b.digest}) == [a.digest]
    assert b.path.exists() and not a.path.exists()
    blobs = {p.name for p in (tmp_path / "blobs" / "sha256").iterdir()}
    assert blobs == {json_blob.split(":")[1] for json_blob in json.loads(
        (tmp_path / "disks" / f"{b.path.stem}.json").read_text())["blobs"]}
    again = await store.ensure_disk(refs["a"])  # evicted images are simply pulled again
    assert again.path.is_file()


async def test_eviction_clears_old_leftovers_but_not_fresh_ones(tmp_path):
    store = OciImageStore(tmp_path, trusted_registries=TRUSTED)
    await store.evict(in_use=set())  # creates the layout
    old, fresh = tmp_path / "tmp" / "crashed.0000", tmp_path / "tmp" / "another-process.0000"
    old_part = tmp_path / "blobs" / "sha256" / f".{'1' * 64}.99.part"
    fresh_part = tmp_path / "blobs" / "sha256" / f".{'2' * 64}.99.part"
    for path in (old, fresh):
        (path / "rootfs").mkdir(parents=True)
    for path in (old_part, fresh_part):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for path in (old, old_part):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert await store.evict(in_use=set()) == []

    assert not old.exists() and not old_part.exists()
    assert fresh.exists() and fresh_part.exists()


def socket_closed():
    """A loopback port nothing listens on (bound, then closed)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        yield port
    return closed()
