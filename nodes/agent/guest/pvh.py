"""The guest kernel as an ELF for PVH direct boot, taken out of Debian's bzImage.

Why: QEMU boots a bzImage by reading the whole file into its heap and keeping it there for
the life of the VM (fw_cfg serves it again on reset): 13.5 MiB of private memory per VM for
Debian's LZ4 cloud kernel. An ELF with a PVH entry note is instead loaded from a read-only
file mapping, so every VM on the host shares one page-cache copy. The guest also skips the
decompressor, which under TCG is about a second of every boot.

The bzImage's setup header says where its payload is (payload_offset/payload_length, boot
protocol 2.08+); the payload is the kernel's own ELF (objcopy -S of vmlinux) compressed with
whatever the kernel was configured for, followed by its 4-byte little-endian uncompressed
size for every compressor but gzip. gzip and xz/lzma decompress with the standard library;
lz4 (Debian's choice for its cloud kernels) and zstd with Debian's `lz4`/`zstd` tools.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import zlib

from nodes.agent.errors import AgentError

PAGE = 4096
# Xen's ELF note types; 18 (XEN_ELFNOTE_PHYS32_ENTRY) is the 32-bit PVH entry point that
# QEMU's loader looks for. CONFIG_PVH=y emits it.
PVH_NOTE = 18
PT_LOAD, PT_NOTE = 1, 4

# (magic, name, tool argv or None for the standard library)
_FORMATS = (
    (b"\x1f\x8b", "gzip", None),
    (b"\xfd7zXZ\x00", "xz", None),
    (b"\x5d\x00\x00", "lzma", None),
    (b"\x02\x21\x4c\x18", "lz4", ("lz4", "-dc")),
    (b"\x28\xb5\x2f\xfd", "zstd", ("zstd", "-dc")),
)


def payload(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage, from its setup header."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise AgentError("the kernel file is not a bzImage (no HdrS setup header)")
    (version,) = struct.unpack_from("<H", bzimage, 0x206)
    if version < 0x208:
        raise AgentError(f"boot protocol {version >> 8}.{version & 0xff} predates payload_offset (2.08)")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if start + length > len(bzimage):
        raise AgentError("the bzImage's payload runs past the end of the file")
    return bzimage[start : start + length]


def decompress(data: bytes) -> tuple[str, bytes]:
    """(format name, the kernel ELF) of a bzImage payload."""
    for magic, name, tool in _FORMATS:
        if data.startswith(magic):
            break
    else:
        raise AgentError(f"unknown kernel compression (payload starts {data[:6].hex()})")
    if name == "gzip":
        return name, zlib.decompressobj(wbits=31).decompress(data)
    body, (size,) = data[:-4], struct.unpack("<I", data[-4:])
    if tool is None:
        out = lzma.LZMADecompressor(lzma.FORMAT_XZ if name == "xz" else lzma.FORMAT_ALONE).decompress(body)
    else:
        if shutil.which(tool[0]) is None:
            raise AgentError(f"the kernel is {name}-compressed and `{tool[0]}` is missing (apt-get install {tool[0]})")
        proc = subprocess.run(tool, input=body, capture_output=True)
        if proc.returncode != 0:
            raise AgentError(f"{tool[0]} could not unpack the kernel: {proc.stderr.decode(errors='replace').strip()[:200]}")
        out = proc.stdout
    if len(out) != size:
        raise AgentError(f"the kernel unpacked to {len(out)} bytes, its header says {size}")
    return name, out


def _segments(elf: bytes):
    """(header offset, type, file offset, file size, memory size) per program header."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or struct.unpack_from("<H", elf, 0x12)[0] != 0x3E:
        raise AgentError("the unpacked kernel is not an x86-64 ELF")
    phoff, phentsize, phnum = struct.unpack_from("<Q", elf, 0x20)[0], *struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        at = phoff + i * phentsize
        p_type, _flags, offset, _va, _pa, filesz, memsz = struct.unpack_from("<IIQQQQQ", elf, at)
        yield at, p_type, offset, filesz, memsz


def pvh_entry(elf: bytes) -> int | None:
    """The PVH entry address from the ELF's Xen notes, or None."""
    for _at, p_type, offset, filesz, _memsz in _segments(elf):
        if p_type != PT_NOTE:
            continue
        pos, end = offset, offset + filesz
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            desc = pos + 12 + ((namesz + 3) & ~3)
            if name == b"Xen" and n_type == PVH_NOTE and descsz in (4, 8):
                return int.from_bytes(elf[desc : desc + descsz], "little")
            pos = desc + ((descsz + 3) & ~3)
    return None


def trim_zero_tails(elf: bytes) -> bytes:
    """Each loadable segment's file size cut to its last non-zero page. The cut part (the
    kernel's .bss and .brk, about 11 MiB) is still memory size, which the loader zero-fills
    instead of reading from the file: those pages need not sit in every QEMU's mapping."""
    out = bytearray(elf)
    for at, p_type, offset, filesz, _memsz in _segments(elf):
        if p_type != PT_LOAD:
            continue
        used = len(elf[offset : offset + filesz].rstrip(b"\0"))
        struct.pack_into("<Q", out, at + 32, min(filesz, (used + PAGE - 1) // PAGE * PAGE))
    return bytes(out)


def vmlinux_from_bzimage(bzimage: bytes) -> tuple[str, bytes]:
    """(compression, a PVH-bootable ELF) from a bzImage; AgentError says why not."""
    name, elf = decompress(payload(bzimage))
    if pvh_entry(elf) is None:
        raise AgentError("the kernel has no PVH entry note (built without CONFIG_PVH)")
    return name, trim_zero_tails(elf)
