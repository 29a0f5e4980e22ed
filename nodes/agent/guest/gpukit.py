"""The GPU guest kit: NVIDIA's open kernel driver built for the guest kernel, and the matching
user-space driver, on a read-only disk that every VM given GPUs attaches.

Everything comes from Debian's package registry: the driver source (`nvidia-open-kernel-source`,
contrib), the user space (`nvidia-smi`, `libnvidia-ml1`, `libcuda1`, `libnvidia-ptxjitcompiler1`,
non-free) and the GSP firmware the open driver needs (`firmware-nvidia-gsp`, non-free-firmware),
all at one version; and the guest kernel's headers (main). The host has only `main` configured,
so the kit keeps an apt configuration of its own under `<cache>/gpukit/apt/` (sources list,
package lists, archives) and passes it with `-o Dir::...` to every apt call it makes: the host's
own sources and state are never touched, and nothing is installed.

Built once per host, guest kernel and driver version, under the host-wide kit cache (an flock,
like the guest kit), by the agent at start on a node with real GPUs, or `gantry-agent gpu-kit
build`: never on a replica's start path, never for a simulated node. Layout:

  <cache>/gpukit/apt/<suite>/       the private apt configuration and state, per Debian release
  <cache>/gpukit/debs/              the downloaded packages
  <cache>/gpukit/<driver>-<kernel>-<key>/
      kit.json                      versions, vermagic, build time, size, the supported-GPU list
      gpukit.img                    ext4: modules/, firmware/, userspace/{bin,lib}/, kit.json

The supported-GPU list is the driver's own: the "Compatible GPUs" table of the README.md that
ships in nvidia-open-kernel-source (device id, and subsystem ids where a board differs).
"""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from nodes.agent.errors import AgentError
from nodes.agent.guest import modules
from nodes.agent.guest.kit import DEFAULT_CACHE_DIR, GuestKit

__all__ = ["KIT_FORMAT", "build_gpu_kit", "ensure_gpu_kit", "load_gpu_kit", "parse_supported"]

SOURCE_PACKAGE = "nvidia-open-kernel-source"
USERSPACE_PACKAGES = ("nvidia-smi", "libnvidia-ml1", "libcuda1", "libnvidia-ptxjitcompiler1", "firmware-nvidia-gsp")
# GSP firmware for Ampere and later (what the catalog's GPUs run); Turing's is left out.
FIRMWARE = ("gsp_ga10x.bin",)
KERNEL_MODULES = ("nvidia", "nvidia-uvm")
KIT_FORMAT = 1
COMPONENTS = "main contrib non-free non-free-firmware"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


async def _run(*argv: str, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        tail = " | ".join(line for line in text.strip().splitlines()[-4:])
        words = [a for i, a in enumerate(argv) if a != "-o" and (i == 0 or argv[i - 1] != "-o") and a != "-q"]
        raise AgentError(f"{' '.join(words[:3])} failed (exit {proc.returncode}): {tail}")
    return text


# -- the private apt configuration ---------------------------------------------------------------


def _codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise AgentError("cannot tell the Debian release from /etc/os-release")


def _apt_dirs(root: Path, suite: str) -> list[str]:
    """The -o options that point apt at the kit's own configuration and state for `suite` only."""
    apt = root.absolute() / "apt" / suite  # apt reads a relative path from /etc/apt
    if not (apt / "sources.list").exists():
        codename = suite
        for d in ("state/lists/partial", "cache/archives/partial", "parts", "prefs"):
            (apt / d).mkdir(parents=True, exist_ok=True)
        signed = f" [signed-by={KEYRING}]" if KEYRING.exists() else ""
        (apt / "sources.list").write_text("".join(
            f"deb{signed} http://deb.debian.org/{path} {suite} {COMPONENTS}\n"
            for path, suite in (("debian", codename), ("debian", f"{codename}-updates"),
                                ("debian-security", f"{codename}-security"))))
    return ["-o", f"Dir::Etc::sourcelist={apt / 'sources.list'}", "-o", f"Dir::Etc::sourceparts={apt / 'parts'}",
            "-o", f"Dir::Etc::preferencesparts={apt / 'prefs'}", "-o", f"Dir::State={apt / 'state'}",
            "-o", f"Dir::Cache={apt / 'cache'}", "-o", "Dir::State::status=/var/lib/dpkg/status",
            "-o", "APT::Sandbox::User=root", "-q"]


async def _apt(root: Path, suite: str, *args: str, cwd: Path | None = None) -> str:
    options = await asyncio.to_thread(_apt_dirs, root, suite)
    return await _run(args[0], *options, *args[1:], cwd=cwd)


async def _candidate(root: Path, suite: str, package: str) -> str:
    policy = await _apt(root, suite, "apt-cache", "policy", package)
    match = re.search(r"Candidate:\s*(\S+)", policy)
    if not match or match.group(1) == "(none)":
        raise AgentError(f"{package} is not in Debian's {COMPONENTS} for this release")
    return match.group(1)


def _find(debs: Path, spec: str) -> Path | None:
    package, version = spec.split("=", 1)
    found = list(debs.glob(f"{package}_{version.split(':')[-1]}_*.deb"))
    return found[0] if found else None


async def _download(root: Path, suite: str, specs: list[str]) -> dict[str, Path]:
    """package=version -> its .deb under debs/ (each fetched once, ever)."""
    debs = root / "debs"
    await asyncio.to_thread(debs.mkdir, parents=True, exist_ok=True)
    missing = [s for s in specs if await asyncio.to_thread(_find, debs, s) is None]
    if missing:
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=debs, prefix=".dl-"))
        try:
            await _apt(root, suite, "apt-get", "download", *missing, cwd=tmp)
            for deb in await asyncio.to_thread(lambda: list(tmp.glob("*.deb"))):
                await asyncio.to_thread(os.replace, deb, debs / deb.name)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
    out = {}
    for spec in specs:
        deb = await asyncio.to_thread(_find, debs, spec)
        if deb is None:
            raise AgentError(f"apt-get download {spec} gave no package")
        out[spec] = deb
    return out


# -- the supported-GPU list ----------------------------------------------------------------------

_ROW = re.compile(r"^\|\s*(NVIDIA[^|]*?)\s*\|\s*([0-9A-F]{4})(?:\s+([0-9A-F]{4})\s+([0-9A-F]{4}))?\s*\|", re.M)


def parse_supported(readme: str) -> dict[str, list[str]]:
    """The README's "Compatible GPUs" table: "0x2330" -> the product names listed for it."""
    out: dict[str, list[str]] = {}
    for match in _ROW.finditer(readme):
        names = out.setdefault(f"0x{match.group(2).lower()}", [])
        if match.group(1) not in names:
            names.append(match.group(1))
    return out


# -- building ------------------------------------------------------------------------------------


def _key(suite: str, driver: str, kernel_package: str, kernel_version: str) -> str:
    h = hashlib.sha256(f"{KIT_FORMAT}|{suite}|{driver}|{kernel_package}={kernel_version}|"
                       f"{','.join(USERSPACE_PACKAGES)}".encode())
    return h.hexdigest()[:12]


def _patch_for_kernel(src: Path, headers: Path) -> list[str]:
    """Source fixes the driver release needs for this kernel build; returns what was changed.

    Debian's 6.1.192 backports the `exclude_bars` argument of pci_resize_resource() (upstream
    "PCI: Fix restoring BARs on BAR resize rollback"), which the 535 driver predates: it calls
    the 3-argument form and the build stops. 0 excludes nothing, the old behaviour. Drop this
    once Debian's driver release checks for the argument itself (newer drivers do, through a
    conftest)."""
    done = []
    pci_h = next(headers.glob("usr/src/linux-headers-*-common/include/linux/pci.h"), None)
    nv_pci = src / "nvidia" / "nv-pci.c"
    if pci_h and nv_pci.exists() and re.search(r"pci_resize_resource\([^)]*exclude_bars", pci_h.read_text()):
        text = nv_pci.read_text()
        fixed = text.replace("pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size)",
                             "pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size, 0)")
        if fixed != text:
            nv_pci.write_text(fixed)
            done.append("pci_resize_resource: exclude_bars=0 (kernel backport of the 4-argument form)")
    return done


def _assemble(tmp: Path, unpacked: Path, built: Path, version: str) -> None:
    """modules/, firmware/, userspace/{bin,lib} under tmp/image (blocking)."""
    image = tmp / "image"
    (image / "modules").mkdir(parents=True)
    for name in KERNEL_MODULES:
        ko = built / f"{name}.ko"
        # Debug info is 90% of nvidia.ko (185 MB to 11 MB): the guest never needs it.
        data = modules.strip_signature(ko.read_bytes())
        (image / "modules" / ko.name).write_bytes(data)
    fw = image / "firmware" / "nvidia" / version
    fw.mkdir(parents=True)
    # /lib/firmware up to bookworm, /usr/lib/firmware from trixie on (merged /usr).
    source = next(d for d in (unpacked / "lib" / "firmware", unpacked / "usr" / "lib" / "firmware") if d.is_dir())
    for name in FIRMWARE:
        shutil.copyfile(source / "nvidia" / version / name, fw / name)
    bin_dir, lib_dir = image / "userspace" / "bin", image / "userspace" / "lib"
    bin_dir.mkdir(parents=True)
    lib_dir.mkdir(parents=True)
    shutil.copy2(unpacked / "usr" / "lib" / "nvidia" / "current" / "nvidia-smi", bin_dir / "nvidia-smi")
    for lib in (unpacked / "usr" / "lib" / "x86_64-linux-gnu" / "nvidia" / "current").iterdir():
        if lib.is_symlink():
            (lib_dir / lib.name).symlink_to(os.readlink(lib))
        else:
            shutil.copy2(lib, lib_dir / lib.name)


async def build_gpu_kit(cache_dir: Path, guest: GuestKit, *, suite: str | None = None, jobs: int | None = None) -> dict:
    """Builds (or finds) the kit for `guest`'s kernel; returns its kit.json. Takes minutes the
    first time (downloads, then the two modules' interface layer: nv-kernel.o ships prebuilt).

    `suite`: the Debian release the driver comes from (default: this host's). The guest
    kernel's headers always come from the host's release, which is the guest kernel's; a newer
    release's driver (trixie's 550, the first to support the H200) builds for it all the same."""
    root = Path(cache_dir).absolute() / "gpukit"
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        return await _build_locked(root, guest, suite or await asyncio.to_thread(_codename), jobs)
    finally:
        await asyncio.to_thread(os.close, fd)


async def _build_locked(root: Path, guest: GuestKit, suite: str, jobs: int | None) -> dict:
    meta = json.loads(await asyncio.to_thread((guest.initrd.parent / "kit.json").read_text))
    kernel_version, kernel_package_version = meta["kernel_version"], meta["package_version"]
    kernel_package = f"linux-image-{kernel_version}"
    started = time.monotonic()
    host = await asyncio.to_thread(_codename)
    for release in {suite, host}:
        await _apt(root, release, "apt-get", "update")
    driver = await _candidate(root, suite, SOURCE_PACKAGE)
    upstream = driver.split("-")[0].split(":")[-1]
    dest = root / f"{upstream}-{kernel_version}-{_key(suite, driver, kernel_package, kernel_package_version)}"
    existing = await asyncio.to_thread(_read_meta, dest)
    if existing is not None:
        return existing
    for tool in ("make", "gcc-12", "strip", "mkfs.ext4", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise AgentError(f"building the GPU kit needs {tool} on the host (apt-get install build-essential "
                             "gcc-12 e2fsprogs)", permanent=True)
    headers_show = await _apt(root, host, "apt-cache", "show", f"linux-headers-{kernel_version}={kernel_package_version}")
    deps = re.search(r"^Depends:(.*)$", headers_show, re.M).group(1)
    common = re.search(r"(linux-headers-\S+-common) \(= ([^)]+)\)", deps)
    kbuild = re.search(r"(linux-kbuild-\S+) \(>= ([^)]+)\)", deps)
    debs = await _download(root, suite, [f"{SOURCE_PACKAGE}={driver}", *(f"{p}={driver}" for p in USERSPACE_PACKAGES)])
    debs |= await _download(root, host, [f"linux-headers-{kernel_version}={kernel_package_version}",
                                         f"{common.group(1)}={common.group(2)}", f"{kbuild.group(1)}={kbuild.group(2)}"])
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=root, prefix=".build-"))
    try:
        unpacked, headers = tmp / "unpacked", tmp / "headers"
        for spec, deb in debs.items():
            target = headers if spec.startswith("linux-") else unpacked
            await _run("dpkg-deb", "-x", str(deb), str(target))
        # The headers' Makefile includes the -common tree by its installed path.
        arch_dir = headers / "usr" / "src" / f"linux-headers-{kernel_version}"
        common_dir = headers / "usr" / "src" / common.group(1)
        makefile = arch_dir / "Makefile"
        text = await asyncio.to_thread(makefile.read_text)
        await asyncio.to_thread(makefile.write_text, text.replace(f"/usr/src/{common.group(1)}", str(common_dir)))
        src_root = tmp / "src"
        await asyncio.to_thread(src_root.mkdir)
        await _run("tar", "-xJf", str(unpacked / "usr" / "src" / "nvidia-open-kernel.tar.xz"), "-C", str(src_root))
        src = src_root / "modules" / "nvidia-open-kernel"
        patches = await asyncio.to_thread(_patch_for_kernel, src, headers)
        build_started = time.monotonic()
        await _run("make", f"-j{jobs or os.cpu_count() or 1}", f"NV_KERNEL_MODULES={' '.join(KERNEL_MODULES)}",
                   f"SYSSRC={common_dir}", f"SYSOUT={arch_dir}", "modules", cwd=src)
        compile_s = time.monotonic() - build_started
        for name in KERNEL_MODULES:
            await _run("strip", "--strip-debug", str(src / f"{name}.ko"))
        info = modules.modinfo(await asyncio.to_thread((src / "nvidia.ko").read_bytes))
        vermagic = info.get("vermagic", "")
        if vermagic.split()[:1] != [kernel_version]:
            raise AgentError(f"nvidia.ko was built for {vermagic!r}, not the guest kernel {kernel_version}")
        await asyncio.to_thread(_assemble, tmp, unpacked, src, upstream)
        readme = gzip.decompress(await asyncio.to_thread(
            (unpacked / "usr" / "share" / "doc" / SOURCE_PACKAGE / "README.md.gz").read_bytes)).decode()
        supported = parse_supported(readme)
        image_dir = tmp / "image"
        size = await asyncio.to_thread(_tree_size, image_dir)
        kit = {
            "driver_version": upstream, "package_version": driver, "suite": suite, "kernel_version": kernel_version,
            "kernel_package_version": kernel_package_version, "vermagic": vermagic.strip(),
            "modules": [f"{m}.ko" for m in KERNEL_MODULES], "firmware": list(FIRMWARE),
            "userspace": sorted(p.name for p in (image_dir / "userspace" / "lib").iterdir()) + ["nvidia-smi"],
            "patches": patches, "supported_names": supported, "supported": {k: True for k in supported},
            "built_at": time.time(), "compile_seconds": round(compile_s, 1),
            "build_seconds": round(time.monotonic() - started, 1), "content_bytes": size,
        }
        await asyncio.to_thread((image_dir / "kit.json").write_text, json.dumps(kit, indent=1) + "\n")
        img = tmp / "gpukit.img"
        await _run("truncate", "-s", str(size + size // 5 + (16 << 20)), str(img))
        await _run("mkfs.ext4", "-q", "-F", "-L", "gantry-gpukit", "-d", str(image_dir), str(img))
        kit["image_bytes"] = (await asyncio.to_thread(img.stat)).st_size
        out = tmp / "out"
        await asyncio.to_thread(out.mkdir)
        await asyncio.to_thread(os.replace, img, out / "gpukit.img")
        await asyncio.to_thread((out / "kit.json").write_text, json.dumps(kit, indent=1) + "\n")
        await asyncio.to_thread(os.replace, out, dest)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
    await asyncio.to_thread(_prune, root, dest)
    return await asyncio.to_thread(_read_meta, dest)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _read_meta(dest: Path) -> dict | None:
    try:
        meta = json.loads((dest / "kit.json").read_text())
    except (OSError, ValueError):
        return None
    if not (dest / "gpukit.img").exists():
        return None
    return {**meta, "image": str(dest / "gpukit.img")}


def _prune(root: Path, keep: Path) -> None:
    """The new kit and the one before it stay (a VM may still have the older one attached)."""
    kits = sorted((d for d in root.iterdir() if d.is_dir() and d != keep and d.name not in ("apt", "debs")
                   and not d.name.startswith(".")), key=lambda d: d.stat().st_mtime)
    for d in kits[:-1]:
        shutil.rmtree(d, ignore_errors=True)


def load_gpu_kit(cache_dir: Path = DEFAULT_CACHE_DIR, kernel_version: str | None = None,
                 suite: str | None = None) -> dict | None:
    """The newest built kit (for this guest kernel and driver release, if given), or None.
    Blocking, cheap: this is all a replica's start ever does with the kit."""
    root = Path(cache_dir) / "gpukit"
    try:
        candidates = [d for d in root.iterdir() if d.is_dir() and d.name not in ("apt", "debs")
                      and not d.name.startswith(".")]
    except OSError:
        return None
    kits = [k for k in (_read_meta(d) for d in sorted(candidates, key=lambda d: d.stat().st_mtime, reverse=True)) if k]
    # The host's release unless told otherwise; a kit.json from before the suite was recorded
    # came from the host's release too.
    host = _codename()
    for kit in kits:
        if kernel_version not in (None, kit.get("kernel_version")):
            continue
        if (kit.get("suite") or host) == (suite or host):
            return kit
    return None


async def ensure_gpu_kit(cache_dir: Path, guest: GuestKit, *, suite: str | None = None) -> dict:
    """The kit for this guest kernel (and driver release): loaded when built, else built now
    (minutes)."""
    kit = await asyncio.to_thread(load_gpu_kit, cache_dir, guest.kernel_version, suite)
    return kit if kit is not None else await build_gpu_kit(cache_dir, guest, suite=suite)
