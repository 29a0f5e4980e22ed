"""The guest kit: Debian's cloud kernel plus our initramfs, cached by its inputs."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodes.agent.guest import cpio, modules
from nodes.agent.guest.kit import FLOOR_MARKER, INIT_PATH, ensure_kit
from tests.agent.conftest_vmm import *  # noqa: F401,F403
from tests.agent.conftest_vmm import KIT_CACHE, REPO


def _members(initrd: Path) -> dict[str, bytes]:
    """Parses a gzipped newc archive back into {path: data}."""
    raw = gzip.decompress(initrd.read_bytes())
    out: dict[str, bytes] = {}
    pos = 0
    while True:
        assert raw[pos : pos + 6] == b"070701"
        fields = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name = raw[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = raw[pos : pos + size]
        pos = (pos + size + 3) & ~3


def test_newc_archive_round_trips_and_is_reproducible(tmp_path):
    entries = [cpio.directory("bin"), cpio.file("bin/x", b"abc", 0o755), cpio.symlink("bin/y", "x")]
    (tmp_path / "a.gz").write_bytes(cpio.gzipped_newc(entries))
    assert _members(tmp_path / "a.gz") == {"bin": b"", "bin/x": b"abc", "bin/y": b"x"}
    assert cpio.gzipped_newc(entries) == (tmp_path / "a.gz").read_bytes()
    # busybox cpio agrees with our reading of the format.
    listing = subprocess.run(["busybox", "cpio", "-t"], input=cpio.newc(entries), capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["bin", "bin/x", "bin/y"]


def test_kit_holds_kernel_init_and_modules_in_dependency_order(vmm_kit):
    assert vmm_kit.kernel_version.endswith("-cloud-amd64")
    assert vmm_kit.kernel.stat().st_size > 1_000_000
    members = _members(vmm_kit.initrd)
    assert members["init"] == INIT_PATH.read_bytes()
    assert members["bin/sh"] == b"busybox"
    order = members["etc/modules"].decode().split()
    for needed in ("virtio_mmio.ko", "virtio_blk.ko", "virtio_net.ko", "virtio_console.ko", "qemu_fw_cfg.ko"):
        assert needed in order and f"lib/modules/{needed}" in members
    assert order.index("virtio.ko") < order.index("virtio_mmio.ko") < order.index("virtio_blk.ko")
    assert order.index("failover.ko") < order.index("net_failover.ko") < order.index("virtio_net.ko")
    for ko in order:
        deps = modules.modinfo(members[f"lib/modules/{ko}"]).get("depends", "")
        for dep in filter(None, deps.split(",")):
            assert order.index(f"{dep}.ko") < order.index(ko), f"{ko} loads before its dependency {dep}"
    # busybox modprobe's view: /lib/modules/`uname -r`/modules.dep names every module each one
    # needs, directly or not, the one to load first last.
    assert members[f"lib/modules/{vmm_kit.kernel_version}"] == b"."
    dep_lines = dict(line.split(":") for line in members["lib/modules/modules.dep"].decode().splitlines())
    assert set(dep_lines) == set(order)
    assert dep_lines["virtio_net.ko"].split() == ["net_failover.ko", "failover.ko", "virtio.ko", "virtio_ring.ko"]
    assert dep_lines["virtio_ring.ko"] == ""

    floor = _members(vmm_kit.floor_initrd)
    assert FLOOR_MARKER in floor["init"].decode() and "poweroff" in floor["init"].decode()
    assert not any(name.startswith("lib/modules/") for name in floor)


async def test_kit_is_reused_and_rebuilt_only_when_an_input_changes(tmp_path, vmm_kit):
    # A kit cache of its own (the package download is reused) so the shared one is untouched.
    data = tmp_path / "cache"
    shutil.copytree(KIT_CACHE / "kit" / "debs", data / "kit" / "debs")
    first = await ensure_kit(data)
    assert first.initrd.exists() and first.kernel_version == vmm_kit.kernel_version
    built_at = first.initrd.stat().st_mtime_ns

    again = await ensure_kit(data)
    assert again == first and again.initrd.stat().st_mtime_ns == built_at  # found, not rebuilt

    changed_init = tmp_path / "init"
    changed_init.write_bytes(INIT_PATH.read_bytes() + b"# changed\n")
    rebuilt = await ensure_kit(data, init_path=changed_init)
    assert rebuilt.initrd != first.initrd
    assert _members(rebuilt.initrd)["init"].endswith(b"# changed\n")
    # The previous kit stays bootable for VMs that were handed it before the rebuild.
    assert first.initrd.exists()


def test_agents_sharing_a_kit_cache_build_it_once(tmp_path, vmm_kit):
    """Two agent processes starting together on a fresh host-wide cache: one builds, the other
    waits on the lock and is handed the very same kit."""
    cache = tmp_path / "cache"
    shutil.copytree(KIT_CACHE / "kit" / "debs", cache / "kit" / "debs")  # no download
    script = ("import asyncio, sys; from nodes.agent.guest.kit import ensure_kit; "
              "k = asyncio.run(ensure_kit(sys.argv[1])); print(k.initrd, k.initrd.stat().st_mtime_ns)")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(cache)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO) for _ in range(2)]
    outs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outs[0] == outs[1] and outs[0].startswith(str(cache / "kit"))
    kits = [d.name for d in (cache / "kit").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert sorted(kits) == sorted(["debs", Path(outs[0].split()[0]).parent.name])


def test_kit_boots_the_kernel_elf_by_pvh(vmm_kit):
    """Debian's cloud kernel gives a PVH ELF: QEMU maps it from the file (shared by every VM)
    instead of keeping a heap copy of the bzImage per VM."""
    from nodes.agent.guest import pvh

    assert vmm_kit.boot == "pvh" and vmm_kit.kernel.name == "vmlinux"
    elf = vmm_kit.kernel.read_bytes()
    assert pvh.pvh_entry(elf) is not None
    loads = [(filesz, memsz) for _, kind, _, filesz, memsz in pvh._segments(elf) if kind == pvh.PT_LOAD]
    # .bss/.brk are memory only: the file part of the segments is megabytes smaller.
    assert sum(m for _, m in loads) - sum(f for f, _ in loads) > 4 * 2**20


@pytest.mark.vm
@pytest.mark.parametrize("kernel", ["vmlinux", "vmlinuz"])
async def test_floor_initrd_boots_and_powers_off(vmm_kit, vmm_accel, kernel):
    """The bench's floor: same kernel, an /init that only announces itself and powers off.
    Booted both ways: PVH (what VMs use) and the bzImage (the fallback for a kernel without
    a PVH note)."""
    from dataclasses import replace

    from nodes.agent.vmm.cmdline import floor_command_line, host_tsc_khz

    vmm_kit = replace(vmm_kit, kernel=vmm_kit.kernel.with_name(kernel))
    tsc_khz = await asyncio.to_thread(host_tsc_khz)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *floor_command_line(vmm_kit, vmm_accel, tsc_khz), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0 and FLOOR_MARKER in out.decode(), out.decode()[-2000:]
    print(f"floor boot + power-off: {time.monotonic() - started:.2f}s")
