"""A hostile guest program for the meter tests: it writes a line of its choosing on the guest's
status channel, the one /init reports the workload's end on, and then stays alive.

The channel is a virtio-serial port that admits one opener, and /init holds it open for the
whole boot, so opening it again fails (EBUSY). A root workload does not need to open it: it
copies /init's descriptor (fd 3) with pidfd_open(1) + pidfd_getfd(2) (Linux 5.6+; the guest
kernel is 6.1) and writes on it. Any root process in the guest can do this, so the test
treats it as what any tenant can do.

The program is a static x86-64 ELF assembled here (about 200 bytes, no libc, no toolchain):
    fd = pidfd_open(1, 0); if fd < 0: exit(2)
    st = pidfd_getfd(fd, 3, 0); if st < 0: exit(3)
    write(st, LINE); write(1, NOTE)
    loop forever: pause()
"""

from __future__ import annotations

import struct

BASE = 0x400000
HEADERS = 64 + 56  # ELF header + one program header
NOTE = b"forged a final on the status channel\n"

SYS_WRITE, SYS_PAUSE, SYS_EXIT = 1, 34, 60
SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 434, 438


def _mov_eax(n: int) -> bytes:
    return b"\xb8" + struct.pack("<I", n)


def _mov_edi(n: int) -> bytes:
    return b"\xbf" + struct.pack("<I", n)


def _mov_esi(n: int) -> bytes:
    return b"\xbe" + struct.pack("<I", n)


def _mov_edx(n: int) -> bytes:
    return b"\xba" + struct.pack("<I", n)


SYSCALL = b"\x0f\x05"
TEST_EAX = b"\x85\xc0"
MOV_EDI_EAX = b"\x89\xc7"
XOR_ESI = b"\x31\xf6"
XOR_EDX = b"\x31\xd2"


def program(line: bytes) -> bytes:
    """The ELF file: writes `line` on /init's fd 3, NOTE on stdout, then pauses forever."""
    # Code with two kinds of fix-up: a short conditional jump to `fail` (js rel8) and a
    # rip-relative lea of a string (lea rsi, [rip+rel32]).
    parts: list = [
        _mov_edi(1), XOR_ESI, _mov_eax(SYS_PIDFD_OPEN), SYSCALL, TEST_EAX, ("js", "fail2"),
        MOV_EDI_EAX, _mov_esi(3), XOR_EDX, _mov_eax(SYS_PIDFD_GETFD), SYSCALL, TEST_EAX, ("js", "fail3"),
        MOV_EDI_EAX, ("lea", "line"), _mov_edx(len(line)), _mov_eax(SYS_WRITE), SYSCALL,
        _mov_edi(1), ("lea", "note"), _mov_edx(len(NOTE)), _mov_eax(SYS_WRITE), SYSCALL,
        ("label", "hang"), _mov_eax(SYS_PAUSE), SYSCALL, ("jmp", "hang"),
        ("label", "fail2"), _mov_edi(2), _mov_eax(SYS_EXIT), SYSCALL,
        ("label", "fail3"), _mov_edi(3), _mov_eax(SYS_EXIT), SYSCALL,
        ("label", "line"), line,
        ("label", "note"), NOTE,
    ]
    sizes = {"js": 2, "jmp": 2, "lea": 7, "label": 0}
    labels, at = {}, 0
    for part in parts:
        if isinstance(part, tuple):
            if part[0] == "label":
                labels[part[1]] = at
            at += sizes[part[0]]
        else:
            at += len(part)
    code, at = b"", 0
    for part in parts:
        if not isinstance(part, tuple):
            code += part
            at += len(part)
            continue
        kind, label = part
        end = at + sizes[kind]
        if kind == "js":
            code += b"\x78" + struct.pack("<b", labels[label] - end)
        elif kind == "jmp":
            code += b"\xeb" + struct.pack("<b", labels[label] - end)
        elif kind == "lea":
            code += b"\x48\x8d\x35" + struct.pack("<i", labels[label] - end)
        at = end
    size = HEADERS + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    return header + phdr + code
