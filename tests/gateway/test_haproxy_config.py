"""The rendered config: what HAProxy 2.6 itself accepts, and exactly the template's lines."""

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

from gateway.binds import parse_bind
from gateway.haproxy_config import CONFIG, Options, render
from gateway.table import EMPTY, UNAVAILABLE, parse_push
from tests.gateway.tables import backend, key_hash, push_body, route, table
from tests.gateway.template import off_template

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


def test_the_empty_table_is_a_valid_config_that_serves_no_host(files, tmp_path):
    rendered = render(EMPTY, options(files), tmp_path / "g")
    assert haproxy_check(rendered, tmp_path / "g") == ""
    assert rendered.maps == {"hosts.map": "", "keys.map": ""}
    assert "\nbackend " not in rendered.config


def test_a_full_table_is_valid_with_no_warning(files, tmp_path):
    t = parsed(table(
        route("hi-k3x9qz", backend("198.51.100.66", 30001), backend("2001:db8::1", 30002), access="private",
              keys=("gk_a", "gk_b")),
        route("open", backend("127.0.0.1", 8000)),
        route("off", unavailable="stopped"),
    ))
    rendered = render(t, options(files), tmp_path / "g")
    assert haproxy_check(rendered, tmp_path / "g") == ""
    assert off_template(rendered.config, rendered.maps) == []


def test_key_hashes_are_only_in_the_keys_map(files, tmp_path):
    rendered = render(parsed(table(route("hi", backend("198.51.100.66", 1), access="private", keys=("gk_a",)))),
                      options(files), tmp_path)
    assert key_hash("gk_a") not in rendered.config
    assert rendered.maps["keys.map"] == f"{key_hash('gk_a')}@hi hi\n"


def test_a_public_route_has_no_key_check_and_a_route_without_backends_answers_503_with_its_reason(files, tmp_path):
    rendered = render(parsed(table(route("pub", backend("198.51.100.66", 1)), route("off", unavailable="no capacity"))),
                      options(files), tmp_path)
    pub = rendered.config.split("backend r_pub\n")[1]
    off = rendered.config.split("backend r_off\n")[1].split("backend r_pub")[0]
    assert "status 401" not in rendered.config
    assert "del-header gantry-key" in pub
    assert "No replica serves this endpoint now: no capacity." in off
    assert "hdr Retry-After 5" in off
    assert "\n    server " not in off


def test_the_redirect_keeps_a_public_https_port_other_than_443(files, tmp_path):
    at_443 = render(EMPTY, options(files), tmp_path).config
    at_8443 = render(EMPTY, options(files, public_https_port=8443), tmp_path).config
    assert "lower]%[pathq] code 308" in at_443
    assert "lower]:8443%[pathq] code 308" in at_8443


def test_timeouts_and_the_drain_bound_come_from_the_routes(files, tmp_path):
    t = parsed(table(route("a", backend("198.51.100.66", 1), timeout_s=30, stop_grace_seconds=45),
                     route("b", backend("198.51.100.66", 2), timeout_s=900, stop_grace_seconds=5)))
    config = render(t, options(files), tmp_path).config
    assert "    hard-stop-after 45s\n" in config
    assert "    timeout client 900s\n" in config  # the client side is shared: the longest route's
    route_a = config.split("backend r_a\n")[1].split("backend r_b")[0]
    assert "    timeout server 30s\n    timeout tunnel 30s\n" in route_a


def test_options_refuse_a_path_that_would_need_quoting(files):
    with pytest.raises(ValueError):
        options(files, cert=Path("/srv/my certs/gw.pem"))
    with pytest.raises(ValueError):
        options(files, log_socket=Path("relative/log.sock"))


def test_the_template_check_catches_a_value_that_would_add_a_line(files, tmp_path):
    """The check used throughout has teeth: a label that was never validated adds a server."""
    good = parsed(table(route("hi", backend("198.51.100.66", 1))))
    evil = dataclasses.replace(good.routes[0], label="hi\n    server evil 203.0.113.9:80")
    rendered = render(dataclasses.replace(good, routes=(evil,)), options(files), tmp_path)
    assert any("server evil" in line for line in off_template(rendered.config, rendered.maps))


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
TABLES = st.lists(ROUTES, max_size=4, unique_by=lambda r: r["label"]).map(lambda routes: table(*routes))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(t=TABLES)
def test_haproxy_accepts_every_valid_table_and_each_line_is_the_templates(files, tmp_path, t):
    directory = tmp_path / uuid.uuid4().hex
    rendered = render(parsed(t), options(files), directory)
    assert off_template(rendered.config, rendered.maps) == []
    assert haproxy_check(rendered, directory) == ""
    for r in t["routes"]:
        for b in r["backends"]:
            assert f"server {b['replica']} ipv{ipaddress.ip_address(b['address']).version}@" in rendered.config
