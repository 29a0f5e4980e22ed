"""Fuzzing manifests and indexes against the digest and descriptor checks (issue 23).

Hypothesis builds image manifests and indexes whose digests are real, well-formed but absent,
or hostile (paths, climbs, other case, other lengths, other types), with sizes and descriptors
of any shape. Each is served by a registry on 127.0.0.1 to the real pull path (`ensure_disk`)
while every filesystem call is recorded (tests/agent/hostile_registry.py: audit hooks). For every
input: the pull ends in an image or an ImageError, nothing else; no path outside the store is
touched; every name the pull gives a file under blobs/ or disks/ is a 64-hex digest (with the
store's own temp-file suffixes); and a document holding a malformed digest never gets as far as
asking for a blob. Examples: 300 through the registry, 2,000 against Digest and CacheDir alone,
derandomized, so CI runs the same cases every time.
"""

import asyncio
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nodes.agent.images import ImageError, OciImageStore
from nodes.agent.oci.cache import CacheDir
from nodes.agent.oci.digest import Digest
from tests.agent.conftest_images import OCI_INDEX, OCI_MANIFEST, digest_of, image_parts, layer
from tests.agent.hostile_registry import FsCalls, HostileRegistry, outside

HEX = "0123456789abcdef"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Names the store may give files, by directory: a digest's hex, plus its own temp suffixes
# (fetch_blob's .part files, write_atomic's .<name>.<token>), and pull work dirs under tmp/.
NAMES = {
    "blobs/sha256": re.compile(r"[0-9a-f]{64}|\.[0-9a-f]{64}\.\d+\.[0-9a-f]+\.part"),
    "disks": re.compile(r"[0-9a-f]{64}\.(ext4|json)|\.[0-9a-f]{64}\.json\.[0-9a-f]{8}"),
    "refs": re.compile(r"[0-9a-f]{64}|\.[0-9a-f]{64}\.[0-9a-f]{8}"),
    "tmp": re.compile(r"[0-9a-f]{16}\.[0-9a-f]{8}"),
}
IMAGE = image_parts([layer(("app", "file", b"fuzz\n", 0o755))])
MANIFEST = json.loads(IMAGE["manifest"])
CONFIG, LAYER = MANIFEST["config"], MANIFEST["layers"][0]

hostile_digest = st.one_of(
    st.sampled_from([
        "sha256:/etc/x", "sha256:../../x", "sha256:../../../canary", "sha256:/", "sha256:", "sha256:.",
        "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha256:" + "a" * 64 + "/",
        "sha256:" + "a" * 64 + "\n", "sha512:" + "a" * 128, "SHA256:" + "a" * 64, "a" * 64, "",
        "sha256:" + "a" * 32 + "/../" + "a" * 28,
    ]),
    st.text(max_size=70).map(lambda t: "sha256:" + t),
    st.text(alphabet=HEX + "ABCDEF/.\\:\x00", min_size=60, max_size=70).map(lambda t: "sha256:" + t),
    st.text(max_size=20),
    st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False),
    st.lists(st.text(max_size=4), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
absent_digest = st.text(alphabet=HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h)


def digest_like(real: str):
    return st.one_of(st.just(real), hostile_digest, absent_digest)


def descriptor(real: dict, *, any_shape: bool):
    """A descriptor of `real` whose digest varies; with any_shape, its size and shape too."""
    size = st.one_of(st.just(real["size"]), st.integers(-3, 1 << 40), st.none(), st.text(max_size=3), st.floats())
    whole = st.fixed_dictionaries({"mediaType": st.just(real["mediaType"]), "digest": digest_like(real["digest"]),
                                   "size": size if any_shape else st.just(real["size"])})
    if not any_shape:
        return whole
    return st.one_of(whole, whole.map(lambda d: {k: v for k, v in d.items() if k != "digest"}),
                     st.none(), st.text(max_size=5), st.integers())


def manifest_docs(*, any_shape: bool):
    layers = st.lists(descriptor(LAYER, any_shape=any_shape), max_size=3)
    return st.fixed_dictionaries({
        "schemaVersion": st.just(2),
        "mediaType": st.sampled_from([OCI_MANIFEST, "", "application/json"]) if any_shape else st.just(OCI_MANIFEST),
        "config": descriptor(CONFIG, any_shape=any_shape),
        "layers": st.one_of(layers, st.none(), st.text(max_size=3)) if any_shape else layers,
    })


# Half the manifests are well shaped, so that their digests (config's and every layer's) are
# what the checks meet; the other half vary in shape and types as well.
manifests = st.one_of(manifest_docs(any_shape=False), manifest_docs(any_shape=True))


@st.composite
def documents(draw) -> tuple[bytes, bytes | None]:
    """(what the tag serves, the manifest an index points at, or None)."""
    manifest = json.dumps(draw(manifests)).encode()
    if not draw(st.booleans()):
        return manifest, None
    entry = st.fixed_dictionaries({
        "mediaType": st.just(OCI_MANIFEST),
        "digest": digest_like(digest_of(manifest)),
        "size": st.just(len(manifest)),
        "platform": st.fixed_dictionaries({"os": st.just("linux"),
                                           "architecture": st.sampled_from(["amd64", "arm64"])}),
    })
    entries = draw(st.lists(entry, min_size=1, max_size=3))
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode(), manifest


def malformed_digests(document: object) -> list[object]:
    """Every `digest` value in the document that is not a well-formed digest."""
    found = []
    if isinstance(document, dict):
        if "digest" in document and not (isinstance(document["digest"], str) and DIGEST.fullmatch(document["digest"])):
            found.append(document["digest"])
        for value in document.values():
            found += malformed_digests(value)
    elif isinstance(document, list):
        for value in document:
            found += malformed_digests(value)
    return found


def name_ok(path: str, root: Path) -> bool:
    rel = Path(path).relative_to(root).parts
    if len(rel) <= 1:
        return not rel or rel[0] in ("blobs", "disks", "refs", "tmp")
    if rel[0] == "blobs":
        return rel[1] == "sha256" and (len(rel) == 2 or (len(rel) == 3 and bool(NAMES["blobs/sha256"].fullmatch(rel[2]))))
    pattern = NAMES.get(rel[0])
    if pattern is None or not pattern.fullmatch(rel[1]):
        return False
    return len(rel) == 2 or rel[0] == "tmp"  # below a work dir: the image's own tree


async def pull(root: Path, served: tuple[bytes, bytes | None]):
    registry = HostileRegistry()
    await registry.start()
    try:
        top, inner = served
        registry.routes["/v2/fuzz/app/manifests/latest"] = (OCI_INDEX if inner else OCI_MANIFEST, top)
        if inner:
            registry.routes[f"/v2/fuzz/app/manifests/{digest_of(inner)}"] = (OCI_MANIFEST, inner)
        for digest, data in IMAGE.items():
            if digest != "manifest":
                registry.routes[f"/v2/fuzz/app/blobs/{digest}"] = ("application/octet-stream", data)
        addr = frozenset({registry.addr})
        store = OciImageStore(root, insecure_registries=addr, trusted_registries=addr)
        try:
            outcome = await store.ensure_disk(f"{registry.addr}/fuzz/app")
        except ImageError as exc:
            outcome = exc
        await asyncio.sleep(0.01)  # the client's connections close before the server goes
        return outcome, registry.blob_requests()
    finally:
        await registry.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "node"
    root.mkdir()
    (root / "canary").write_bytes(b"the node's own file\n")
    return root


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(served=documents())
def test_no_manifest_or_index_reaches_the_filesystem_with_a_name_but_a_digest(node, served):
    root = Path(tempfile.mkdtemp(prefix="images-", dir=node))
    try:
        with FsCalls() as calls:
            outcome, blob_requests = asyncio.run(pull(root, served))
        assert outside(calls, root) == [], outside(calls, root)
        assert (node / "canary").read_bytes() == b"the node's own file\n"
        touched = [path for _, path in calls if path.startswith(str(root))]
        touched += [str(p) for p in root.rglob("*")]
        assert [p for p in touched if not name_ok(p, root)] == []
        documents_served = [json.loads(doc) for doc in served if doc is not None]
        reason = "a disk" if not isinstance(outcome, ImageError) else re.sub(r"^image \S+ ", "", str(outcome))[:30]
        event(f"outcome: {reason}")
        if any(malformed_digests(doc) for doc in documents_served):
            assert isinstance(outcome, ImageError) and outcome.permanent, outcome
            assert blob_requests == [], "a malformed digest stops the pull before any blob"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(value=st.one_of(hostile_digest, absent_digest, st.binary(max_size=80)))
def test_a_digest_is_checked_once_and_the_cache_names_files_after_its_hex_only(value):
    root = Path("/nonexistent-cache-root")
    try:
        digest = Digest(value, "the fuzzed value")
    except ImageError as exc:
        assert not (isinstance(value, str) and DIGEST.fullmatch(value))
        assert "has a malformed digest" in str(exc) and exc.permanent
        return
    assert isinstance(value, str) and DIGEST.fullmatch(value)
    cache = CacheDir(root)
    assert cache.blob(digest) == root / "blobs" / "sha256" / value[7:]
    assert cache.disk(digest) == root / "disks" / f"{value[7:]}.ext4"
    assert cache.meta(digest) == root / "disks" / f"{value[7:]}.json"
    assert cache.work_dir(digest).parent == root / "tmp"
