"""The agent's own nftables table, kept in step with what the leases say.

Every rule we add carries a comment `<owner>:<hash>` where the owner is `gantry:host` or
`gantry:vm:<name>` and the hash is of the rule's text. Syncing an owner compares comments
only: rules already there stay (a second pass changes nothing), rules whose text changed or
that belong to a VM no longer wanted are deleted by handle, and nothing of anyone else's is
touched. Rules are written in nft's text syntax through `nft -f -`, read back through
`nft -j list`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from nodes.agent.errors import AgentError
from nodes.agent.net.host import NetnsHost

FAMILY = "ip"
TABLE = "gantry"
HOST_OWNER = "gantry:host"
VM_OWNER_PREFIX = "gantry:vm:"

# Base chains of our table. Each is a separate hook with policy accept: a packet accepted
# here still meets every other table's chains at the same hook, so ours can add NAT and
# drops but never overrides another firewall's drop (e.g. a FORWARD policy drop set by
# Docker); `doctor` is where such a host gets diagnosed.
CHAINS = {
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "output": "type nat hook output priority -100; policy accept;",
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    "forward": "type filter hook forward priority filter; policy accept;",
    # Before conntrack and before NAT rewrites replies: sees what a VM really addressed.
    "guard": "type filter hook prerouting priority raw; policy accept;",
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
    def __init__(self, host: NetnsHost):
        self._host = host

    async def listing(self) -> tuple[set[str], list[InstalledRule]] | None:
        """(chain names, our commented rules), or None when the table does not exist."""
        result = await self._host.run("nft", "-j", "list", "table", FAMILY, TABLE, check=False)
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
        if listing is None:
            lines.append(f"add table {FAMILY} {TABLE}")
        for chain, spec in CHAINS.items():
            if chain not in chains:
                lines.append(f"add chain {FAMILY} {TABLE} {chain} {{ {spec} }}")
        wanted = {rule.comment(owner): rule for rule in desired}
        present: set[str] = set()
        for rule in installed:
            if rule.owner != owner:
                continue
            if rule.comment in wanted and rule.comment not in present:
                present.add(rule.comment)
            else:  # stale text, or a duplicate left by a racing writer
                lines.append(f"delete rule {FAMILY} {TABLE} {rule.chain} handle {rule.handle}")
        for comment, rule in wanted.items():
            if comment not in present:
                lines.append(f'add rule {FAMILY} {TABLE} {rule.chain} {rule.body} comment "{comment}"')
        if not lines:
            return False
        # One `nft -f` is one kernel transaction: all of it applies or none does.
        await self._host.run("nft", "-f", "-", input="\n".join(lines) + "\n")
        return True

    async def owners(self) -> set[str]:
        listing = await self.listing()
        return set() if listing is None else {rule.owner for rule in listing[1]}
