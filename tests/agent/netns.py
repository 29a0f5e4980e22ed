"""Throwaway network namespaces for tests: everything a test builds lives and dies in them.

Workplace rule: test traffic goes only to loopback or to addresses inside namespaces the test
created itself. Addresses used inside these namespaces come from TEST-NET-1 (192.0.2.0/24,
RFC 5737) so they can never be mistaken for a real network.

The helpers are synchronous (they run in fixtures, or in `asyncio.to_thread` from a test).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

# A tiny TCP listener run inside a namespace: answers every connection with the peer's
# address, so a test sees which source address NAT left on a packet.
WHOAMI_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b"\\n")
    c.close()
"""

# A client run inside a namespace: prints what an HTTP GET or a raw TCP read returns.
FETCH_CLIENT = """
import socket, sys, urllib.request
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "http":
    print(urllib.request.urlopen(f"http://{host}:{port}/{sys.argv[4]}", timeout=5).read().decode(), end="")
else:
    with socket.create_connection((host, port), timeout=5) as c:
        print(c.makefile().readline(), end="")
"""


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], check=check, capture_output=True, text=True, timeout=30)


class Netns:
    def __init__(self, name: str):
        self.name = name
        self._procs: list[subprocess.Popen[str]] = []

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        result = subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {self.name} failed: {result.stderr.strip()}")
        return result.stdout

    def spawn(self, *argv: str, cwd: Path | None = None, ready_line: str | None = None) -> subprocess.Popen[str]:
        """Start a background process in the namespace; it is killed when the namespace goes."""
        proc = subprocess.Popen(
            self.argv(*argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._procs.append(proc)
        if ready_line is not None:
            line = proc.stdout.readline() if proc.stdout else ""
            if ready_line not in line:
                raise AssertionError(f"{argv[0]} in {self.name} did not start: {line!r}")
        return proc

    def serve_whoami(self, port: int) -> None:
        self.spawn(sys.executable, "-c", WHOAMI_SERVER, str(port), ready_line="ready")

    def serve_http(self, port: int, directory: Path) -> None:
        proc = self.spawn(
            sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", str(directory)
        )
        self.wait_listening(port, proc)

    def wait_listening(self, port: int, proc: subprocess.Popen[str] | None = None, timeout: float = 30) -> None:
        # Generous: the suite shares two cores with TCG-emulated VMs, and a Python start-up
        # can take seconds then.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f":{port} " in self.run("ss", "-Htln"):
                return
            if proc is not None and proc.poll() is not None:
                output = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"server for {port} in {self.name} exited {proc.returncode}: {output}")
            time.sleep(0.05)
        raise AssertionError(f"nothing listens on {port} in {self.name} after {timeout:g}s")

    def fetch(self, kind: str, host: str, port: int, path: str = "", check: bool = True) -> str:
        return self.run(sys.executable, "-c", FETCH_CLIENT, kind, host, str(port), path, check=check)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
        # Anything else still inside (a QEMU a test launched, say) was started by the test too.
        pids = ip("netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        ip("netns", "del", self.name, check=False)


def create_netns(prefix: str = "gtest") -> Netns:
    name = f"{prefix}-{secrets.token_hex(4)}"
    ip("netns", "add", name)
    ns = Netns(name)
    try:
        ip("-n", name, "link", "set", "lo", "up")  # a fresh namespace starts with lo down
    except BaseException:
        ns.close()
        raise
    return ns


def link_veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    """A veth pair between two namespaces, created directly inside them: nothing passes
    through the root namespace, not even for a moment."""
    ip("-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)


def configure(ns: Netns, ifname: str, address: str, *, master: str | None = None, gateway: str | None = None) -> None:
    if master is not None:
        ip("-n", ns.name, "link", "set", ifname, "master", master)
    if address:
        ip("-n", ns.name, "addr", "add", address, "dev", ifname)
    ip("-n", ns.name, "link", "set", ifname, "up")
    if gateway is not None:
        ip("-n", ns.name, "route", "add", "default", "via", gateway)
