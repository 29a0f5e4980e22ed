"""The file backend of volumes (nodes/agent/volumes/files.py) on a real filesystem, with real
mkfs.ext4: sparse, formatted once and never again, crash-safe to make, refused at another size,
erased by discarding its blocks, and never erased while a process holds QEMU's image locks.

The host never mounts a volume, so neither do these tests: the ext4 superblock is read as bytes.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.volumes import FileVolumes
from nodes.agent.volumes.deletes import PendingDeletes
from nodes.agent.volumes.files import GIB
from protocol.wire import VolumeMount

EXT4_MAGIC_OFFSET = 1024 + 0x38  # the superblock's s_magic
UUID_OFFSET = 1024 + 0x68  # ... and s_uuid, 16 bytes: a reformat gives a new one


def superblock(path) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        f.seek(EXT4_MAGIC_OFFSET)
        magic = f.read(2)
        f.seek(UUID_OFFSET)
        return magic, f.read(16)


def vol(volume_id="data-1", size_gib=1, path="/data", mode="rw") -> VolumeMount:
    return VolumeMount(volume_id=volume_id, size_gib=size_gib, mount_path=path, mode=mode)


@pytest.fixture
def volumes(tmp_path):
    return FileVolumes(tmp_path / "volumes")


async def test_a_new_volume_is_sparse_ext4_in_a_root_only_dir(volumes):
    attach = await volumes.ensure(vol(size_gib=2))
    path = volumes.root / "data-1"
    st = await asyncio.to_thread(path.stat)
    assert st.st_size == 2 * GIB
    assert st.st_blocks * 512 < 64 << 20  # formatted, yet almost all of it holes
    assert superblock(path)[0] == b"\x53\xef"
    assert stat.S_IMODE((await asyncio.to_thread(volumes.root.stat)).st_mode) == 0o700
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert attach.source == f"file={path},format=raw" and attach.cache == "none"


async def test_an_existing_volume_is_never_reformatted_and_keeps_its_size(volumes):
    await volumes.ensure(vol())
    path = volumes.root / "data-1"
    before = superblock(path)
    with open(path, "r+b") as f:  # what a guest wrote, far from any superblock
        f.seek(300 << 20)
        f.write(b"customer data")
    await volumes.ensure(vol(mode="ro", path="/elsewhere"))
    assert superblock(path) == before
    with open(path, "rb") as f:
        f.seek(300 << 20)
        assert f.read(13) == b"customer data"
    with pytest.raises(AgentError, match="volume data-1 is 1 GiB on this node and the replica asks for 2 GiB") as err:
        await volumes.ensure(vol(size_gib=2))
    assert err.value.permanent


async def test_a_crash_mid_format_leaves_no_volume_under_its_name(volumes, monkeypatch):
    from nodes.agent.volumes import files

    monkeypatch.setattr(files, "MKFS", ("sh", "-c", "kill -9 $$", "mkfs"))  # mkfs dies mid-way
    with pytest.raises(AgentError, match="cannot format volume data-1"):
        await volumes.ensure(vol())
    assert not (volumes.root / "data-1").exists()
    assert (await volumes.usage()).volumes == {}
    # A SIGKILLed agent cannot clean up: its temporary file is what the next agent sweeps.
    (volumes.root / ".data-1.new").write_bytes(b"half")
    assert (await volumes.usage()).volumes == {}
    await volumes.sweep()
    assert sorted(os.listdir(volumes.root)) == [".locks"]
    monkeypatch.undo()
    await volumes.ensure(vol())
    assert superblock(volumes.root / "data-1")[0] == b"\x53\xef"


async def test_delete_discards_the_blocks_and_a_second_delete_is_a_no_op(volumes, tmp_path):
    await volumes.ensure(vol())
    path = volumes.root / "data-1"
    with open(path, "r+b") as f:
        f.seek(100 << 20)
        f.write(os.urandom(8 << 20))
        os.fsync(f.fileno())
    # A second name for the same inode, outside the volume dir: it sees whether the blocks were
    # discarded or only the name removed.
    witness = tmp_path / "witness"
    os.link(path, witness)
    assert os.stat(witness).st_blocks * 512 >= 8 << 20
    assert await volumes.delete("data-1") is True
    assert not path.exists()
    assert os.stat(witness).st_blocks == 0
    assert await volumes.delete("data-1") is True
    assert await volumes.delete("never-made") is True


async def test_a_volume_a_process_holds_open_like_qemu_is_not_erased(volumes):
    await volumes.ensure(vol())
    path = volumes.root / "data-1"
    # QEMU's image locking: a shared OFD lock on byte 100 (consistent read) while it has the file open.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, struct, sys, time\n"
         f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
         "fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 100, 1, 0))\n"
         "print('locked', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert await volumes.delete("data-1") is False
        assert path.exists() and superblock(path)[0] == b"\x53\xef"
    finally:
        holder.kill()
        holder.wait()
    assert await volumes.delete("data-1") is True


async def test_usage_lists_each_volume_and_counts_what_sparse_files_may_still_take(volumes):
    empty = await volumes.usage()
    assert empty.volumes == {} and empty.free_gib > 0
    await volumes.ensure(vol("a", 1))
    await volumes.ensure(vol("b", 3))
    (volumes.root / "not-a-volume.txt").write_text("x")  # no volume id: not listed
    usage = await volumes.usage()
    assert usage.volumes == {"a": 1, "b": 3}
    # Four sparse GiB are promised away (other writers share this disk: a loose bound).
    assert empty.free_gib - usage.free_gib > 3.5


async def test_a_volume_larger_than_the_free_space_is_refused(volumes):
    free = (await volumes.usage()).free_gib
    too_big = int(free) + 100
    if too_big > 16384:
        pytest.skip("this disk has more room than any volume may take")
    with pytest.raises(AgentError, match="no room for volume big"):
        await volumes.ensure(vol("big", too_big))
    assert not (volumes.root / "big").exists()


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "A", "x" * 64])
async def test_hostile_volume_ids_name_no_file(volumes, bad):
    with pytest.raises(AgentError):
        await volumes.ensure(VolumeMount(volume_id=bad, size_gib=1, mount_path="/data"))
    with pytest.raises(AgentError):
        await volumes.delete(bad)
    assert not volumes.root.exists() or sorted(os.listdir(volumes.root)) in ([], [".locks"])


async def test_a_pending_delete_waits_for_its_volume_to_be_free_and_outlives_the_agent(tmp_path):
    in_use = {"v1"}
    erased = []

    async def erase(volume_id):
        if volume_id in in_use:
            return False
        erased.append(volume_id)
        return True

    deletes = PendingDeletes(tmp_path / "deleting", erase)
    assert await deletes.request("v1") is False
    assert await deletes.request("v2") is True
    assert erased == ["v2"]
    # A new agent (after a SIGKILL) finds the request on disk.
    again = PendingDeletes(tmp_path / "deleting", erase)
    assert await again.pending() == ["v1"]
    assert await again.retry() == ["v1"]
    in_use.clear()
    assert await again.retry() == []
    assert erased == ["v2", "v1"] and await again.pending() == []
