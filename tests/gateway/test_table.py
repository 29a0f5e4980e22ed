"""The pushed route table is parsed strictly: anything off the interface is refused, naming its field."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.binds import TcpListen, parse_address, parse_bind
from gateway.haproxy_config import Options
from gateway.service import TableStore
from gateway.table import EMPTY, Backend, PortRange, TableError, TcpRoute, canonical_digest, parse_push
from tests.gateway.tables import backend, key_hash, push_body, route, table, tcp_route
from tests.gateway.template import commands_for, off_commands, off_template, rendered_for

REPLICA = "6f1c5a3e-0b7a-4d43-9a51-0d6f6d7cf001"
REPLICA_2 = "6f1c5a3e-0b7a-4d43-9a51-0d6f6d7cf002"
OPTIONS = Options(https_bind=parse_bind("198.51.100.34:443"), http_bind=parse_bind("198.51.100.34:80"),
                  cert=Path("/srv/gw/gateway.pem"), public_https_port=443, log_socket=Path("/srv/gw/log.sock"),
                  admin_socket=Path("/srv/gw/admin.sock"),
                  tcp=TcpListen(parse_address("198.51.100.34"), PortRange(20000, 20999)))
PORTS = PortRange(20000, 20999)


def sample() -> dict:
    return table(
        route("hi-k3x9qz", backend("198.51.100.66", 30001, REPLICA), backend("2001:db8::1", 30002, REPLICA_2),
              access="private", keys=("gk_one", "gk_two")),
        route("off", unavailable="no capacity"),
        tcp=[tcp_route("hi-k3x9qz-ssh", 20001, backend("198.51.100.66", 30003, REPLICA),
                       backend("2001:db8::1", 30004, REPLICA_2), timeout_s=30, stop_grace_seconds=5),
             tcp_route("off-db", 20000)],
    )


def refused(table_: dict, ports: PortRange | None = PORTS) -> TableError:
    with pytest.raises(TableError) as caught:
        parse_push(push_body(table_), ports)
    return caught.value


def test_a_valid_push_parses_into_the_tables_values():
    push = parse_push(push_body(sample()))
    hi, off = push.table.routes
    assert push.digest == canonical_digest(sample())
    assert push.table.domain == "gantry.localhost"
    assert (hi.label, hi.host, hi.access) == ("hi-k3x9qz", "hi-k3x9qz.gantry.localhost", "private")
    assert set(hi.key_hashes) == {key_hash("gk_one"), key_hash("gk_two")}
    assert Backend(replica=REPLICA, address="198.51.100.66", port=30001) in hi.backends
    assert (off.backends, off.unavailable) == ((), "no capacity")
    assert push.table.tcp_routes == (
        TcpRoute(name="off-db", listen_port=20000, timeout_s=600, stop_grace_seconds=30, backends=()),
        TcpRoute(name="hi-k3x9qz-ssh", listen_port=20001, timeout_s=30, stop_grace_seconds=5,
                 backends=(Backend(REPLICA, "198.51.100.66", 30003), Backend(REPLICA_2, "2001:db8::1", 30004))))


def test_a_table_without_tcp_routes_or_with_an_empty_list_has_none():
    plain = table(route("a", backend("198.51.100.66", 1)))
    assert "tcp_routes" not in plain
    assert parse_push(push_body(plain), PORTS).table.tcp_routes == ()
    assert parse_push(push_body({**plain, "tcp_routes": []}), PORTS).table.tcp_routes == ()


def test_without_a_tcp_frontend_any_listen_port_is_taken_with_one_only_its_own():
    """A gateway with no --tcp-ports takes every TCP route (it serves none); one with a range
    refuses a port outside it, naming the route's field, rather than leave it unserved unsaid."""
    t = table(tcp=[tcp_route("a-ssh", 1, backend("198.51.100.66", 1)), tcp_route("b-ssh", 65535)])
    assert [r.listen_port for r in parse_push(push_body(t)).table.tcp_routes] == [1, 65535]
    assert refused(t).field == "table.tcp_routes.0.listen_port"
    assert "20000-20999 (--tcp-ports)" in refused(t).message
    assert refused(t, PortRange(1, 100)).field == "table.tcp_routes.1.listen_port"
    assert len(parse_push(push_body(t), PortRange(1, 65535)).table.tcp_routes) == 2


def test_the_digest_must_be_the_tables_own():
    other = canonical_digest(table())
    with pytest.raises(TableError) as caught:
        parse_push(push_body(sample(), digest=other))
    assert caught.value.field == "digest"


def test_the_digest_is_the_planes_canonical_json():
    """Same as cloud/deployments/routes.py RouteTable.digest(): sorted keys, no spaces."""
    t = sample()
    canonical = json.dumps(t, sort_keys=True, separators=(",", ":")).encode()
    assert canonical_digest(t) == hashlib.sha256(canonical).hexdigest()


def _set(path: str, value):
    def change(t: dict) -> dict:
        t = copy.deepcopy(t)
        *parents, last = path.split(".")
        node = t
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return t
    return change


def _drop(path: str):
    def change(t: dict) -> dict:
        t = copy.deepcopy(t)
        *parents, last = path.split(".")
        node = t
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]
        return t
    return change


BAD = [
    ("domain", _set("domain", "Gantry.localhost"), "table.domain"),
    ("domain with a newline", _set("domain", "gantry.localhost\n"), "table.domain"),
    ("domain too long", _set("domain", ".".join(["a" * 60] * 4)), "table.domain"),
    ("label with a space", _set("routes.0.label", "hi k3x9qz"), "table.routes.0.label"),
    ("label ending in a dash", _set("routes.0.label", "hi-"), "table.routes.0.label"),
    ("label of 64", _set("routes.0.label", "a" * 64), "table.routes.0.label"),
    ("label with a newline", _set("routes.0.label", "hi-k3x9qz\n"), "table.routes.0.label"),
    ("host of another domain", _set("routes.0.host", "hi-k3x9qz.example.com"), "table.routes.0.host"),
    ("host with a port", _set("routes.0.host", "hi-k3x9qz.gantry.localhost:443"), "table.routes.0.host"),
    ("access", _set("routes.0.access", "open"), "table.routes.0.access"),
    ("key hash uppercase", _set("routes.0.key_hashes.0", key_hash("x").upper()), "table.routes.0.key_hashes.0"),
    ("key hash short", _set("routes.0.key_hashes.0", "ab"), "table.routes.0.key_hashes.0"),
    ("key hash twice", _set("routes.0.key_hashes.1", None), "table.routes.0.key_hashes.1"),
    ("unavailable with backends", _set("routes.0.unavailable", "starting"), "table.routes.0.unavailable"),
    ("unavailable free text", _set("routes.1.unavailable", "down' #"), "table.routes.1.unavailable"),
    ("unavailable empty without backends", _set("routes.1.unavailable", ""), "table.routes.1.unavailable"),
    ("timeout 0", _set("routes.0.timeout_s", 0), "table.routes.0.timeout_s"),
    ("timeout a day and one", _set("routes.0.timeout_s", 86401), "table.routes.0.timeout_s"),
    ("timeout true", _set("routes.0.timeout_s", True), "table.routes.0.timeout_s"),
    ("timeout float", _set("routes.0.timeout_s", 600.0), "table.routes.0.timeout_s"),
    ("timeout text", _set("routes.0.timeout_s", "600"), "table.routes.0.timeout_s"),
    ("body limit past 1 TiB", _set("routes.0.max_body_bytes", 2**40 + 1), "table.routes.0.max_body_bytes"),
    ("grace negative", _set("routes.0.stop_grace_seconds", -1), "table.routes.0.stop_grace_seconds"),
    ("replica not a uuid", _set("routes.0.backends.0.replica", "r1"), "table.routes.0.backends.0.replica"),
    ("replica in braces", _set("routes.0.backends.0.replica", "{" + REPLICA + "}"), "table.routes.0.backends.0.replica"),
    ("address a name", _set("routes.0.backends.0.address", "node1.example"), "table.routes.0.backends.0.address"),
    ("address with a scope", _set("routes.0.backends.0.address", "fe80::1%eth0 #"), "table.routes.0.backends.0.address"),
    ("address unspecified", _set("routes.0.backends.0.address", "0.0.0.0"), "table.routes.0.backends.0.address"),
    ("address multicast", _set("routes.0.backends.0.address", "ff02::1"), "table.routes.0.backends.0.address"),
    ("address with a port", _set("routes.0.backends.0.address", "198.51.100.66:1"), "table.routes.0.backends.0.address"),
    ("port 0", _set("routes.0.backends.0.port", 0), "table.routes.0.backends.0.port"),
    ("port 65536", _set("routes.0.backends.0.port", 65536), "table.routes.0.backends.0.port"),
    ("unknown field", _set("routes.0.weight", 3), "table.routes.0.weight"),
    ("missing field", _drop("routes.0.timeout_s"), "table.routes.0.timeout_s"),
    ("routes not a list", _set("routes", {}), "table.routes"),
    ("route not an object", _set("routes.1", "off"), "table.routes.1"),
    ("tcp routes not a list", _set("tcp_routes", {}), "table.tcp_routes"),
    ("tcp routes null", _set("tcp_routes", None), "table.tcp_routes"),
    ("tcp route not an object", _set("tcp_routes.0", 20000), "table.tcp_routes.0"),
    ("tcp name uppercase", _set("tcp_routes.1.name", "Hi-ssh"), "table.tcp_routes.1.name"),
    ("tcp name with a pipe", _set("tcp_routes.1.name", "hi|0"), "table.tcp_routes.1.name"),
    ("tcp name with a newline", _set("tcp_routes.1.name", "hi-ssh\n"), "table.tcp_routes.1.name"),
    ("tcp name of 64", _set("tcp_routes.1.name", "a" * 64), "table.tcp_routes.1.name"),
    ("tcp name empty", _set("tcp_routes.1.name", ""), "table.tcp_routes.1.name"),
    ("tcp name twice", _set("tcp_routes.1.name", "off-db"), "table.tcp_routes.1.name"),
    ("listen port twice", _set("tcp_routes.1.listen_port", 20000), "table.tcp_routes.1.listen_port"),
    ("listen port below the range", _set("tcp_routes.0.listen_port", 19999), "table.tcp_routes.0.listen_port"),
    ("listen port above the range", _set("tcp_routes.1.listen_port", 21000), "table.tcp_routes.1.listen_port"),
    ("listen port 0", _set("tcp_routes.0.listen_port", 0), "table.tcp_routes.0.listen_port"),
    ("listen port text", _set("tcp_routes.0.listen_port", "20000"), "table.tcp_routes.0.listen_port"),
    ("listen port true", _set("tcp_routes.0.listen_port", True), "table.tcp_routes.0.listen_port"),
    ("listen port float", _set("tcp_routes.0.listen_port", 20000.0), "table.tcp_routes.0.listen_port"),
    ("tcp timeout 0", _set("tcp_routes.1.timeout_s", 0), "table.tcp_routes.1.timeout_s"),
    ("tcp timeout a day and one", _set("tcp_routes.1.timeout_s", 86401), "table.tcp_routes.1.timeout_s"),
    ("tcp grace negative", _set("tcp_routes.1.stop_grace_seconds", -1), "table.tcp_routes.1.stop_grace_seconds"),
    ("tcp grace past a day", _set("tcp_routes.1.stop_grace_seconds", 86401), "table.tcp_routes.1.stop_grace_seconds"),
    ("tcp backends not a list", _set("tcp_routes.1.backends", None), "table.tcp_routes.1.backends"),
    ("tcp replica twice", _set("tcp_routes.1.backends.1.replica", REPLICA), "table.tcp_routes.1.backends.1.replica"),
    ("tcp replica not a uuid", _set("tcp_routes.1.backends.0.replica", "r1"), "table.tcp_routes.1.backends.0.replica"),
    ("tcp address a name", _set("tcp_routes.1.backends.0.address", "db.example"),
     "table.tcp_routes.1.backends.0.address"),
    ("tcp address unspecified", _set("tcp_routes.1.backends.1.address", "::"), "table.tcp_routes.1.backends.1.address"),
    ("tcp backend port 0", _set("tcp_routes.1.backends.0.port", 0), "table.tcp_routes.1.backends.0.port"),
    ("tcp backend unknown field", _set("tcp_routes.1.backends.0.weight", 1), "table.tcp_routes.1.backends.0.weight"),
    ("tcp unknown field", _set("tcp_routes.0.unavailable", "starting"), "table.tcp_routes.0.unavailable"),
    ("tcp route with a host", _set("tcp_routes.0.host", "off-db.gantry.localhost"), "table.tcp_routes.0.host"),
    ("tcp missing field", _drop("tcp_routes.1.stop_grace_seconds"), "table.tcp_routes.1.stop_grace_seconds"),
    ("tcp missing listen port", _drop("tcp_routes.0.listen_port"), "table.tcp_routes.0.listen_port"),
]


@pytest.mark.parametrize("change,field", [(c, f) for _, c, f in BAD], ids=[name for name, _, _ in BAD])
def test_each_field_off_the_interface_is_refused_by_name(change, field):
    t = change(sample())
    if field == "table.routes.0.key_hashes.1" and t["routes"][0]["key_hashes"][1] is None:
        t["routes"][0]["key_hashes"][1] = t["routes"][0]["key_hashes"][0]
    assert refused(t).field == field


def test_a_label_twice_is_refused():
    t = table(route("a", backend("198.51.100.66", 1)), route("b", backend("198.51.100.66", 1)))
    t["routes"][1]["label"], t["routes"][1]["host"] = "a", "a.gantry.localhost"
    assert refused(t).field == "table.routes.1.label"


def test_a_replica_twice_in_one_route_is_refused():
    t = table(route("a", backend("198.51.100.66", 1, REPLICA), backend("198.51.100.67", 1, REPLICA)))
    assert refused(t).field == "table.routes.0.backends.1.replica"


@pytest.mark.parametrize("body,field", [
    (b"\xff\xfe", "body"),
    (b"{", "body"),
    (b"[]", "body"),
    (b'{"version": 1, "version": 1, "digest": "", "table": {}}', "body"),
    (b'{"version": NaN, "digest": "", "table": {}}', "body"),
    (b"[" * 100_000 + b"]" * 100_000, "body"),
    (b'{"version": ' + b"9" * 5000 + b', "digest": "", "table": {}}', "body"),
    (b'{"version": 2, "digest": "", "table": {}}', "version"),
    (b'{"version": true, "digest": "", "table": {}}', "version"),
    (b'{"version": 1, "digest": "x", "table": {}}', "digest"),
    (b'{"version": 1, "table": {}}', "body.digest"),
])
def test_a_body_that_is_not_the_interface_is_refused(body, field):
    with pytest.raises(TableError) as caught:
        parse_push(body)
    assert caught.value.field == field


def test_key_hashes_backends_and_routes_may_come_in_any_order():
    t = sample()
    t["routes"].reverse()
    t["routes"][1]["key_hashes"].reverse()
    t["routes"][1]["backends"].reverse()
    t["tcp_routes"].reverse()
    t["tcp_routes"][0]["backends"].reverse()
    assert rendered_for(parse_push(push_body(t)).table, OPTIONS, Path("/srv/gw/1")) == \
        rendered_for(parse_push(push_body(sample())).table, OPTIONS, Path("/srv/gw/1"))


# -- hostile values: refused, or rendered and sent as nothing but the template's lines -------------

STRING_FIELDS = ["domain", "routes.0.label", "routes.0.host", "routes.0.access", "routes.0.key_hashes.0",
                 "routes.1.unavailable", "routes.0.backends.0.replica", "routes.0.backends.0.address",
                 "tcp_routes.1.name", "tcp_routes.1.backends.0.replica", "tcp_routes.1.backends.1.address"]
INT_FIELDS = ["routes.0.timeout_s", "routes.0.max_body_bytes", "routes.0.stop_grace_seconds",
              "routes.0.backends.0.port", "tcp_routes.0.listen_port", "tcp_routes.1.listen_port",
              "tcp_routes.1.timeout_s", "tcp_routes.1.stop_grace_seconds", "tcp_routes.1.backends.0.port"]
HOSTILE_TEXT = st.one_of(
    st.text(),
    st.text(alphabet="abc019-.:#'\" \n\r\t%$\\{}[]@,;()/\x00\u2028\u00e9", max_size=40),
    st.sampled_from(["hi-k3x9qz", "gantry.localhost", "private", "public", "starting", "no capacity", REPLICA,
                     "198.51.100.66", "::1", "::ffff:198.51.100.66", "fe80::1%25x"]).flatmap(
        lambda good: st.sampled_from([good, good + "\n", " " + good, good + "#", good.upper(), good + "\x00"])),
)
HOSTILE_VALUE = st.one_of(st.integers(min_value=-2**65, max_value=2**65), st.booleans(), st.none(),
                          st.floats(allow_nan=False), HOSTILE_TEXT, st.lists(st.integers(), max_size=2))


def _refused_or_in_template(t: dict) -> None:
    try:
        push = parse_push(push_body(t), PORTS)
    except TableError:
        return
    rendered = rendered_for(push.table, OPTIONS, Path("/srv/gw/1"))
    assert off_template(rendered.config, rendered.maps) == []
    # ... and the runtime commands that bring it to a running gateway, from nothing or from another table
    assert off_commands(commands_for(EMPTY, push.table)) == []
    assert off_commands(commands_for(parse_push(push_body(sample())).table, push.table)) == []


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(STRING_FIELDS + INT_FIELDS), value=HOSTILE_VALUE)
def test_any_value_in_any_field_is_refused_or_stays_inside_the_template(field, value):
    _refused_or_in_template(_set(field, value)(sample()))


TCP_FIELDS = ["name", "listen_port", "timeout_s", "stop_grace_seconds", "backends", "backends.0", "backends.0.replica",
              "backends.0.address", "backends.0.port"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True), port=st.integers(20002, 20999),
       timeout=st.integers(1, 86400), grace=st.integers(0, 86400),
       addresses=st.lists(st.sampled_from(["198.51.100.66", "2001:db8::9", "::ffff:198.51.100.7"]), min_size=1,
                          max_size=3),
       hostile=st.dictionaries(st.sampled_from(TCP_FIELDS), HOSTILE_VALUE, max_size=3))
def test_any_tcp_route_is_refused_or_stays_inside_the_template(name, port, timeout, grace, addresses, hostile):
    """A TCP route added to the sample's two: valid, then up to three of its fields made hostile."""
    t = sample()
    t["tcp_routes"].append(tcp_route(name, port, *(backend(address, 40000 + n) for n, address in enumerate(addresses)),
                                     timeout_s=timeout, stop_grace_seconds=grace))
    for field, value in sorted(hostile.items(), key=lambda item: -item[0].count(".")):  # deepest first
        t = _set(f"tcp_routes.2.{field}", value)(t)
    _refused_or_in_template(t)


@settings(max_examples=200)
@given(value=HOSTILE_TEXT)
def test_a_label_and_its_host_changed_together_are_refused_or_stay_inside_the_template(value):
    t = sample()
    t["routes"][0]["label"], t["routes"][0]["host"] = value, f"{value}.gantry.localhost"
    _refused_or_in_template(t)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                      max_size=4), max_leaves=20)


@settings(max_examples=300)
@given(body=st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                      st.fixed_dictionaries({"version": JSON, "digest": JSON, "table": JSON}).map(
                          lambda v: json.dumps(v).encode())))
def test_any_body_is_a_table_error_never_another_exception(body):
    try:
        parse_push(body)
    except TableError as exc:
        assert exc.field and exc.message


def test_a_kept_table_is_read_back_against_the_tcp_ports_the_gateway_has_now(tmp_path, capsys):
    """A restart with another --tcp-ports does not serve a table whose ports are no longer its own
    (it starts empty until the plane pushes, and says why)."""
    store = TableStore(tmp_path / "table.json", PORTS)
    store.save(push_body(sample()))
    assert (tmp_path / "table.json").stat().st_mode & 0o777 == 0o600
    push, _ = store.load()
    assert [r.listen_port for r in push.table.tcp_routes] == [20000, 20001]
    assert TableStore(tmp_path / "table.json").load() is not None  # no TCP frontend: any port is taken
    assert TableStore(tmp_path / "table.json", PortRange(30000, 30999)).load() is None
    assert "table.tcp_routes.0.listen_port" in capsys.readouterr().err
