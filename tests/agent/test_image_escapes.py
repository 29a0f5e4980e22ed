"""Images cannot escape their rootfs (issue 15): unpacking runs on the host, as root, from a
customer's bytes. Each hostile image below is pushed to the real local registry and pulled by the
real store; each fails with its reason and leaves the node untouched: a canary file outside the
image tree keeps its content, nothing appears beside it, and an image cached before is intact.
What is legal inside an image (absolute symlinks, setuid, any owner) stays as it is."""

import asyncio
import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest

from nodes.agent.images import ImageError, OciImageStore
from tests.agent.conftest_images import HELLO, LOCAL_REGISTRY, layer, push_image
from tests.agent.layer_kit import snapshot
from tests.agent.test_images import cat, run

CANARY = b"the node's own file\n"
# The work dir a layer is unpacked in is <node>/images/tmp/<pull>/rootfs: four levels up is <node>.
UP = "../../../.."


def tree(root: Path) -> dict[str, str]:
    """Every path under root (the image store excepted) with its content hash or link target."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d != "images"]
        for name in dirnames + filenames:
            path = here / name
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(path)] = "dir"
    return found


@pytest.fixture
def node(tmp_path, local_registry):
    """A node's directory: its image store (with hello already cached) and, beside it, a
    canary that no image may touch."""
    root = tmp_path / "node"
    (root / "etc").mkdir(parents=True)
    (root / "canary").write_bytes(CANARY)
    (root / "etc" / "shadow").write_bytes(CANARY)
    return root


@pytest.fixture
async def store(node):
    store = OciImageStore(node / "images", trusted_registries=frozenset({LOCAL_REGISTRY}))
    await store.ensure_disk(HELLO)
    return store


def hostile(node: Path) -> dict[str, tuple[list[tuple], str]]:
    """One image per escape: its entries and the reason the pull must give."""
    canary = str(node / "canary")
    return {
        "dotdot": ([(f"{UP}/canary", "file", b"pwned", 0o644)], f"entry '{UP}/canary' points outside the image root"),
        "absolute": ([(canary, "file", b"pwned", 0o644)], f"entry '{canary}' is an absolute path"),
        "whiteout-alone": ([("etc", "dir", None, 0o755), ("etc/.wh.", "file", b"", 0o644)],
                           "whiteout 'etc/.wh.' is aimed at its own directory"),
        "whiteout-dot": ([(".wh..", "file", b"", 0o644)], "whiteout '.wh..' is aimed at its own directory"),
        "whiteout-parent": ([("a", "dir", None, 0o755), ("a/.wh...", "file", b"", 0o644)],
                            "whiteout 'a/.wh...' is aimed at its parent directory"),
        "hardlink-dotdot": ([("shadow", "hardlink", f"{UP}/etc/shadow", 0o644)],
                            f"hard link 'shadow' to '{UP}/etc/shadow' points outside the image root"),
        "hardlink-absolute": ([("shadow", "hardlink", str(node / "etc" / "shadow"), 0o644)],
                              "hard link 'shadow' to"),
        # The classic two-step: plant a symlink, then write through it.
        "symlink-write": ([("x", "symlink", UP, 0o777), ("x/canary", "file", b"pwned", 0o644)],
                          f"entry 'x/canary' goes through symlink '/x' -> '{UP}', which leads outside the image root"),
        "symlink-chain": ([("a", "symlink", "b/..", 0o777), ("b", "symlink", "../..", 0o777),
                           ("a/etc/shadow", "file", b"pwned", 0o644)], "which leads outside the image root"),
        "symlink-hardlink": ([("x", "symlink", UP, 0o777), ("y", "hardlink", "x/canary", 0o644)],
                             "goes through symlink '/x'"),
    }


@pytest.mark.parametrize("case", list(hostile(Path("/n"))))
async def test_a_hostile_image_is_refused_and_the_node_is_untouched(local_registry, node, store, case):
    entries, reason = hostile(node)[case]
    await push_image(local_registry, "gantry-test/hostile", case, [layer(*entries)])
    before = tree(node)

    with pytest.raises(ImageError) as err:
        await store.ensure_disk(f"{local_registry}/gantry-test/hostile:{case}")

    assert err.value.permanent and reason in str(err.value), str(err.value)
    assert str(err.value).startswith("layer sha256:")
    assert tree(node) == before
    assert (node / "canary").read_bytes() == (node / "etc" / "shadow").read_bytes() == CANARY
    assert not list((store.root / "tmp").iterdir()), "the work dir is gone"
    assert len(list((store.root / "disks").glob("*.ext4"))) == 1, "no disk for the hostile image"
    again = await store.ensure_disk(HELLO)  # the image cached before is intact
    assert again.path.is_file() and "GREETING" in await cat(again.path, "/hello.sh")


async def test_a_symlink_is_followed_inside_the_image_never_on_the_host(local_registry, node, store):
    """An absolute target means the image's own path, as it will in the guest; writing through
    it lands in the image. A file replacing a symlink replaces the link, not its target."""
    entries = [("outside", "symlink", str(node), 0o777), ("outside/canary", "file", b"inside", 0o644),
               ("link", "symlink", str(node / "canary"), 0o777), ("link", "file", b"replaced", 0o644)]
    await push_image(local_registry, "gantry-test/hostile", "confined", [layer(*entries)])
    before = tree(node)

    disk = await store.ensure_disk(f"{local_registry}/gantry-test/hostile:confined")

    assert tree(node) == before and (node / "canary").read_bytes() == CANARY
    assert await cat(disk.path, f"{node}/canary") == "inside"
    assert await cat(disk.path, "/link") == "replaced"


async def test_a_directory_swapped_for_a_symlink_keeps_its_metadata_off_the_host(local_registry, node, store):
    """Issue 23: `a/`, `a/shadow/` (0777, uid 4242), then `a` -> the node's etc. Directory
    metadata comes after the layer, and it once went through the new symlink: the node's
    etc became 0700 and its shadow 0777, owned by 4242. The pull now succeeds, the image keeps
    its symlink, and nothing of the node changes, down to each inode's ctime."""
    entries = [("a", "dir", None, 0o700), ("a/shadow", "dir", None, 0o777, (4242, 4242)),
               ("a", "symlink", str(node / "etc"), 0o777)]
    await push_image(local_registry, "gantry-test/hostile", "swap", [layer(*entries)])
    before = await asyncio.to_thread(snapshot, node, node / "images")

    disk = await store.ensure_disk(f"{local_registry}/gantry-test/hostile:swap")

    assert await asyncio.to_thread(snapshot, node, node / "images") == before
    assert "Type: symlink" in await run("debugfs", "-R", "stat /a", str(disk.path))
    assert await cat(disk.path, "/a") == str(node / "etc")  # a target past 60 bytes lives in a block


async def test_what_is_legal_in_an_image_stays_and_devices_are_dropped(local_registry, store, caplog):
    entries = [
        ("bin", "dir", None, 0o755), ("bin/su", "file", b"#!setuid", 0o4755), ("bin/wall", "file", b"sgid", 0o2755),
        ("lib64", "symlink", "/usr/lib64", 0o777),
        ("home/jovyan", "dir", None, 0o750, (1000, 100)), ("home/jovyan/notebook", "file", b"nb", 0o600, (1000, 100)),
        ("dev", "dir", None, 0o755), ("dev/sda", "chardev", (8, 0), 0o660), ("dev/mem", "chardev", (1, 1), 0o640),
        ("run/pipe", "fifo", None, 0o600),
    ]
    await push_image(local_registry, "gantry-test/legal", "v1", [layer(*entries)])

    with caplog.at_level(logging.INFO, logger="nodes.agent.oci.layers"):
        disk = await store.ensure_disk(f"{local_registry}/gantry-test/legal:v1")

    def stat_of(path: str) -> str:
        return run("debugfs", "-R", f"stat {path}", str(disk.path))

    assert "Mode:  04755" in await stat_of("/bin/su") and "Mode:  02755" in await stat_of("/bin/wall")
    assert 'Fast link dest: "/usr/lib64"' in await stat_of("/lib64")
    notebook = await stat_of("/home/jovyan/notebook")
    assert "User:  1000" in notebook and "Group:   100" in notebook
    assert "Type: FIFO" in await stat_of("/run/pipe")
    listing = await run("debugfs", "-R", "ls -p /dev", str(disk.path))
    assert "sda" not in listing and "mem" not in listing
    assert any("dropped 2 device node(s): dev/sda, dev/mem" in r.getMessage() for r in caplog.records)


async def test_unpack_and_cache_dirs_are_root_only(store):
    for path in (store.root, *(store.root / sub for sub in ("blobs", "blobs/sha256", "disks", "refs", "tmp"))):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    # Even a store whose dirs were made with looser modes (an older agent) is tightened.
    os.chmod(store.root / "tmp", 0o755)
    await store.ensure_disk(HELLO)
    assert stat.S_IMODE((store.root / "tmp").stat().st_mode) == 0o700
