"""The guest kit: the kernel and initramfs every microVM boots, built once per host.

The kit lives in a host-wide cache dir (DEFAULT_CACHE_DIR, `--kit-cache`), not in an
agent's data dir: every agent, CLI and data dir on the host shares one build, under one
flock, so a second agent on the host neither downloads nor builds again.

Layout under `<cache_dir>/kit/`:
  debs/<package>_<version>.deb   the kernel package as `apt-get download` fetched it
  <key>/vmlinuz, vmlinux, initrd.img, floor.img, kit.json
where <key> hashes every input (kernel package and version, the busybox binary, our /init,
the floor /init, the module list, the kernel decompressors present, KIT_FORMAT). A changed input gives a new key and a rebuild;
an unchanged host reuses the kit after one `apt-cache` query. The kernel is never installed.
VMs boot `vmlinux`, the kernel's ELF taken out of the bzImage for PVH direct boot (pvh.py says
why); a kernel that cannot give one boots as the bzImage, and kit.json says which and why.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nodes.agent.errors import AgentError
from nodes.agent.guest import cpio, modules, pvh

DEFAULT_CACHE_DIR = Path("/var/cache/gantry-agent")
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
INIT_PATH = Path(__file__).with_name("init")
# Drivers the guest loads; their dependencies are resolved from the modules themselves.
# ext4, crc32c and af_packet are built into Debian's cloud kernel, so they need no entry.
GUEST_MODULES = (
    "virtio_mmio",  # the microvm transport for every device below
    "virtio_pci",  # ... and q35's, for VMs given GPUs (/init loads it only where there is PCI)
    "virtio_blk",  # the image's root disk
    "virtio_net",  # the TAP-backed NIC
    "virtio_console",  # stdout/stderr/status ports
    "qemu_fw_cfg",  # the guest spec, read from /sys/firmware/qemu_fw_cfg
    "button",  # ACPI power button: QMP system_powerdown reaches /init as a key press
    "evdev",  # ... read from /dev/input/event*
)
# Bumped when the archive layout changes in a way the other inputs do not capture.
KIT_FORMAT = 3

# The probe and the bench's floor: the same kernel and busybox, an /init that only says it ran
# (accel.py waits for this line on the serial console) and powers off.
FLOOR_MARKER = "gantry-floor: init reached"
FLOOR_INIT = f"#!/bin/busybox sh\n/bin/busybox echo '{FLOOR_MARKER}' >/dev/console\n/bin/busybox poweroff -f\n"


@dataclass(frozen=True)
class GuestKit:
    kernel: Path  # what QEMU's -kernel gets: vmlinux (PVH) or vmlinuz (bzImage)
    initrd: Path
    floor_initrd: Path
    kernel_version: str
    boot: str = "pvh"  # or "bzimage: <why not pvh>"


async def _run(*argv: str, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise AgentError(f"{argv[0]} {argv[1]} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return out.decode(errors="replace")


async def _apt_update() -> None:
    await _run("apt-get", "update", "-q")


APT_LISTS = Path("/var/lib/apt/lists")


async def resolve_kernel_package() -> tuple[str, str]:
    """(package, version) of the real kernel behind the cloud metapackage, e.g.
    ("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2"). Runs `apt-get update` once if the
    package lists are missing (a fresh machine or container)."""
    for attempt in (1, 2):
        try:
            show = await _run("apt-cache", "show", "--no-all-versions", KERNEL_METAPACKAGE)
            match = re.search(r"^Depends:.*?\b(linux-image-\S+-cloud-amd64) \(= ([^)\s]+)\)", show, re.M)
            if not match:
                raise AgentError(f"{KERNEL_METAPACKAGE} names no kernel package: {show.strip()[:200]!r}")
            return match.group(1), match.group(2)
        except AgentError:
            if attempt == 2:
                raise
            await _apt_update()
    raise AssertionError("unreachable")


def _lists_stamp() -> str:
    try:
        return str(APT_LISTS.stat().st_mtime_ns)
    except OSError:
        return ""


async def _resolve_cached(root: Path) -> tuple[str, str]:
    """resolve_kernel_package, remembered until the apt lists change (`apt-get update`
    renames files into the lists dir, which moves its mtime). apt-cache alone costs about a
    second where the package cache is disabled, as in Debian's container images."""
    memo = root / "resolved.json"
    stamp = await asyncio.to_thread(_lists_stamp)
    try:
        data = json.loads(await asyncio.to_thread(memo.read_text))
        if stamp and data["lists"] == stamp:
            return data["package"], data["version"]
    except (OSError, ValueError, KeyError):
        pass
    package, version = await resolve_kernel_package()
    text = json.dumps({"lists": await asyncio.to_thread(_lists_stamp), "package": package, "version": version})
    await asyncio.to_thread(memo.write_text, text + "\n")
    return package, version


async def _download(package: str, version: str, debs: Path) -> Path:
    deb = debs / f"{package}_{version}.deb"
    if await asyncio.to_thread(deb.exists):
        return deb
    await asyncio.to_thread(debs.mkdir, parents=True, exist_ok=True)
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=debs, prefix=".dl-"))
    try:
        # apt drops to the _apt user for downloads; our root-only cache dir is not its to
        # write, so keep the download as root instead of warning about it.
        argv = ("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}")
        try:
            await _run(*argv, cwd=tmp)
        except AgentError:
            await _apt_update()
            await _run(*argv, cwd=tmp)
        got = await asyncio.to_thread(lambda: list(tmp.glob("*.deb")))
        if len(got) != 1:
            raise AgentError(f"apt-get download {package} produced {len(got)} .deb files")
        await asyncio.to_thread(os.replace, got[0], deb)
        return deb
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


def _input_key(package: str, version: str, init: bytes) -> str:
    h = hashlib.sha256()
    for part in (
        f"format={KIT_FORMAT}",
        f"kernel={package}={version}",
        f"modules={','.join(GUEST_MODULES)}",
        "busybox=" + hashlib.sha256(BUSYBOX.read_bytes()).hexdigest(),
        "init=" + hashlib.sha256(init).hexdigest(),
        "fstabs=" + hashlib.sha256(json.dumps(FSTABS, sort_keys=True).encode()).hexdigest(),
        "floor=" + hashlib.sha256(FLOOR_INIT.encode()).hexdigest(),
        # Installing a missing decompressor later gives a rebuild with PVH boot.
        "pvh-tools=" + ",".join(t for t in ("lz4", "zstd") if shutil.which(t)),
    ):
        h.update(part.encode() + b"\n")
    return h.hexdigest()[:16]


def _dev_skeleton() -> list[cpio.Entry]:
    """The workload's /dev, copied in one `cp -a` by /init (a mknod per node costs a fork)."""
    d = "etc/gantry-dev"
    nodes = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
    return [
        cpio.directory(d),
        *(cpio.chardev(f"{d}/{name}", *numbers, 0o666) for name, numbers in nodes.items()),
        cpio.directory(f"{d}/pts"),
        cpio.directory(f"{d}/shm", 0o1777),
        cpio.symlink(f"{d}/ptmx", "pts/ptmx"),
        cpio.symlink(f"{d}/fd", "/proc/self/fd"),
        *(cpio.symlink(f"{d}/{name}", f"/proc/self/fd/{fd}") for fd, name in enumerate(("stdin", "stdout", "stderr"))),
    ]


# /init mounts these with `mount -a -T`: one process per table rather than one per mount.
FSTABS = {
    "etc/fstab.boot": "proc /proc proc defaults 0 0\nsysfs /sys sysfs defaults 0 0\ndevtmpfs /dev devtmpfs defaults 0 0\n",
    "etc/fstab.root": (
        "proc /newroot/proc proc defaults 0 0\nsysfs /newroot/sys sysfs defaults 0 0\n"
        "dev /newroot/dev tmpfs mode=0755,nosuid 0 0\n"
        "none /newroot/sys/firmware/qemu_fw_cfg tmpfs ro,size=4k,mode=0555 0 0\n"
    ),
    "etc/fstab.rootdev": (
        "devpts /newroot/dev/pts devpts newinstance,ptmxmode=0666,mode=0620 0 0\n"
        "shm /newroot/dev/shm tmpfs nosuid,nodev,mode=1777 0 0\n"
    ),
}


def _busybox_entries() -> list[cpio.Entry]:
    entries = [cpio.directory(d) for d in ("bin", "dev", "etc", "lib", "proc", "sys", "run", "tmp", "newroot")]
    entries += [cpio.chardev("dev/console", 5, 1), cpio.chardev("dev/null", 1, 3, 0o666)]
    entries.append(cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755))
    return entries


def _modules_dep(blobs: dict[str, bytes]) -> str:
    """depmod's format for modules listed dependencies first: each line names every module
    the first one needs, directly or not, the one to load first last."""
    by_name = {name.removesuffix(".ko").replace("-", "_"): name for name in blobs}
    closure: dict[str, list[str]] = {}
    for name, data in blobs.items():  # dependencies first, so theirs are known
        needed: list[str] = []
        for dep in filter(None, modules.modinfo(data).get("depends", "").split(",")):
            dep_file = by_name.get(dep.replace("-", "_"))
            if dep_file:  # else built into the kernel
                needed += [d for d in (*closure[dep_file], dep_file) if d not in needed]
        closure[name] = needed
    return "".join(f"{name}: {' '.join(reversed(deps))}\n".replace(": \n", ":\n") for name, deps in closure.items())


def _build(tree: Path, dest: Path, init: bytes, version: str, kernel_version: str, applets: list[str]) -> None:
    """Blocking: run in a worker thread. Writes vmlinuz, vmlinux (when the kernel allows PVH
    boot), initrd.img, floor.img, kit.json."""
    mod_root = tree / "lib" / "modules" / kernel_version
    order = modules.load_order(list(GUEST_MODULES), mod_root, modules.builtin_names(mod_root / "modules.builtin"))

    base = _busybox_entries()
    links = [cpio.symlink(f"bin/{a}", "busybox") for a in applets if a != "busybox"]
    mods = [*_dev_skeleton(), *(cpio.file(path, text.encode()) for path, text in FSTABS.items())]
    mods.append(cpio.directory("lib/modules"))
    blobs = {ko.name: modules.strip_signature(ko.read_bytes()) for ko in order}
    mods += [cpio.file(f"lib/modules/{name}", data) for name, data in blobs.items()]
    # busybox modprobe looks in /lib/modules/`uname -r`: one process loads them all.
    mods.append(cpio.symlink(f"lib/modules/{kernel_version}", "."))
    mods.append(cpio.file("lib/modules/modules.dep", _modules_dep(blobs).encode()))
    # /init insmods these in this order: dependencies first, no modprobe or modules.dep needed.
    mods.append(cpio.file("etc/modules", "".join(f"{ko.name}\n" for ko in order).encode()))

    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".build-"))
    try:
        shutil.copyfile(tree / "boot" / f"vmlinuz-{kernel_version}", tmp / "vmlinuz")
        try:
            compression, elf = pvh.vmlinux_from_bzimage((tmp / "vmlinuz").read_bytes())
            (tmp / "vmlinux").write_bytes(elf)
            boot = "pvh"
        except AgentError as e:
            compression, boot = "", f"bzimage: {e.message}"
        (tmp / "initrd.img").write_bytes(cpio.gzipped_newc(base + links + mods + [cpio.file("init", init, 0o755)]))
        floor = base + [cpio.symlink("bin/sh", "busybox"), cpio.file("init", FLOOR_INIT.encode(), 0o755)]
        (tmp / "floor.img").write_bytes(cpio.gzipped_newc(floor))
        meta = {"kernel_version": kernel_version, "package_version": version, "boot": boot,
                "compression": compression, "modules": [k.name for k in order]}
        (tmp / "kit.json").write_text(json.dumps(meta, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(dest: Path) -> GuestKit | None:
    try:
        meta = json.loads((dest / "kit.json").read_text())
    except (OSError, ValueError):
        return None
    boot = meta.get("boot", "bzimage: kit built before PVH boot")
    kernel = dest / ("vmlinux" if boot == "pvh" else "vmlinuz")
    kit = GuestKit(kernel, dest / "initrd.img", dest / "floor.img", meta["kernel_version"], boot)
    return kit if all(p.exists() for p in (kit.kernel, kit.initrd, kit.floor_initrd)) else None


def _newest_existing(root: Path) -> GuestKit | None:
    kits = [k for k in (_load(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) if k]
    return max(kits, key=lambda k: k.initrd.stat().st_mtime, default=None)


def _prune(root: Path, keep: Path, package_version: str) -> None:
    """Keeps the new kit and the one before it (a GuestKit handed out before this rebuild still
    boots), and only the kernel package the new kit came from."""
    kits = sorted(
        (d for d in root.iterdir() if d.is_dir() and d != keep and d.name != "debs" and not d.name.startswith(".")),
        key=lambda d: d.stat().st_mtime,
    )
    for d in kits[:-1]:
        shutil.rmtree(d, ignore_errors=True)
    for deb in (root / "debs").glob("*.deb"):
        if not deb.name.endswith(f"_{package_version}.deb"):
            deb.unlink(missing_ok=True)


async def _locked(root: Path):
    """An exclusive flock on the kit dir: two processes (agents, CLIs, on any data dir) never
    build at once, and none reads a kit another is half-way through replacing."""
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
    return fd


async def ensure_kit(cache_dir: Path = DEFAULT_CACHE_DIR, *, init_path: Path = INIT_PATH) -> GuestKit:
    """The current guest kit in `<cache_dir>/kit`, building it if an input changed.
    `init_path` exists so a test can vary the /init input; the agent always uses the
    packaged one."""
    root = Path(cache_dir) / "kit"
    fd = await _locked(root)
    try:
        try:
            package, version = await _resolve_cached(root)
        except AgentError as e:
            # Offline with no package lists: an already built kit still boots VMs.
            existing = await asyncio.to_thread(_newest_existing, root)
            if existing:
                return existing
            raise AgentError(f"cannot find the guest kernel package: {e.message}") from e
        init = await asyncio.to_thread(init_path.read_bytes)
        key = await asyncio.to_thread(_input_key, package, version, init)
        dest = root / key
        kit = await asyncio.to_thread(_load, dest)
        if kit:
            return kit
        deb = await _download(package, version, root / "debs")
        tree = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=root, prefix=".unpack-"))
        try:
            await _run("dpkg-deb", "-x", str(deb), str(tree))
            kernel_version = package.removeprefix("linux-image-")
            applets = (await _run(str(BUSYBOX), "--list")).split()
            await asyncio.to_thread(_build, tree, dest, init, version, kernel_version, applets)
        finally:
            await asyncio.to_thread(shutil.rmtree, tree, True)
        await asyncio.to_thread(_prune, root, dest, version)
        kit = await asyncio.to_thread(_load, dest)
        if kit is None:
            raise AgentError(f"guest kit build left no usable kit in {dest}")
        return kit
    finally:
        await asyncio.to_thread(os.close, fd)
