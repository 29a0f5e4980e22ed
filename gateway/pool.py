"""The pools: which backend serves which route, which servers each holds, and what a new table
changes there (docs/gateway.md, "Applying a table").

Bookkeeping only, no I/O: gateway/service.py sends the commands a `Change` lists to HAProxy and
records it here only once HAProxy took them all, so a Pool is always what the current worker holds.

A config holds two pools of one shape: `be_<slot>` for HTTP routes (by label) and, with a TCP
frontend, `tcp_<slot>` for TCP routes (by name). In each:

- A route keeps its slot while it is in the table. A new route takes a free slot: one that no
  route holds and whose servers are all deleted (a removed route's slot drains first).
- A server is one backend of one route, named `<replica uuid>-<n>` (n counts up over the
  gateway's life), so a backend that leaves and comes back while its first server still drains
  gets a second server beside it. A server whose replica, address and port are in the new table
  stays as it is; one that is not drains: no new request or connection, what is in flight
  continues (up to its route's stop grace), then the gateway deletes it.
- A table the pools cannot take without a reload: more routes of a kind than its free slots (that
  pool grows, by doubling), or a route whose timeout exceeds the config's client timeout (`longest_s`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.haproxy_config import HTTP, TCP, Kind, Layout, map_entries, tcp_map_entries
from gateway.table import MAX_TIMEOUT_S, Backend, Route, Table, TcpRoute

MIN_POOL = 64
LONGEST_FLOOR_S = 600  # the deployments' default request timeout


def pool_size(routes: int, at_least: int = MIN_POOL) -> int:
    """A power of two (from 64) at least twice the routes: room for as many new routes again."""
    size = MIN_POOL
    while size < max(at_least, 2 * routes):
        size *= 2
    return size


def longest_for(table: Table, *, tcp: bool = True) -> int:
    """The client timeout (and hard-stop-after) a config needs for this table: 600 s doubled until
    it covers every route's timeout (the TCP routes' too when it serves them), so raising timeouts
    costs few reloads."""
    timeouts = [route.timeout_s for route in table.routes] + [route.timeout_s for route in table.tcp_routes if tcp]
    longest = LONGEST_FLOOR_S
    while longest < max(timeouts, default=0):
        longest *= 2
    return min(longest, MAX_TIMEOUT_S)


def routes_of(kind: Kind, table: Table) -> dict[str, Route | TcpRoute]:
    """The table's routes a pool of `kind` serves, by the name its slots know them by."""
    if kind is TCP:
        return {route.name: route for route in table.tcp_routes}
    return {route.label: route for route in table.routes}


@dataclass(eq=False)
class Server:
    name: str
    backend: Backend
    kind: Kind
    slot: int
    grace_s: int = 0  # how long its requests may go on once it drains
    draining_since: float | None = None  # time.monotonic() when it started to drain
    shut: bool = False  # its sessions were shut at the end of the grace
    in_maint: bool = False  # out of the balancing for good: next, deleted

    @property
    def key(self) -> tuple[str, str, int]:
        return self.backend.replica, self.backend.address, self.backend.port

    @property
    def ref(self) -> str:
        """`<pool backend>/<server>`, as the runtime API names it."""
        return f"{self.kind.backend(self.slot)}/{self.name}"


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
class Plan:
    """One pool's part of a Change."""

    slots: dict[str, int]  # every route of the kind in the new table -> its slot
    add: tuple[Server, ...]
    drain: tuple[Server, ...]


class Slots:
    """One pool: backends `<prefix>0 … <prefix>{size-1}`, the routes of one kind in them."""

    def __init__(self, kind: Kind, size: int, routes: dict[str, Route | TcpRoute], slots: list[Slot]):
        self.kind = kind
        self.size = size
        self.routes = routes
        self.slots = slots

    @classmethod
    def build(cls, kind: Kind, table: Table, size: int, name: Callable[[Backend], str]) -> Slots:
        """Routes in slots 0, 1, … by name."""
        routes = routes_of(kind, table)
        if len(routes) > size:
            raise ValueError(f"{len(routes)} {kind.name} routes do not fit a pool of {size}")
        slots = [Slot() for _ in range(size)]
        for index, key in enumerate(sorted(routes)):
            slots[index].label = key
            for backend in sorted(routes[key].backends, key=lambda b: (b.replica, b.address, b.port)):
                server = Server(name=name(backend), backend=backend, kind=kind, slot=index)
                slots[index].servers[server.name] = server
        return cls(kind, size, routes, slots)

    def slot_of(self) -> dict[str, int]:
        return {slot.label: index for index, slot in enumerate(self.slots) if slot.label is not None}

    def free(self) -> list[int]:
        return [index for index, slot in enumerate(self.slots) if slot.free]

    def plan(self, table: Table, name: Callable[[Backend], str]) -> Plan | None:
        """What serving `table` changes in this pool; None when its new routes outnumber its free slots."""
        routes = routes_of(self.kind, table)
        held = self.slot_of()
        free = self.free()
        new = sorted(key for key in routes if key not in held)
        if len(new) > len(free):
            return None
        slots = {key: held[key] for key in routes if key in held} | dict(zip(new, free))
        add, drain = [], []
        for key, index in sorted(slots.items(), key=lambda item: item[1]):
            active = self.slots[index].active()
            wanted = {(b.replica, b.address, b.port): b for b in routes[key].backends}
            add += [Server(name=name(backend), backend=backend, kind=self.kind, slot=index)
                    for key_, backend in sorted(wanted.items()) if key_ not in active]
            drain += [server for key_, server in sorted(active.items()) if key_ not in wanted]
        for key in sorted(set(held) - set(routes)):
            drain += [server for _, server in sorted(self.slots[held[key]].active().items())]
        return Plan(slots=slots, add=tuple(add), drain=tuple(drain))

    def commit(self, plan: Plan, table: Table, now: float) -> None:
        routes = routes_of(self.kind, table)
        # A leaving server's grace: its route's in the new table, or in the old one if it left.
        graces = {key: route.stop_grace_seconds for key, route in (self.routes | routes).items()}
        for server in plan.drain:
            server.draining_since = now
            server.grace_s = graces.get(self.slots[server.slot].label or "", 0)
        for index, slot in enumerate(self.slots):
            if slot.label is not None and plan.slots.get(slot.label) != index:
                slot.label = None
        for key, index in plan.slots.items():
            self.slots[index].label = key
        for server in plan.add:
            self.slots[server.slot].servers[server.name] = server
        self.routes = routes

    def servers(self) -> list[Server]:
        return [server for slot in self.slots for server in slot.servers.values()]


@dataclass(frozen=True)
class Change:
    """What serving `table` takes in the worker that holds the pools, in the order it is sent:
    new servers first (a route's new backends exist before the maps point at it), then the maps
    that change, then the servers that leave (a route is never left without its backends)."""

    table: Table
    plans: dict[str, Plan]  # by kind name: "http", and "tcp" with a TCP frontend
    maps: dict[str, dict[str, str]]  # only the maps whose contents change

    @property
    def slots(self) -> dict[str, int]:
        return self.plans[HTTP.name].slots

    @property
    def add(self) -> tuple[Server, ...]:
        return tuple(server for plan in self.plans.values() for server in plan.add)

    @property
    def drain(self) -> tuple[Server, ...]:
        return tuple(server for plan in self.plans.values() for server in plan.drain)

    @property
    def empty(self) -> bool:
        return not (self.add or self.maps or self.drain)


@dataclass(frozen=True)
class Reload:
    reason: str
    grow: tuple[str, ...] = ()  # the kinds whose pool is too small: the new config doubles them


class Pool:
    """What one config holds: the HTTP pool, the TCP pool when the gateway has a TCP frontend, the
    client timeout, the maps' entries and the table they serve."""

    def __init__(self, http: Slots, tcp: Slots | None, longest_s: int, table: Table, maps: dict[str, dict[str, str]]):
        self.http = http
        self.tcp = tcp
        self.longest_s = longest_s
        self.table = table
        self.maps = maps
        self.directory: Path | None = None  # the generation whose map files the config names

    @classmethod
    def build(cls, table: Table, size: int, name: Callable[[Backend], str], tcp_size: int | None = None) -> Pool:
        """The pools a fresh config starts with (`tcp_size` None: no TCP frontend, no TCP pool)."""
        http = Slots.build(HTTP, table, size, name)
        tcp = Slots.build(TCP, table, tcp_size, name) if tcp_size is not None else None
        pool = cls(http, tcp, longest_for(table, tcp=tcp is not None), table, {})
        pool.maps = pool._maps(table, {HTTP.name: http.slot_of(), **({TCP.name: tcp.slot_of()} if tcp else {})})
        return pool

    @property
    def size(self) -> int:
        return self.http.size

    @property
    def pools(self) -> tuple[Slots, ...]:
        return (self.http, self.tcp) if self.tcp is not None else (self.http,)

    def _maps(self, table: Table, slots: dict[str, dict[str, int]]) -> dict[str, dict[str, str]]:
        maps = map_entries(table, slots[HTTP.name])
        if self.tcp is not None:
            maps |= tcp_map_entries(table, slots[TCP.name])
        return maps

    def layout(self) -> Layout:
        servers = tuple((server.kind.backend(server.slot), server.name, server.backend)
                        for pool in self.pools for server in pool.servers())
        return Layout(pool_size=self.http.size, longest_s=self.longest_s, maps=self.maps, servers=servers,
                      tcp_pool_size=self.tcp.size if self.tcp is not None else 0)

    def slot_of(self) -> dict[str, int]:
        """The HTTP routes' slots."""
        return self.http.slot_of()

    def change(self, table: Table, name: Callable[[Backend], str]) -> Change | Reload:
        if longest_for(table, tcp=self.tcp is not None) > self.longest_s:
            return Reload(f"a route's timeout needs a client timeout over {self.longest_s}s")
        plans: dict[str, Plan] = {}
        short = []
        for pool in self.pools:
            plan = pool.plan(table, name)
            if plan is None:
                new = sum(1 for key in routes_of(pool.kind, table) if key not in pool.slot_of())
                what = "" if pool.kind is HTTP else "TCP "
                short.append((pool.kind.name, f"{new} new {what}routes, {len(pool.free())} free {what}backends "
                                              f"of {pool.size}"))
            else:
                plans[pool.kind.name] = plan
        if short:
            return Reload("; ".join(reason for _, reason in short), grow=tuple(kind for kind, _ in short))
        maps = self._maps(table, {kind: plan.slots for kind, plan in plans.items()})
        changed = {file: entries for file, entries in maps.items() if entries != self.maps.get(file)}
        return Change(table=table, plans=plans, maps=changed)

    def commit(self, change: Change, now: float) -> None:
        """Record `change` as done (every command of it answered as it should)."""
        for pool in self.pools:
            pool.commit(change.plans[pool.kind.name], change.table, now)
        self.maps = {**self.maps, **change.maps}
        self.table = change.table

    def leaving(self) -> list[Server]:
        return [server for pool in self.pools for server in pool.servers() if server.draining_since is not None]

    def forget(self, server: Server) -> None:
        """The server is deleted from HAProxy (a slot with no route and no server is free again)."""
        pool = self.http if server.kind is HTTP else self.tcp
        assert pool is not None
        pool.slots[server.slot].servers.pop(server.name, None)
