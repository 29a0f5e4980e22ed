"""Commands and sysctls run in the network namespace the agent manages.

The agent manages the host's root namespace; tests run the very same code against a
namespace they created (`ip netns add`). Namespaces are per process, and sysctls under
/proc/sys/net belong to the namespace of whoever opens them, so every command for a named
namespace goes through `ip netns exec` rather than touching files from this process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from nodes.agent.errors import AgentError


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class NetnsHost:
    """Where commands run: `netns=None` is the namespace of this process (the host)."""

    netns: str | None = None

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    async def run(self, *argv: str, input: str | None = None, check: bool = True) -> CommandResult:
        full = self.argv(*argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise AgentError(f"{full[0]} is not installed ({exc.strerror}); install nftables and iproute2") from exc
        out, err = await proc.communicate(None if input is None else input.encode())
        result = CommandResult(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and result.returncode != 0:
            raise AgentError(f"{' '.join(argv[:3])} failed: {result.stderr.strip() or result.returncode}")
        return result

    async def read_sysctl(self, key: str) -> str:
        path = _sysctl_path(key)
        if self.netns is None:
            return (await asyncio.to_thread(path.read_text)).strip()
        return (await self.run("cat", str(path))).stdout.strip()

    async def sysctl_exists(self, key: str) -> bool:
        """Whether the key exists (IPv6 keys do not where IPv6 is disabled at boot)."""
        path = _sysctl_path(key)
        if self.netns is None:
            return await asyncio.to_thread(path.exists)
        return (await self.run("test", "-e", str(path), check=False)).returncode == 0

    async def ensure_sysctl(self, key: str, value: str) -> None:
        """Measure before act: an unchanged sysctl is not rewritten."""
        if await self.read_sysctl(key) == value:
            return
        path = _sysctl_path(key)
        if self.netns is None:
            await asyncio.to_thread(path.write_text, value)
        else:
            await self.run("sh", "-c", 'printf %s "$1" > "$2"', "sh", value, str(path))


def _sysctl_path(key: str) -> Path:
    # Keys are written with slashes (net/ipv4/conf/<ifname>/route_localnet) because an
    # interface name may itself contain a dot.
    return Path("/proc/sys") / key
