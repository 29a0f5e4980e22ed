"""The pool: which backend `be_<slot>` serves which route, which servers each holds, and what a new
table changes there (docs/gateway.md, "Applying a table").

Bookkeeping only, no I/O: gateway/service.py sends the commands a `Change` lists to HAProxy and
records it here only once HAProxy took them all, so a Pool is always what the current worker holds.

- A route keeps its slot while it is in the table. A new route takes a free slot: one that no
  route holds and whose servers are all deleted (a removed route's slot drains first).
- A server is one backend of one route, named `<replica uuid>-<n>` (n counts up over the
  gateway's life), so a backend that leaves and comes back while its first server still drains
  gets a second server beside it. A server whose replica, address and port are in the new table
  stays as it is; one that is not drains: no new request, what is in flight continues (up to its
  route's stop grace), then the gateway deletes it.
- A table the pool cannot take without a reload: more routes than free slots (the pool grows, by
  doubling), or a route whose timeout exceeds the config's client timeout (`longest_s`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.haproxy_config import Layout, map_entries
from gateway.table import MAX_TIMEOUT_S, Backend, Table

MIN_POOL = 64
LONGEST_FLOOR_S = 600  # the deployments' default request timeout


def pool_size(routes: int, at_least: int = MIN_POOL) -> int:
    """A power of two (from 64) at least twice the routes: room for as many new routes again."""
    size = MIN_POOL
    while size < max(at_least, 2 * routes):
        size *= 2
    return size


def longest_for(table: Table) -> int:
    """The client timeout (and hard-stop-after) a config needs for this table: 600 s doubled until
    it covers every route's timeout, so raising timeouts costs few reloads."""
    largest = max((route.timeout_s for route in table.routes), default=0)
    longest = LONGEST_FLOOR_S
    while longest < largest:
        longest *= 2
    return min(longest, MAX_TIMEOUT_S)


@dataclass(eq=False)
class Server:
    name: str
    backend: Backend
    grace_s: int = 0  # how long its requests may go on once it drains
    draining_since: float | None = None  # time.monotonic() when it started to drain
    shut: bool = False  # its sessions were shut at the end of the grace
    in_maint: bool = False  # out of the balancing for good: next, deleted

    @property
    def key(self) -> tuple[str, str, int]:
        return self.backend.replica, self.backend.address, self.backend.port


@dataclass(eq=False)
class Slot:
    label: str | None = None  # the route it serves; None once the route left (its servers may still drain)
    servers: dict[str, Server] = field(default_factory=dict)

    @property
    def free(self) -> bool:
        return self.label is None and not self.servers

    def active(self) -> dict[tuple[str, str, int], Server]:
        return {server.key: server for server in self.servers.values() if server.draining_since is None}


@dataclass(frozen=True)
class Change:
    """What serving `table` takes in the worker that holds the pool, in the order it is sent:
    new servers first (a route's new backends exist before the maps point at it), then the maps
    that change, then the servers that leave (a route is never left without its backends)."""

    table: Table
    slots: dict[str, int]  # every route of the new table -> its slot
    add: tuple[tuple[int, Server], ...]
    maps: dict[str, dict[str, str]]  # only the maps whose contents change
    drain: tuple[tuple[int, Server], ...]

    @property
    def empty(self) -> bool:
        return not (self.add or self.maps or self.drain)


@dataclass(frozen=True)
class Reload:
    reason: str
    grow: bool  # the pool is too small: the new config doubles it


class Pool:
    def __init__(self, size: int, longest_s: int, table: Table, slots: list[Slot], maps: dict[str, dict[str, str]]):
        self.size = size
        self.longest_s = longest_s
        self.table = table
        self.slots = slots
        self.maps = maps
        self.directory: Path | None = None  # the generation whose map files the config names

    @classmethod
    def build(cls, table: Table, size: int, name: Callable[[Backend], str]) -> Pool:
        """The pool a fresh config starts with: routes in slots 0, 1, … by label."""
        routes = sorted(table.routes, key=lambda route: route.label)
        if len(routes) > size:
            raise ValueError(f"{len(routes)} routes do not fit a pool of {size}")
        slots = [Slot() for _ in range(size)]
        for index, route in enumerate(routes):
            slots[index].label = route.label
            for backend in sorted(route.backends, key=lambda b: (b.replica, b.address, b.port)):
                server = Server(name=name(backend), backend=backend)
                slots[index].servers[server.name] = server
        assigned = {route.label: index for index, route in enumerate(routes)}
        return cls(size, longest_for(table), table, slots, map_entries(table, assigned))

    def layout(self) -> Layout:
        servers = tuple((index, server.name, server.backend)
                        for index, slot in enumerate(self.slots) for server in slot.servers.values())
        return Layout(pool_size=self.size, longest_s=self.longest_s, maps=self.maps, servers=servers)

    def slot_of(self) -> dict[str, int]:
        return {slot.label: index for index, slot in enumerate(self.slots) if slot.label is not None}

    def change(self, table: Table, name: Callable[[Backend], str]) -> Change | Reload:
        if longest_for(table) > self.longest_s:
            return Reload(f"a route's timeout needs a client timeout over {self.longest_s}s", grow=False)
        held = self.slot_of()
        free = [index for index, slot in enumerate(self.slots) if slot.free]
        new = sorted(route.label for route in table.routes if route.label not in held)
        if len(new) > len(free):
            return Reload(f"{len(new)} new routes, {len(free)} free backends of {self.size}", grow=True)
        slots = {label: held[label] for label in (route.label for route in table.routes) if label in held}
        slots |= dict(zip(new, free))
        routes = {route.label: route for route in table.routes}
        leaving = {route.label: route for route in self.table.routes if route.label not in routes}
        add, drain = [], []
        for label, index in sorted(slots.items(), key=lambda item: item[1]):
            route = routes[label]
            active = self.slots[index].active()
            wanted = {(b.replica, b.address, b.port): b for b in route.backends}
            add += [(index, Server(name=name(backend), backend=backend))
                    for key, backend in sorted(wanted.items()) if key not in active]
            drain += [(index, server) for key, server in sorted(active.items()) if key not in wanted]
        for label, route in sorted(leaving.items()):
            drain += [(held[label], server) for _, server in sorted(self.slots[held[label]].active().items())]
        maps = {file: entries for file, entries in map_entries(table, slots).items() if entries != self.maps.get(file)}
        return Change(table=table, slots=slots, add=tuple(add), maps=maps, drain=tuple(drain))

    def commit(self, change: Change, now: float) -> None:
        """Record `change` as done (every command of it answered as it should)."""
        # A leaving server's grace: its route's in the new table, or in the old one if it left.
        graces = {route.label: route.stop_grace_seconds for route in self.table.routes}
        graces |= {route.label: route.stop_grace_seconds for route in change.table.routes}
        for index, server in change.drain:
            server.draining_since = now
            server.grace_s = graces.get(self.slots[index].label or "", 0)
        for index, slot in enumerate(self.slots):
            if slot.label is not None and change.slots.get(slot.label) != index:
                slot.label = None
        for label, index in change.slots.items():
            self.slots[index].label = label
        for index, server in change.add:
            self.slots[index].servers[server.name] = server
        self.maps = {**self.maps, **change.maps}
        self.table = change.table

    def leaving(self) -> list[tuple[int, Server]]:
        return [(index, server) for index, slot in enumerate(self.slots)
                for server in slot.servers.values() if server.draining_since is not None]

    def forget(self, index: int, name: str) -> None:
        """The server is deleted from HAProxy (a slot with no route and no server is free again)."""
        self.slots[index].servers.pop(name, None)
