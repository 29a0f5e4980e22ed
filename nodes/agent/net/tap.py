"""Creating persistent TAP devices, optionally inside a named network namespace.

A TAP is made by ioctl on /dev/net/tun, not by netlink, and lands in the namespace of the
thread that opened /dev/net/tun. So the work runs in a thread of its own, which enters the
namespace with setns(2) and then ends: namespaces are per thread, and a pooled thread left in
another namespace would silently run later work there.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import struct
import threading
from collections.abc import Callable

# From <linux/if_tun.h> (x86_64 ioctl encoding; the agent only runs on x86_64 hosts).
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


async def create_tap(ifname: str, netns: str | None) -> None:
    """A persistent TAP owned by root: QEMU (root) attaches to it by name later, and it
    outlives both QEMU and the agent until it is deleted."""
    await asyncio.to_thread(_in_own_thread, netns, lambda: _create_tap(ifname))


def _create_tap(ifname: str) -> None:
    ifr = struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETOWNER, 0)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def _in_own_thread(netns: str | None, work: Callable[[], None]) -> None:
    failure: list[BaseException] = []

    def target() -> None:
        try:
            if netns is not None:
                _enter_netns(netns)
            work()
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"netns:{netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _enter_netns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_RUN_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)
