"""The agent's own nftables tables, kept in step with what the leases say.

Two tables: `ip gantry` (NAT, and the IPv4 filter: what a VM may reach, what may reach it)
and `bridge gantry` (each TAP at layer 2: isolation, and anti-spoofing before the bridge learns a MAC).
Every rule we add carries a comment `<owner>:<hash>` where the owner is `gantry:host` or
`gantry:vm:<name>` and the hash is of the rule's text. Syncing an owner compares comments
only, chain by chain and in order: a chain whose rules of that owner are already the desired
ones stays as it is (a second pass changes nothing); otherwise that owner's rules in the chain
are replaced, by handle, in one transaction; nothing of anyone else's is touched. Rules are
written in nft's text syntax through `nft -f -`, read back through `nft -j list`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from nodes.agent.errors import AgentError
from nodes.agent.net.host import NetnsHost

TABLE = "gantry"
HOST_OWNER = "gantry:host"
VM_OWNER_PREFIX = "gantry:vm:"

# Base chains of our tables. Each is a separate hook with policy accept: a packet accepted
# here still meets every other table's chains at the same hook, so ours can add NAT and
# drops but never overrides another firewall's drop (e.g. a FORWARD policy drop set by
# Docker); `doctor` is where such a host gets diagnosed.
IP_CHAINS = {
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "output": "type nat hook output priority -100; policy accept;",
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    "forward": "type filter hook forward priority filter; policy accept;",
    "input": "type filter hook input priority filter; policy accept;",
    # Before conntrack and before NAT rewrites replies: sees what a VM really addressed.
    "guard": "type filter hook prerouting priority raw; policy accept;",
}
# Every frame a TAP sends passes bridge prerouting first, before the bridge learns its source
# MAC and before it is forwarded or handed to the host: the one place to drop a spoofed frame.
# Forward sees frames going from port to port; priority 100 runs it after br_netfilter's own
# forward hook (priority 0), where the IPv4 filter marks published-port traffic (net/rules.py).
BRIDGE_CHAINS = {
    "prerouting": "type filter hook prerouting priority -200; policy accept;",
    "forward": "type filter hook forward priority 100; policy accept;",
}


@dataclass(frozen=True)
class Rule:
    chain: str
    body: str  # nft rule text, without the comment

    def comment(self, owner: str) -> str:
        digest = hashlib.sha256(f"{self.chain} {self.body}".encode()).hexdigest()[:8]
        return f"{owner}:{digest}"


@dataclass(frozen=True)
class InstalledRule:
    chain: str
    handle: int
    comment: str

    @property
    def owner(self) -> str:
        return self.comment.rsplit(":", 1)[0]


def vm_owner(name: str) -> str:
    return f"{VM_OWNER_PREFIX}{name}"


class NftTable:
    def __init__(self, host: NetnsHost, *, family: str = "ip", chains: dict[str, str] = IP_CHAINS,
                 table: str = TABLE):
        self._host = host
        self.family = family
        self.table = table
        self.chains = chains

    async def listing(self) -> tuple[set[str], list[InstalledRule]] | None:
        """(chain names, our commented rules), or None when the table does not exist."""
        result = await self._host.run("nft", "-j", "list", "table", self.family, self.table, check=False)
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return None
            raise AgentError(f"nft list failed: {result.stderr.strip()}")
        chains: set[str] = set()
        rules: list[InstalledRule] = []
        for item in json.loads(result.stdout).get("nftables", []):
            if "chain" in item:
                chains.add(item["chain"]["name"])
            elif "rule" in item:
                rule = item["rule"]
                comment = rule.get("comment", "")
                if comment.startswith("gantry:"):
                    rules.append(InstalledRule(rule["chain"], rule["handle"], comment))
        return chains, rules

    async def sync(self, owner: str, desired: list[Rule]) -> bool:
        """Make `owner`'s rules exactly `desired`; True when anything had to change."""
        listing = await self.listing()
        if listing is None and not desired:
            return False  # removing from a table that never existed: nothing to create
        chains, installed = listing if listing is not None else (set(), [])
        lines: list[str] = []
        family, table = self.family, self.table
        if listing is None:
            lines.append(f"add table {family} {table}")
        for chain, spec in self.chains.items():
            if chain not in chains:
                lines.append(f"add chain {family} {table} {chain} {{ {spec} }}")
        # Per chain, the owner's rules must be exactly the desired ones in the desired order: a
        # filter chain is first-match (an accept re-added after its drop would be dead). A chain
        # that is off in any way is rewritten whole, in the same transaction, so no packet ever
        # meets a half-written chain.
        by_chain: dict[str, list[Rule]] = {}
        for rule in desired:
            by_chain.setdefault(rule.chain, []).append(rule)
        ours = [rule for rule in installed if rule.owner == owner]
        for chain in sorted({rule.chain for rule in ours} | set(by_chain)):
            have = [rule for rule in ours if rule.chain == chain]
            want = by_chain.get(chain, [])
            if [rule.comment for rule in have] == [rule.comment(owner) for rule in want]:
                continue
            lines += [f"delete rule {family} {table} {chain} handle {rule.handle}" for rule in have]
            lines += [f'add rule {family} {table} {chain} {rule.body} comment "{rule.comment(owner)}"' for rule in want]
        if not lines:
            return False
        # One `nft -f` is one kernel transaction: all of it applies or none does.
        await self._host.run("nft", "-f", "-", input="\n".join(lines) + "\n")
        return True

    async def owners(self) -> set[str]:
        listing = await self.listing()
        return set() if listing is None else {rule.owner for rule in listing[1]}
