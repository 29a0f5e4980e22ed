"""The rendered config: what HAProxy 2.6 itself accepts, and exactly the template's lines; the
runtime commands a push sends: exactly the template's commands."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.binds import TcpListen, parse_address, parse_bind
from gateway.haproxy_config import CONFIG, KEYS_MAP, ROUTES_MAP, TCP_MAP, Options
from gateway.table import EMPTY, UNAVAILABLE, PortRange, parse_push
from tests.gateway.tables import backend, key_hash, push_body, route, table, tcp_route
from tests.gateway.template import commands_for, off_commands, off_template, rendered_for

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="haproxy is installed by scripts/ensure-debs.sh")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A certificate HAProxy can load, and paths for its sockets (never bound by `haproxy -c`)."""
    directory = tmp_path_factory.mktemp("haproxy-config")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=*.gantry.localhost", "-days", "2", "-keyout", directory / "key.pem",
                    "-out", directory / "cert.pem"], check=True, capture_output=True)
    (directory / "gateway.pem").write_bytes((directory / "cert.pem").read_bytes() + (directory / "key.pem").read_bytes())
    return directory


def options(files: Path, **changes) -> Options:
    base = Options(https_bind=parse_bind("198.51.100.34:443"), http_bind=parse_bind("[::]:80"),
                   cert=files / "gateway.pem", public_https_port=443, log_socket=files / "log.sock",
                   admin_socket=files / "admin.sock")
    return dataclasses.replace(base, **changes)


def tcp_options(files: Path, address: str = "198.51.100.34", ports: PortRange = PortRange(20000, 20999)) -> Options:
    return options(files, tcp=TcpListen(parse_address(address), ports))


def haproxy_check(rendered, directory: Path) -> str:
    """HAProxy's verdict on the files as the gateway writes them: all it prints, which must be nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(rendered.config)
    for name, content in rendered.maps.items():
        (directory / name).write_text(content)
    result = subprocess.run([HAPROXY, "-c", "-f", str(directory / CONFIG)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return "\n".join(line for line in result.stderr.splitlines() if "[NOTICE]" not in line)


def parsed(table_: dict):
    return parse_push(push_body(table_)).table




def test_the_empty_table_is_a_valid_config_of_a_pool_with_no_server(files, tmp_path):
    rendered = rendered_for(EMPTY, options(files), tmp_path / "g")
    assert haproxy_check(rendered, tmp_path / "g") == ""
    assert rendered.maps == {ROUTES_MAP: "", KEYS_MAP: ""}
    assert rendered.config.count("\nbackend be_") == 64
    assert "\n    server " not in rendered.config


def test_a_full_table_is_valid_with_no_warning(files, tmp_path):
    t = parsed(table(
        route("hi-k3x9qz", backend("198.51.100.66", 30001), backend("2001:db8::1", 30002), access="private",
              keys=("gk_a", "gk_b")),
        route("open", backend("127.0.0.1", 8000)),
        route("off", unavailable="stopped"),
    ))
    rendered = rendered_for(t, options(files), tmp_path / "g")
    assert haproxy_check(rendered, tmp_path / "g") == ""
    assert off_template(rendered.config, rendered.maps) == []


def test_no_host_or_key_is_in_the_config_only_in_the_maps(files, tmp_path):
    t = parsed(table(route("hi", backend("198.51.100.66", 1), access="private", keys=("gk_a",), max_body_bytes=77,
                           timeout_s=30),
                     route("off", unavailable="no capacity")))
    rendered = rendered_for(t, options(files), tmp_path)
    assert key_hash("gk_a") not in rendered.config and "hi.gantry.localhost" not in rendered.config
    assert rendered.maps[KEYS_MAP] == f"{key_hash('gk_a')}@hi hi\n"
    assert rendered.maps[ROUTES_MAP] == ("hi.gantry.localhost hi|0|private|30000|77|-\n"
                                         "off.gantry.localhost off|1|public|600000|1073741824|no-capacity\n")
    be_0 = rendered.config.split("backend be_0\n")[1].split("\n\n")[0]
    assert "    server 00000000" not in be_0 and "ipv4@198.51.100.66:1 " in be_0


def test_plain_http_redirects_or_with_the_option_serves_the_routes(files, tmp_path):
    at_443 = rendered_for(EMPTY, options(files), tmp_path).config
    at_8443 = rendered_for(EMPTY, options(files, public_https_port=8443), tmp_path).config
    serving = rendered_for(EMPTY, options(files, http_serves_routes=True), tmp_path / "s")
    assert "lower]%[pathq] code 308" in at_443
    assert "lower]:8443%[pathq] code 308" in at_8443
    http = serving.config.split("frontend http\n")[1].split("\n\n")[0]
    assert "redirect location" not in http and "X-Forwarded-Proto http\n" in http and "use_backend be_" in http
    assert haproxy_check(serving, tmp_path / "s") == ""


def test_the_client_timeout_and_the_drain_bound_cover_every_routes_timeout(files, tmp_path):
    """A route's own timeout is set per request (set-timeout); the client side is shared, and an
    old worker after a reload may keep a request as long as any route allows."""
    t = parsed(table(route("a", backend("198.51.100.66", 1), timeout_s=30),
                     route("b", backend("198.51.100.66", 2), timeout_s=900)))
    config = rendered_for(t, options(files), tmp_path).config
    assert "    hard-stop-after 1200s\n" in config
    assert "    timeout client 1200s\n" in config


def test_options_refuse_a_path_that_would_need_quoting(files):
    with pytest.raises(ValueError):
        options(files, cert=Path("/srv/my certs/gw.pem"))
    with pytest.raises(ValueError):
        options(files, log_socket=Path("relative/log.sock"))


def test_the_template_check_catches_a_value_that_would_add_a_line(files, tmp_path):
    """The check used throughout has teeth: a label that was never validated adds a server."""
    good = parsed(table(route("hi", backend("198.51.100.66", 1))))
    evil_backend = dataclasses.replace(good.routes[0].backends[0], address="198.51.100.66:80 backup\n    server evil")
    evil = dataclasses.replace(good.routes[0], backends=(evil_backend,))
    rendered = rendered_for(dataclasses.replace(good, routes=(evil,)), options(files), tmp_path)
    assert any("server evil" in line for line in off_template(rendered.config, rendered.maps))


# -- the TCP frontend -------------------------------------------------------------------------------


def test_without_a_tcp_frontend_the_config_has_none_and_tcp_routes_reach_no_file(files, tmp_path):
    t = parsed(table(route("a", backend("198.51.100.66", 1)),
                     tcp=[tcp_route("a-ssh", 20001, backend("198.51.100.66", 2))]))
    rendered = rendered_for(t, options(files), tmp_path)
    lines = rendered.config.splitlines()
    assert "    mode tcp" not in lines and "frontend tcp" not in lines and "backend tcp_0" not in lines
    assert not any(line.endswith("ipv4@198.51.100.66:2") for line in lines)
    assert set(rendered.maps) == {ROUTES_MAP, KEYS_MAP}


def test_the_tcp_frontend_binds_the_range_once_and_its_empty_pool_is_valid(files, tmp_path):
    rendered = rendered_for(EMPTY, tcp_options(files), tmp_path / "g")
    assert haproxy_check(rendered, tmp_path / "g") == ""
    assert off_template(rendered.config, rendered.maps) == []
    assert rendered.maps[TCP_MAP] == ""
    assert rendered.config.count("\nbackend tcp_") == 64 and rendered.config.count("\nbackend be_") == 64
    tcp = rendered.config.split("frontend tcp\n")[1].split("\n\n")[0]
    assert "    bind ipv4@198.51.100.34:20000-20999\n" in tcp
    # its own defaults: no HTTP setting reaches the TCP proxies
    defaults = rendered.config.split("\ndefaults\n")[2].split("\n\n")[0]
    assert "    mode tcp" in defaults and "http" not in defaults


def test_tcp_routes_with_a_backend_are_in_the_map_by_port_and_their_servers_in_their_slots(files, tmp_path):
    t = parsed(table(route("web", backend("198.51.100.66", 30001)),
                     tcp=[tcp_route("db-pg", 20000), tcp_route("vm-ssh", 20005, backend("198.51.100.66", 30002),
                                                                backend("2001:db8::1", 30003))]))
    rendered = rendered_for(t, tcp_options(files, "::"), tmp_path / "g")
    assert haproxy_check(rendered, tmp_path / "g") == ""
    assert off_template(rendered.config, rendered.maps) == []
    # db-pg has no backend: not in the map, its port refuses like an unused one
    assert rendered.maps[TCP_MAP] == "20005 vm-ssh|1\n"
    tcp_1 = rendered.config.split("backend tcp_1\n")[1].split("\n\n")[0] + "\n"
    assert " ipv4@198.51.100.66:30002\n" in tcp_1 and " ipv6@2001:db8::1:30003\n" in tcp_1
    assert "pool-max-conn" not in tcp_1
    assert "    bind ipv6@:::20000-20999 v4v6\n" in rendered.config


def test_a_tcp_routes_timeout_raises_the_configs_longest_as_an_http_routes_does(files, tmp_path):
    """HAProxy 2.6 has no per-stream timeout for TCP: every TCP connection idles up to the longest."""
    t = parsed(table(route("a", backend("198.51.100.66", 1), timeout_s=30),
                     tcp=[tcp_route("a-ssh", 20001, backend("198.51.100.66", 2), timeout_s=3000)]))
    with_tcp = rendered_for(t, tcp_options(files), tmp_path).config
    without = rendered_for(t, options(files), tmp_path).config
    assert "    hard-stop-after 4800s\n" in with_tcp and with_tcp.count("    timeout tunnel 4800s\n") == 1
    assert "    hard-stop-after 600s\n" in without  # TCP routes it does not serve do not count


# -- generated valid tables -------------------------------------------------------------------------

LABELS = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
ADDRESSES = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(
    lambda a: not (a.is_unspecified or a.is_multicast)).map(str)
BACKENDS = st.builds(lambda address, port, replica: backend(address, port, str(replica)),
                     ADDRESSES, st.integers(1, 65535), st.uuids())
ROUTES = st.builds(
    lambda label, access, keys, backends, unavailable, timeout, body, grace: route(
        label, *backends, access=access, keys=tuple(keys), unavailable="" if backends else unavailable,
        timeout_s=timeout, max_body_bytes=body, stop_grace_seconds=grace),
    LABELS, st.sampled_from(["private", "public"]), st.sets(st.text(min_size=1, max_size=8), max_size=4),
    st.lists(BACKENDS, max_size=3, unique_by=lambda b: b["replica"]), st.sampled_from(UNAVAILABLE),
    st.integers(1, 86400), st.integers(1, 2**40), st.integers(0, 86400))
TCP_ROUTES = st.builds(
    lambda name, port, backends, timeout, grace: tcp_route(name, port, *backends, timeout_s=timeout,
                                                           stop_grace_seconds=grace),
    LABELS, st.integers(20000, 20999), st.lists(BACKENDS, max_size=3, unique_by=lambda b: b["replica"]),
    st.integers(1, 86400), st.integers(0, 86400))
TABLES = st.builds(
    lambda routes, tcp: table(*routes, tcp=tcp),
    st.lists(ROUTES, max_size=4, unique_by=lambda r: r["label"]),
    st.lists(TCP_ROUTES, max_size=4, unique_by=lambda r: r["name"]).filter(
        lambda tcp: len({r["listen_port"] for r in tcp}) == len(tcp)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(t=TABLES)
def test_haproxy_accepts_every_valid_table_and_each_line_is_the_templates(files, tmp_path, t):
    directory = tmp_path / uuid.uuid4().hex
    rendered = rendered_for(parsed(t), tcp_options(files), directory)
    assert off_template(rendered.config, rendered.maps) == []
    assert haproxy_check(rendered, directory) == ""
    for r in t["routes"] + t.get("tcp_routes", []):
        for b in r["backends"]:
            assert f"server {b['replica']}-" in rendered.config
            assert f" ipv{ipaddress.ip_address(b['address']).version}@" in rendered.config


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=TABLES, after=TABLES)
def test_every_runtime_command_of_a_push_is_the_templates(before, after):
    """From any valid table to any other, what goes to HAProxy's runtime API is one of the
    command shapes, and every map entry one of the map lines: nothing a push carries can add or
    end a command."""
    sent = commands_for(parsed(before), parsed(after))
    assert off_commands(sent) == []
    assert all(" state drain" not in command for command, _ in commands_for(parsed(after), parsed(after)))
