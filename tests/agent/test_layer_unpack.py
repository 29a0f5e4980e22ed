"""Unpacking never changes a host file (issue 23): directory metadata, applied after the layer,
lands on the directory the entry made or on nothing, even where a later entry of the same
layer put a symlink in its place. These run apply_layer itself, as root (the agent's case),
on a tree inside a temporary root whose canaries stand for the host (tests/agent/layer_kit.py);
test_image_escapes.py runs the same attack through the real registry and image store."""

import os
import stat

import pytest

from nodes.agent.images import ImageError
from nodes.agent.oci.layers import apply_layer
from tests.agent.layer_kit import Entry, make_host, snapshot, write_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking runs as root on a node (owners)")


def swap(aim: str) -> list[Entry]:
    """The attack: `a/` and `a/shadow/` (world-writable, another owner, xattrs, a new mtime),
    then `a` becomes a symlink. The deferred pass once chmod'ed and chowned `rootfs/a/shadow`,
    which the kernel resolved through the new symlink to the host's own directory."""
    return [Entry("a", "dir", mode=0o700, xattrs={"user.pwned": "a"}, mtime=0),
            Entry("a/shadow", "dir", mode=0o777, owner=(4242, 4242), xattrs={"user.pwned": "shadow"}, mtime=0),
            Entry("a/passwd", "file", b"pwned", mode=0o666),
            Entry("a", "symlink", aim)]


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_a_directory_swapped_for_a_symlink_leaves_the_host_directory_alone(tmp_path, target):
    host = make_host(tmp_path)
    aim = str(host.etc) if target == "absolute" else os.path.relpath(host.etc, host.rootfs)
    blob = write_layer(tmp_path / "layer.tar.gz", swap(aim))
    before = snapshot(tmp_path, skip=host.rootfs)

    apply_layer(blob, host.rootfs, "sha256:swap")

    assert snapshot(tmp_path, skip=host.rootfs) == before
    shadow = os.lstat(host.etc / "shadow")
    assert (stat.S_IMODE(shadow.st_mode), shadow.st_uid) == (0o700, 0)
    # The image keeps its symlink as written: in the guest it resolves inside the image.
    assert os.readlink(host.rootfs / "a") == aim


def test_a_parent_swapped_further_up_or_through_a_whiteout_changes_nothing_either(tmp_path):
    host = make_host(tmp_path)
    entries = [Entry("x", "dir"), Entry("x/y", "dir"), Entry("x/y/shadow", "dir", mode=0o777, owner=(4242, 0)),
               Entry("x/.wh.y", "file"), Entry("x/y", "symlink", str(host.etc)),
               Entry("z", "dir"), Entry("z/shadow", "dir", mode=0o777, owner=(4242, 0)),
               Entry(".wh.z", "file"), Entry("z", "symlink", os.path.relpath(host.etc, host.rootfs))]
    blob = write_layer(tmp_path / "layer.tar.gz", entries)
    before = snapshot(tmp_path, skip=host.rootfs)

    apply_layer(blob, host.rootfs, "sha256:swap")

    assert snapshot(tmp_path, skip=host.rootfs) == before


def test_directory_metadata_lands_on_the_directory_the_last_entry_made(tmp_path):
    host = make_host(tmp_path)
    entries = [Entry("ro", "dir", mode=0o555, owner=(1000, 100), xattrs={"user.kept": "yes"}, mtime=1000),
               Entry("ro/file", "file", b"in a read-only dir", mtime=2000),
               Entry("twice", "dir", mode=0o700, mtime=3000),
               Entry("twice", "dir", mode=0o750, owner=(5, 5), mtime=4000),
               Entry("back", "dir", mode=0o700, owner=(9, 9)),
               Entry("back", "symlink", "/ro"),
               Entry("back", "dir", mode=0o711, owner=(8, 8), mtime=5000),
               Entry("link", "symlink", "/ro", owner=(3, 3), mtime=6000),
               Entry("pipe", "fifo", mode=0o620, owner=(4, 4), mtime=7000)]
    blob = write_layer(tmp_path / "layer.tar.gz", entries)

    apply_layer(blob, host.rootfs, "sha256:dirs")

    def meta(name):
        st = os.lstat(host.rootfs / name)
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)

    assert meta("ro") == (0o555, 1000, 100, 1000)
    assert os.getxattr(host.rootfs / "ro", "user.kept") == b"yes"
    assert (host.rootfs / "ro" / "file").read_bytes() == b"in a read-only dir"
    assert meta("twice") == (0o750, 5, 5, 4000)
    assert meta("back") == (0o711, 8, 8, 5000)
    assert meta("link")[1:] == (3, 3, 6000) and os.readlink(host.rootfs / "link") == "/ro"
    assert meta("pipe") == (0o620, 4, 4, 7000) and stat.S_ISFIFO(os.lstat(host.rootfs / "pipe").st_mode)


def test_writing_through_a_symlink_that_climbs_out_is_still_refused(tmp_path):
    host = make_host(tmp_path)
    blob = write_layer(tmp_path / "layer.tar.gz", [Entry("a", "symlink", "../../host"),
                                                   Entry("a/canary", "file", b"pwned")])
    before = snapshot(tmp_path, skip=host.rootfs)

    with pytest.raises(ImageError) as err:
        apply_layer(blob, host.rootfs, "sha256:climb")

    assert "entry 'a/canary' goes through symlink '/a' -> '../../host', which leads outside" in str(err.value)
    assert err.value.permanent
    assert snapshot(tmp_path, skip=host.rootfs) == before


def test_a_zstd_layer_on_a_node_without_zstd_is_a_transient_error(tmp_path, monkeypatch):
    host = make_host(tmp_path)
    blob = write_layer(tmp_path / "layer.tar.zst", [Entry("f", data=b"x")], how="zstd")
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))

    with pytest.raises(ImageError) as err:
        apply_layer(blob, host.rootfs, "sha256:z")

    assert str(err.value) == ("layer sha256:z is zstd-compressed and zstd is not installed on this node "
                              "(run `make sysdeps`)")
    assert not err.value.permanent
