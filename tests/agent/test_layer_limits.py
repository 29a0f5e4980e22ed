"""A layer cannot take more of a node than its limits (issue 23): a few compressed kilobytes
that expand past the image's byte budget, too many entries, too long a name, too big an
extended header, or a sparse file stop the pull with a reason that says which limit, and
leave nothing behind. The bombs go through the real local registry and image store, with a
small limit set on the store; the per-entry limits run apply_layer on its own."""

import asyncio
import io
import os
import tarfile

import pytest

from nodes.agent.cli import build_parser, main, runtime_from_args
from nodes.agent.images import ImageError, OciImageStore
from nodes.agent.oci.layers import UnpackBudget, UnpackLimits, apply_layer
from tests.agent.conftest_images import LOCAL_REGISTRY, digest_of, push_image
from tests.agent.layer_kit import Entry, compress, make_host, snapshot, tar_bytes, write_layer

MiB = 1 << 20
BUDGET = "the image unpacks to more than 1.0 MiB, this node's limit for one image (gantry-agent --max-unpacked-bytes)"


def bomb(how: str, *, after_end: bool = False) -> bytes:
    """8 MiB of zeros in a few kilobytes: as one file, or (after_end) after the tar's end
    marker, where tarfile stops reading but a zstd stream goes on."""
    if after_end:
        return compress(tar_bytes([Entry("small", data=b"x")]) + bytes(8 * MiB), how)
    return compress(tar_bytes([Entry("etc", "dir", mode=0o755), Entry("zeros", data=bytes(8 * MiB))]), how)


@pytest.fixture
def limited(tmp_path, local_registry):
    return OciImageStore(tmp_path / "images", trusted_registries=frozenset({LOCAL_REGISTRY}),
                         unpack_limits=UnpackLimits(max_bytes=1 * MiB))


def assert_nothing_left(store: OciImageStore) -> None:
    assert not list((store.root / "tmp").iterdir()), "the partly unpacked tree is gone"
    assert not list((store.root / "disks").iterdir()), "no disk, no metadata"
    assert not list((store.root / "refs").iterdir()), "no reference points at it"


@pytest.mark.parametrize("how,after_end", [("gzip", False), ("zstd", False), ("zstd", True)],
                         ids=["gzip", "zstd", "zstd-after-end-marker"])
async def test_a_compression_bomb_stops_at_the_limit_and_leaves_nothing(local_registry, limited, how, after_end):
    blob = bomb(how, after_end=after_end)
    assert len(blob) < 64 << 10  # what the registry stores and the node downloads
    await push_image(local_registry, "gantry-test/bomb", f"{how}-{after_end}", [blob])

    with pytest.raises(ImageError) as err:
        await limited.ensure_disk(f"{local_registry}/gantry-test/bomb:{how}-{after_end}")

    assert err.value.permanent and str(err.value).startswith("layer sha256:")
    assert f"is refused: {BUDGET}" in str(err.value), str(err.value)
    assert_nothing_left(limited)


async def test_the_budget_is_per_image_across_its_layers(local_registry, limited):
    half = [compress(tar_bytes([Entry(f"part{i}", data=bytes(600 << 10))])) for i in (1, 2)]
    await push_image(local_registry, "gantry-test/bomb", "one-half", half[:1])
    await push_image(local_registry, "gantry-test/bomb", "two-halves", half)

    disk = await limited.ensure_disk(f"{local_registry}/gantry-test/bomb:one-half")
    assert disk.path.is_file()
    with pytest.raises(ImageError) as err:
        await limited.ensure_disk(f"{local_registry}/gantry-test/bomb:two-halves")

    assert BUDGET in str(err.value) and str(err.value).startswith(f"layer {digest_of(half[1])} is refused")
    assert not list((limited.root / "tmp").iterdir())
    assert len(list((limited.root / "disks").glob("*.ext4"))) == 1, "only the image that fits"


def test_a_bomb_stops_at_the_limit_not_after_it_was_unpacked(tmp_path):
    """The meter stops the stream in the middle of the file: no more than the budget (and one
    read's worth) ever reaches the disk."""
    host = make_host(tmp_path)
    blob = tmp_path / "bomb.tar.zst"
    blob.write_bytes(bomb("zstd"))

    with pytest.raises(ImageError, match="unpacks to more than 1.0 MiB"):
        apply_layer(blob, host.rootfs, "sha256:bomb", UnpackBudget(UnpackLimits(max_bytes=1 * MiB)))

    written = sum(f.stat().st_size for f in host.rootfs.rglob("*") if f.is_file())
    assert written <= 2 * MiB


def refused(tmp_path, entries_or_tar, limits: UnpackLimits) -> str:
    host = make_host(tmp_path)
    data = entries_or_tar if isinstance(entries_or_tar, bytes) else tar_bytes(entries_or_tar)
    blob = tmp_path / "layer.tar"
    blob.write_bytes(compress(data))
    before = snapshot(tmp_path, skip=host.rootfs)
    with pytest.raises(ImageError) as err:
        apply_layer(blob, host.rootfs, "sha256:limits", UnpackBudget(limits))
    assert err.value.permanent and snapshot(tmp_path, skip=host.rootfs) == before
    return str(err.value)


def test_entries_per_layer_are_limited(tmp_path):
    entries = [Entry(f"f{i}") for i in range(20)]
    ok = make_host(tmp_path / "ok")
    apply_layer(write_layer(tmp_path / "ok.tar.gz", entries), ok.rootfs, "sha256:ok",
                UnpackBudget(UnpackLimits(max_entries=20)))

    reason = refused(tmp_path, entries, UnpackLimits(max_entries=19))

    assert "layer sha256:limits is refused: the layer has more than 19 entries, this node's limit" in reason


@pytest.mark.parametrize("entry,what", [
    (Entry("d/" * 149 + "file"), "entry 'd/d/d/"),
    (Entry("link", "symlink", "x" * 301), "the target of 'link'"),
    (Entry("link", "hardlink", "y/" * 150 + "z"), "the target of 'link'"),
], ids=["name", "symlink-target", "hardlink-target"])
def test_names_and_link_targets_are_limited(tmp_path, entry, what):
    reason = refused(tmp_path, [entry], UnpackLimits(max_path=300))

    assert what in reason and "bytes long, more than this node's limit of 300" in reason, reason


def test_the_paths_a_layer_is_remembered_by_are_limited(tmp_path):
    """A million entries with 4,096-byte names would hold 4 GiB of paths for the directory pass."""
    entries = [Entry("d" * 200, "dir")] + [Entry(f"{'d' * 200}/{i:0200}") for i in range(10)]

    reason = refused(tmp_path, entries, UnpackLimits(max_tracked=4096))

    assert "its entries' paths add up to more than 4.0 KiB, this node's limit for one layer" in reason


def test_a_lookup_through_symlinks_walks_a_bounded_number_of_components(tmp_path):
    """Forty symlinks of 4,095 bytes could make each entry's lookup walk 80,000 components."""
    entries = [Entry("d", "dir"), Entry("s3", "symlink", "./" * 2040 + "d"), Entry("s2", "symlink", "./" * 2040 + "s3"),
               Entry("s1", "symlink", "./" * 2040 + "s2"), Entry("s1/f")]

    reason = refused(tmp_path, entries, UnpackLimits())

    assert "resolving entry 's1/f' walks more than 4096 path components" in reason


def test_an_extended_header_is_not_read_past_its_limit(tmp_path):
    """tarfile reads a pax header whole into memory: its size is checked first."""
    big = Entry("file", xattrs={"user.big": "x" * (2 * MiB)})

    reason = refused(tmp_path, [big], UnpackLimits())

    assert "an extended tar header is 2.0 MiB, more than this node's limit of 1.0 MiB" in reason


def _sparse(form: str) -> bytes:
    buf = io.BytesIO()
    pax = {"pax-0.0": {"GNU.sparse.size": "10", "GNU.sparse.offset": "0", "GNU.sparse.numbytes": "5"},
           "pax-0.1": {"GNU.sparse.map": "0,5", "GNU.sparse.size": "10", "GNU.sparse.name": "f"},
           "pax-1.0": {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT if form == "gnu" else tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.size = 5
        if form == "gnu":
            info.type = tarfile.GNUTYPE_SPARSE
        else:
            info.pax_headers = pax[form]
        tar.addfile(info, io.BytesIO(b"hello"))
    return buf.getvalue()


@pytest.mark.parametrize("form", ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_sparse_files_are_refused(tmp_path, form):
    """A sparse map is read into a list ten times its size; no image builder writes one."""
    reason = refused(tmp_path, _sparse(form), UnpackLimits())

    assert "layer sha256:limits is refused: it holds a sparse file" in reason


def test_the_limits_default_to_what_the_issue_names():
    limits = UnpackLimits()
    assert (limits.max_bytes, limits.max_entries, limits.max_path) == (64 << 30, 1_000_000, 4096)
    store = OciImageStore("/nonexistent")
    assert store.unpack_limits == limits


def test_the_agent_option_takes_a_size(capsys):
    assert build_parser().parse_args(["run", "--max-unpacked-bytes", "2G"]).max_unpacked_bytes == 2 << 30
    assert build_parser().parse_args(["run"]).max_unpacked_bytes is None  # the store's own default
    assert main(["run", "--max-unpacked-bytes", "lots"]) == 2
    assert "expected a size such as 64G" in capsys.readouterr().out


async def test_the_agent_option_reaches_the_image_store(local_registry, tmp_path, monkeypatch):
    monkeypatch.delenv("GANTRY_TRUSTED_REGISTRIES", raising=False)
    await push_image(local_registry, "gantry-test/bomb", "cli", [bomb("gzip")])
    common = ["--data-dir", str(tmp_path), "--trusted-registry", LOCAL_REGISTRY]

    def runtime(*extra: str):  # argparse stats the terminal: not on the loop
        return runtime_from_args(build_parser().parse_args(["run", *common, *extra]))

    assert (await asyncio.to_thread(runtime)).images.unpack_limits == UnpackLimits()
    limited = await asyncio.to_thread(runtime, "--max-unpacked-bytes", "1M")
    with pytest.raises(ImageError) as err:
        await limited.images.ensure_disk(f"{local_registry}/gantry-test/bomb:cli")

    assert BUDGET in str(err.value)
    assert await asyncio.to_thread(os.listdir, tmp_path / "images" / "tmp") == []
