"""The pool's bookkeeping: which slot a route holds, which servers come and go, when a push needs a reload."""

from __future__ import annotations

import itertools

import pytest

from gateway.haproxy_config import KEYS_MAP, ROUTES_MAP, TCP_MAP
from gateway.pool import Change, Pool, Reload, longest_for, pool_size
from gateway.table import EMPTY, parse_push
from tests.gateway.tables import backend, push_body, route, table, tcp_route

R1, R2, R3 = (f"00000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3))
EMPTY_TABLE = table()
A, B, C = backend("198.51.100.1", 8001, R1), backend("198.51.100.2", 8002, R2), backend("198.51.100.3", 8003, R3)


def parsed(t: dict):
    return parse_push(push_body(t)).table


def names():
    serial = itertools.count(1)
    return lambda b: f"{b.replica}-{next(serial)}"


def served(pool: Pool, t: dict, name, now: float = 0.0) -> Change:
    """`t` applied as a gateway applies it once HAProxy took every command."""
    change = pool.change(parsed(t), name)
    assert isinstance(change, Change), change
    pool.commit(change, now)
    return change


def servers(pool: Pool, label: str) -> dict[str, tuple[str, bool]]:
    """The servers of the route's slot: name -> (replica, draining)."""
    slot = pool.http.slots[pool.slot_of()[label]]
    return {name: (s.backend.replica, s.draining_since is not None) for name, s in slot.servers.items()}


@pytest.mark.parametrize("routes,at_least,size", [(0, 64, 64), (32, 64, 64), (33, 64, 128), (100, 64, 256),
                                                  (1, 128, 128), (600, 64, 2048)])
def test_the_pool_is_a_power_of_two_from_64_with_room_for_as_many_routes_again(routes, at_least, size):
    assert pool_size(routes, at_least) == size


@pytest.mark.parametrize("timeouts,longest", [((), 600), ((30, 600), 600), ((601,), 1200), ((3600,), 4800),
                                              ((86400,), 86400)])
def test_the_client_timeout_doubles_from_600s_until_it_covers_every_route(timeouts, longest):
    t = table(*(route(f"r{i}", A, timeout_s=timeout) for i, timeout in enumerate(timeouts)))
    assert longest_for(parsed(t)) == longest


def test_a_fresh_pool_puts_routes_in_slots_by_label_with_their_servers_and_maps():
    pool = Pool.build(parsed(table(route("b", B), route("a", A, C, access="private", keys=("gk_1",)))), 64, names())
    assert pool.slot_of() == {"a": 0, "b": 1}
    assert servers(pool, "a") == {f"{R1}-1": (R1, False), f"{R3}-2": (R3, False)}
    assert pool.maps[ROUTES_MAP]["a.gantry.localhost"] == "a|0|private|600000|1073741824|-"
    assert list(pool.maps[KEYS_MAP].values()) == ["a"]
    assert {server for _, server, _ in pool.layout().servers} == {f"{R1}-1", f"{R3}-2", f"{R2}-3"}


def test_the_same_table_changes_nothing():
    t = table(route("a", A, B, access="private", keys=("gk_1",)), route("off", unavailable="stopped"))
    pool = Pool.build(parsed(t), 64, names())
    assert pool.change(parsed(t), names()).empty


def test_a_backend_added_and_one_removed_are_a_new_server_and_a_draining_one_and_no_map_changes():
    name = names()
    pool = Pool.build(parsed(table(route("a", A, B, stop_grace_seconds=45))), 64, name)
    change = served(pool, table(route("a", B, C, stop_grace_seconds=45)), name, now=100.0)
    assert [(s.slot, s.backend.replica) for s in change.add] == [(0, R3)]
    assert [(s.slot, s.backend.replica) for s in change.drain] == [(0, R1)]
    assert change.maps == {}
    assert servers(pool, "a") == {f"{R1}-1": (R1, True), f"{R2}-2": (R2, False), f"{R3}-3": (R3, False)}
    [leaving] = pool.leaving()
    assert (leaving.draining_since, leaving.grace_s) == (100.0, 45)


def test_a_backend_that_moves_to_another_port_is_a_new_server():
    name = names()
    pool = Pool.build(parsed(table(route("a", A))), 64, name)
    change = served(pool, table(route("a", backend("198.51.100.1", 9001, R1))), name)
    assert [s.backend.port for s in change.add] == [9001] and [s.backend.port for s in change.drain] == [8001]


def test_a_backend_back_while_its_server_still_drains_gets_a_second_server():
    name = names()
    pool = Pool.build(parsed(table(route("a", A, B))), 64, name)
    served(pool, table(route("a", B)), name)
    served(pool, table(route("a", A, B)), name)
    assert servers(pool, "a") == {f"{R1}-1": (R1, True), f"{R2}-2": (R2, False), f"{R1}-3": (R1, False)}


def test_a_key_revoked_changes_only_the_keys_map():
    name = names()
    pool = Pool.build(parsed(table(route("a", A, access="private", keys=("gk_1", "gk_2")))), 64, name)
    change = served(pool, table(route("a", A, access="private", keys=("gk_1",))), name)
    assert set(change.maps) == {KEYS_MAP} and len(change.maps[KEYS_MAP]) == 1
    assert not change.add and not change.drain


def test_a_removed_routes_slot_is_taken_again_only_once_its_servers_are_deleted():
    name = names()
    pool = Pool.build(parsed(table(route("a", A, stop_grace_seconds=7), route("b", B))), 64, name)
    change = served(pool, table(route("b", B)), name)
    assert [(s.slot, s.grace_s) for s in change.drain] == [(0, 7)]  # the grace of the route that left
    assert "a.gantry.localhost" not in pool.maps[ROUTES_MAP]
    served(pool, table(route("b", B), route("c", C)), name)
    assert pool.slot_of() == {"b": 1, "c": 2}  # slot 0 still drains
    [server] = pool.leaving()
    pool.forget(server)
    served(pool, table(route("b", B), route("c", C), route("d", A)), name)
    assert pool.slot_of() == {"d": 0, "b": 1, "c": 2}


def test_a_route_that_leaves_and_comes_back_takes_a_free_slot_while_its_old_one_drains():
    name = names()
    pool = Pool.build(parsed(table(route("a", A))), 64, name)
    served(pool, EMPTY_TABLE, name)
    served(pool, table(route("a", A)), name)
    assert pool.slot_of() == {"a": 1}
    assert [server.slot for server in pool.leaving()] == [0]


def test_more_new_routes_than_free_slots_need_a_bigger_pool():
    name = names()
    pool = Pool.build(EMPTY, 64, name)
    assert isinstance(pool.change(parsed(table(*(route(f"r{i}", A) for i in range(64)))), name), Change)
    reload = pool.change(parsed(table(*(route(f"r{i}", A) for i in range(65)))), name)
    assert isinstance(reload, Reload) and reload.grow == ("http",)


def test_a_timeout_over_the_client_timeout_needs_a_reload_and_a_lower_one_does_not():
    name = names()
    pool = Pool.build(parsed(table(route("a", A, timeout_s=900))), 64, name)
    assert pool.longest_s == 1200
    assert isinstance(pool.change(parsed(table(route("a", A, timeout_s=1200))), name), Change)
    reload = pool.change(parsed(table(route("a", A, timeout_s=1201))), name)
    assert isinstance(reload, Reload) and not reload.grow


# -- the TCP pool -------------------------------------------------------------------------------


def tcp_servers(pool: Pool, name: str) -> dict[str, tuple[str, bool]]:
    slot = pool.tcp.slots[pool.tcp.slot_of()[name]]
    return {n: (s.backend.replica, s.draining_since is not None) for n, s in slot.servers.items()}


def test_tcp_routes_get_slots_of_their_own_by_name_and_the_map_by_port():
    t = table(route("web", A), tcp=[tcp_route("z-ssh", 20009, B), tcp_route("a-pg", 20001, C), tcp_route("off", 20002)])
    pool = Pool.build(parsed(t), 64, names(), tcp_size=64)
    assert pool.slot_of() == {"web": 0}
    assert pool.tcp.slot_of() == {"a-pg": 0, "off": 1, "z-ssh": 2}
    assert pool.maps[TCP_MAP] == {"20001": "a-pg|0", "20009": "z-ssh|2"}
    assert {(proxy, server.split("-")[0]) for proxy, server, _ in pool.layout().servers} == \
        {("be_0", R1[:8]), ("tcp_0", R3[:8]), ("tcp_2", R2[:8])}
    assert pool.layout().tcp_pool_size == 64


def test_a_tcp_backend_swapped_adds_and_drains_in_the_tcp_pool_only():
    name = names()
    pool = Pool.build(parsed(table(route("web", A), tcp=[tcp_route("s", 20001, A, B, stop_grace_seconds=9)])), 64, name,
                      tcp_size=64)
    change = served(pool, table(route("web", A), tcp=[tcp_route("s", 20001, B, C, stop_grace_seconds=9)]), name, 5.0)
    assert [(s.ref.split("/")[0], s.backend.replica) for s in change.add] == [("tcp_0", R3)]
    assert [(s.ref.split("/")[0], s.backend.replica) for s in change.drain] == [("tcp_0", R1)]
    assert change.maps == {}
    [leaving] = pool.leaving()
    assert (leaving.ref, leaving.grace_s, leaving.draining_since) == (f"tcp_0/{R1}-2", 9, 5.0)
    assert tcp_servers(pool, "s") == {f"{R1}-2": (R1, True), f"{R2}-3": (R2, False), f"{R3}-4": (R3, False)}
    pool.forget(leaving)
    assert tcp_servers(pool, "s") == {f"{R2}-3": (R2, False), f"{R3}-4": (R3, False)}


def test_a_tcp_route_losing_its_last_backend_leaves_the_map_and_its_servers_drain():
    name = names()
    pool = Pool.build(parsed(table(tcp=[tcp_route("s", 20001, A)])), 64, name, tcp_size=64)
    change = served(pool, table(tcp=[tcp_route("s", 20001)]), name)
    assert change.maps == {TCP_MAP: {}} and [s.backend.replica for s in change.drain] == [R1]
    change = served(pool, table(tcp=[tcp_route("s", 20002, B)]), name)  # back, on another port
    assert change.maps == {TCP_MAP: {"20002": "s|0"}} and [s.backend.replica for s in change.add] == [R2]


def test_more_new_tcp_routes_than_free_tcp_slots_grow_the_tcp_pool():
    name = names()
    pool = Pool.build(EMPTY, 64, name, tcp_size=64)
    many = [tcp_route(f"t{i}", 20000 + i, A) for i in range(65)]
    assert isinstance(pool.change(parsed(table(tcp=many[:64])), name), Change)
    reload = pool.change(parsed(table(route("web", A), tcp=many)), name)
    assert isinstance(reload, Reload) and reload.grow == ("tcp",)
    assert "65 new TCP routes, 64 free TCP backends of 64" in reload.reason


def test_without_a_tcp_pool_tcp_routes_change_nothing_and_their_timeouts_do_not_count():
    name = names()
    pool = Pool.build(parsed(table(route("web", A))), 64, name)
    assert pool.tcp is None and TCP_MAP not in pool.maps
    change = pool.change(parsed(table(route("web", A), tcp=[tcp_route("s", 20001, B, timeout_s=5000)])), name)
    assert isinstance(change, Change) and change.empty
    with_tcp = Pool.build(parsed(table(route("web", A))), 64, name, tcp_size=64)
    reload = with_tcp.change(parsed(table(route("web", A), tcp=[tcp_route("s", 20001, B, timeout_s=5000)])), name)
    assert isinstance(reload, Reload) and "over 600s" in reload.reason
