"""The kernel ELF for PVH boot, taken out of a bzImage: every compression a kernel may use,
the PVH note, the zero tails cut from the file, and a clear reason when it cannot be done."""

from __future__ import annotations

import gzip
import lzma
import struct
import subprocess

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.guest import pvh

ENTRY = 0x1000850


def _elf(*, note_type: int = pvh.PVH_NOTE, tail_zero_pages: int = 3) -> bytes:
    """A small x86-64 ELF: one PT_NOTE with a Xen note, one PT_LOAD of 2 pages of code then
    `tail_zero_pages` zero pages (a .bss stored in the file, as the kernel's is)."""
    note_name = b"Xen\0"
    note = struct.pack("<III", len(note_name), 8, note_type) + note_name + struct.pack("<Q", ENTRY)
    code = bytes(range(256)) * 32  # 2 pages, no zero tail
    load = code + bytes(pvh.PAGE * tail_zero_pages)
    ph_off, note_off, load_off = 64, 0x200, 0x1000
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", header, 16, 2, 0x3E, 1, ENTRY, ph_off, 0, 0, 64, 56, 2, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", pvh.PT_NOTE, 4, note_off, 0, 0, len(note), len(note), 4)
    phdrs += struct.pack("<IIQQQQQQ", pvh.PT_LOAD, 7, load_off, 0x1000000, 0x1000000, len(load), len(load), 0x1000)
    out = bytearray(load_off + len(load))
    out[:64], out[ph_off : ph_off + len(phdrs)] = header, phdrs
    out[note_off : note_off + len(note)] = note
    out[load_off:] = load
    return bytes(out)


def _bzimage(payload: bytes, setup_sects: int = 4) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<II", setup, 0x248, 0x40, len(payload))
    return bytes(setup) + bytes(0x40) + payload + bytes(16)


def _compressed(name: str, elf: bytes) -> bytes:
    size = struct.pack("<I", len(elf))  # the kernel's size_append, for all but gzip
    if name == "gzip":
        return gzip.compress(elf)
    if name == "xz":
        return lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size
    if name == "lzma":
        return lzma.compress(elf, format=lzma.FORMAT_ALONE) + size
    # lz4 -l: the legacy frame the kernel's build uses
    argv = {"lz4": ["lz4", "-l", "-9", "-c"], "zstd": ["zstd", "-19", "-c"]}[name]
    return subprocess.run(argv, input=elf, capture_output=True, check=True).stdout + size


def _load_segment(elf: bytes) -> tuple[int, int]:
    _, _, _, filesz, memsz = next(s for s in pvh._segments(elf) if s[1] == pvh.PT_LOAD)
    return filesz, memsz


@pytest.mark.parametrize("compression", ["gzip", "xz", "lzma", "lz4", "zstd"])
def test_every_kernel_compression_gives_a_pvh_elf_without_its_zero_tail(compression):
    elf = _elf()
    name, out = pvh.vmlinux_from_bzimage(_bzimage(_compressed(compression, elf)))
    assert name == compression
    assert pvh.pvh_entry(out) == ENTRY
    # The zero pages left the file part of the segment and stayed in its memory size.
    assert _load_segment(elf) == (5 * pvh.PAGE, 5 * pvh.PAGE)
    assert _load_segment(out) == (2 * pvh.PAGE, 5 * pvh.PAGE)
    assert out[0x1000 : 0x1000 + 2 * pvh.PAGE] == elf[0x1000 : 0x1000 + 2 * pvh.PAGE]  # the code itself


def test_a_segment_with_data_to_its_end_keeps_its_size():
    elf = _elf(tail_zero_pages=0)
    assert _load_segment(pvh.trim_zero_tails(elf)) == _load_segment(elf)


def test_each_reason_it_cannot_be_done_is_named():
    elf = _elf()
    with pytest.raises(AgentError, match="not a bzImage"):
        pvh.vmlinux_from_bzimage(elf)
    with pytest.raises(AgentError, match="unknown kernel compression"):
        pvh.vmlinux_from_bzimage(_bzimage(b"BZh91AY&SY" + bytes(64)))
    with pytest.raises(AgentError, match="no PVH entry note"):
        pvh.vmlinux_from_bzimage(_bzimage(_compressed("xz", _elf(note_type=1))))
    truncated = _compressed("lz4", elf)
    with pytest.raises(AgentError, match="lz4 could not unpack|unpacked to"):
        pvh.vmlinux_from_bzimage(_bzimage(truncated[: len(truncated) // 2] + truncated[-4:]))
    with pytest.raises(AgentError, match="not an x86-64 ELF"):
        pvh.vmlinux_from_bzimage(_bzimage(_compressed("gzip", b"\x7fELF" + bytes(100))))
    bad = bytearray(_bzimage(_compressed("gzip", elf)))
    struct.pack_into("<I", bad, 0x24C, len(bad))
    with pytest.raises(AgentError, match="past the end"):
        pvh.vmlinux_from_bzimage(bytes(bad))


def test_a_missing_decompressor_is_named_with_its_package(monkeypatch):
    monkeypatch.setattr(pvh.shutil, "which", lambda tool: None)
    with pytest.raises(AgentError, match=r"lz4-compressed and `lz4` is missing \(apt-get install lz4\)"):
        pvh.vmlinux_from_bzimage(_bzimage(_compressed("lz4", _elf())))
