"""Kernel module dependency resolution without kmod.

The Debian kernel package ships no modules.dep (depmod writes it at install time, and we never
install), and the host may lack kmod altogether, so dependencies are read from each module's
own `.modinfo` ELF section (`depends=a,b`), exactly what depmod itself reads.
"""

from __future__ import annotations

import struct
from pathlib import Path

from nodes.agent.errors import AgentError


SIGNATURE_MAGIC = b"~Module signature appended~\n"


def strip_signature(ko: bytes) -> bytes:
    """The module without its appended signature (struct module_signature: 12 bytes ending in
    the big-endian signature length, then the magic).

    Unsigned modules load the same (Debian does not enforce signatures; the package itself was
    verified by apt), and the guest skips an RSA verification per module, which under TCG costs
    about as much as the rest of the module loading together.
    """
    if not ko.endswith(SIGNATURE_MAGIC):
        return ko
    end = len(ko) - len(SIGNATURE_MAGIC)
    (sig_len,) = struct.unpack_from(">I", ko, end - 4)
    return ko[: end - 12 - sig_len]


def modinfo(ko: bytes) -> dict[str, str]:
    """The key=value strings of an ELF64 module's .modinfo section (first value per key)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise AgentError("kernel module is not an ELF64 object")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if ko[stroff + name : ko.index(b"\0", stroff + name)] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    return {}


def index(modules_dir: Path) -> dict[str, Path]:
    """Module name (dashes folded to underscores, as the kernel does) -> its .ko file."""
    found: dict[str, Path] = {}
    for ko in modules_dir.rglob("*.ko"):
        found[ko.name[: -len(".ko")].replace("-", "_")] = ko
    return found


def load_order(wanted: list[str], modules_dir: Path, builtin: set[str]) -> list[Path]:
    """The .ko files to insmod, dependencies first, for `wanted` and everything they need.

    Names the kernel has built in are skipped (they need no loading), so the same list works
    across kernel configs that move a driver between =y and =m.
    """
    available = index(modules_dir)
    order: list[Path] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name in chain:
            raise AgentError(f"kernel module dependency cycle: {' -> '.join((*chain, name))}")
        ko = available.get(name)
        if ko is None:
            raise AgentError(f"kernel module {name} is neither built in nor shipped by the kernel package")
        for dep in filter(None, modinfo(ko.read_bytes()).get("depends", "").split(",")):
            visit(dep, (*chain, name))
        done.add(name)
        order.append(ko)

    for name in wanted:
        visit(name, ())
    return order


def builtin_names(modules_builtin: Path) -> set[str]:
    """Names listed in the kernel's modules.builtin (`kernel/fs/ext4/ext4.ko` -> `ext4`)."""
    if not modules_builtin.exists():
        return set()
    return {
        Path(line.strip()).name.removesuffix(".ko").replace("-", "_")
        for line in modules_builtin.read_text().splitlines()
        if line.strip()
    }
