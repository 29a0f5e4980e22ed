"""The gateway's HAProxy 2.6 configuration: fixed pools of backends, the routes in map files.

`render(layout, options, directory)` is pure and deterministic. The config names no route and no
host: the HTTPS frontend (and the HTTP one with --http-serves-routes) looks the request's host up
in `routes.map`, whose value carries everything the route needs, and sends the request to the
pool backend `be_<slot>` its route holds; the TCP frontend does the same with the connection's
port, `tcp.map` and `tcp_<slot>`. A push changes the maps and the pools' servers through
HAProxy's runtime API (gateway/service.py); the config is rendered again only at start and when
a pool must grow (docs/gateway.md, "Applying a table").

    routes.map   <host> <label>|<slot>|<access>|<timeout ms>|<max body bytes>|<unavailable, or ->
    keys.map     <sha256 hex of a key>@<label> <label>
    tcp.map      <listen port> <name>|<slot>        (TCP routes with a backend; with --tcp-bind only)

The request path:

    Host (port stripped, lowercased) --routes.map--> the route, or 404
    private, and not exactly one Gantry-Key whose hash@label is in keys.map -> 401
    Gantry-Key removed; Content-Length over the route's limit -> 413
    no backend -> 503 with the reason and Retry-After: 5
    X-Forwarded-For/-Proto/-Host replaced (Forwarded, X-Real-IP dropped)
    be_<slot>: leastconn over the route's servers; server and tunnel timeouts are the route's

The TCP path (a `mode tcp` frontend on every port of --tcp-ports, when the gateway has one):

    the port (dst_port) --tcp.map--> the route, or the connection is closed at once
    tcp_<slot>: leastconn over the route's servers, the bytes passed as they come

Every value written here or into a map has been through `gateway.table` (labels, DNS names, hex
digests, IP literals, integers in range, an enumerated reason) or is the operator's own option,
checked by `Options`: nothing a push carries can add or end a line of the config, of a map, or
of a runtime command.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.binds import Bind, TcpListen
from gateway.table import PRIVATE, Backend, Route, Table

ROUTES_MAP = "routes.map"
KEYS_MAP = "keys.map"
TCP_MAP = "tcp.map"
MAPS = (KEYS_MAP, ROUTES_MAP, TCP_MAP)  # the order a push commits them in (gateway/service.py says why)
CONFIG = "haproxy.cfg"

# The server and tunnel timeouts before a request's route sets its own.
DEFAULT_TIMEOUT_S = 600
RETRY_AFTER_S = 5
# Pool servers keep idle connections to the replica for reuse, as static servers do by default
# (a dynamic server added through the runtime API keeps none unless told).
SERVER_OPTIONS = "pool-max-conn -1 pool-purge-delay 5s"
# A TCP frontend's half-closed connections: one side has closed, the other gets this long to.
TCP_FIN_TIMEOUT_S = 30
# An operator's path is written into the config unquoted: only characters with no meaning there.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@-]*")
# The log line HAProxy sends to the gateway (gateway/stats.py reads it): route label, status, %Ta.
LOG_FORMAT = '"%[var(txn.route)] %ST %Ta"'
_KEY_SHA256 = "req.fhdr(gantry-key),sha2(256),hex,lower"
_HOST = "req.hdr(host),regsub(:[0-9]+$,),lower"
# The fields of a routes.map value, in order (HAProxy's field() counts from 1).
FIELDS = ("label", "slot", "access", "timeout_ms", "max_body", "unavailable")
_FIELD = {name: f"var(txn.r),field({i},|)" for i, name in enumerate(FIELDS, start=1)}
# table.UNAVAILABLE as one word each: a map value is split on '|', and a word needs no escaping.
UNAVAILABLE_WORDS = {"starting": "starting", "no capacity": "no-capacity", "stopped": "stopped"}
AVAILABLE = "-"


@dataclass(frozen=True)
class Options:
    https_bind: Bind
    http_bind: Bind
    cert: Path
    public_https_port: int
    log_socket: Path
    admin_socket: Path
    http_serves_routes: bool = False  # plain HTTP serves the routes (TLS ends in front of the gateway)
    tcp: TcpListen | None = None  # the TCP frontend; None: the gateway serves no TCP route

    def __post_init__(self) -> None:
        for name in ("cert", "log_socket", "admin_socket"):
            config_path(getattr(self, name))
        if not 0 < self.public_https_port < 65536:
            raise ValueError("public_https_port must be from 1 to 65535")


@dataclass(frozen=True)
class Kind:
    """One pool of backends: `be_<slot>` for HTTP routes, `tcp_<slot>` for TCP routes."""

    name: str
    prefix: str
    server_options: str  # after a server's address, in the config and in `add server`

    def backend(self, slot: int) -> str:
        return f"{self.prefix}{slot}"

    def server(self, backend: Backend) -> str:
        """A server's address and options, as `server <name> …` and `add server <ref> …` take them."""
        return f"{server_address(backend)} {self.server_options}".rstrip()


HTTP = Kind("http", "be_", SERVER_OPTIONS)
# In TCP mode a server connection is the client's own: nothing to keep idle for reuse.
TCP = Kind("tcp", "tcp_", "")


@dataclass(frozen=True)
class Layout:
    """What one config holds: the pools, their bounds, the maps' entries and the servers it starts with."""

    pool_size: int
    longest_s: int  # `timeout client` and `hard-stop-after`: no route's timeout may exceed it
    maps: dict[str, dict[str, str]]  # map file name -> key -> value
    servers: tuple[tuple[str, str, Backend], ...]  # (pool backend, server name, backend)
    tcp_pool_size: int = 0  # with a TCP frontend (Options.tcp) only


@dataclass(frozen=True)
class Rendered:
    config: str
    maps: dict[str, str]  # file name (beside the config) -> content


def config_path(path: Path) -> str:
    text = str(path)
    if not _SAFE_PATH.fullmatch(text):
        raise ValueError(f"{text!r}: HAProxy's files need an absolute path of letters, digits and ._/+@-")
    return text


# -- what a table puts in the maps and the pool --------------------------------------------------


def route_entry(route: Route, slot: int) -> tuple[str, str]:
    unavailable = UNAVAILABLE_WORDS[route.unavailable] if route.unavailable else AVAILABLE
    value = "|".join((route.label, str(slot), route.access, str(route.timeout_s * 1000), str(route.max_body_bytes),
                      unavailable))
    return route.host, value


def key_entries(route: Route) -> dict[str, str]:
    """The label is part of the key: a key of one route never opens another, even if the same hash
    were listed under both."""
    if route.access != PRIVATE:
        return {}
    return {f"{digest}@{route.label}": route.label for digest in route.key_hashes}


def map_entries(table: Table, slots: dict[str, int]) -> dict[str, dict[str, str]]:
    routes = dict(route_entry(route, slots[route.label]) for route in table.routes)
    keys = {key: value for route in table.routes for key, value in key_entries(route).items()}
    return {KEYS_MAP: keys, ROUTES_MAP: routes}


def tcp_map_entries(table: Table, slots: dict[str, int]) -> dict[str, dict[str, str]]:
    """A TCP route without a backend is left out: its port refuses connections like an unused one."""
    return {TCP_MAP: {str(route.listen_port): f"{route.name}|{slots[route.name]}"
                      for route in table.tcp_routes if route.backends}}


def map_text(entries: dict[str, str]) -> str:
    return "".join(f"{key} {value}\n" for key, value in sorted(entries.items()))


def server_address(backend: Backend) -> str:
    family = "ipv6" if ":" in backend.address else "ipv4"
    return f"{family}@{backend.address}:{backend.port}"


# -- the config ----------------------------------------------------------------------------------


def problem(status: int, title: str, detail: str) -> str:
    """A problem-details body as a single-quoted HAProxy argument (no single quote inside: our text)."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    if "'" in body:
        raise ValueError("a problem text with a single quote would end the argument early")
    return f"'{body}'"


def _return(status: int, title: str, detail: str, *headers: str, condition: str = "", lf: bool = False) -> str:
    """An indented `http-request return` line answering a problem-details body (`lf`: the detail
    holds a %[...] expression HAProxy fills in)."""
    extra = "".join(f" hdr {header}" for header in headers) + (f" {condition}" if condition else "")
    body = problem(status, title, detail)
    kind = "lf-string" if lf else "string"
    return f"    http-request return status {status} content-type application/problem+json {kind} {body}{extra}"


_ERRORS = {
    400: ("Bad Request", "The gateway could not read this request."),
    408: ("Request Timeout", "The request took too long to arrive."),
    500: ("Internal Server Error", "The gateway failed to handle this request."),
    502: ("Bad Gateway", "No replica of this endpoint gave a valid response."),
    503: ("Service Unavailable", "No replica of this endpoint could take the request."),
    504: ("Gateway Timeout", "No replica of this endpoint answered in time."),
}


def render(layout: Layout, options: Options, directory: Path) -> Rendered:
    directory_text = config_path(directory)
    routes_map = f"{directory_text}/{ROUTES_MAP}"
    keys_map = f"{directory_text}/{KEYS_MAP}"
    redirect_port = "" if options.public_https_port == 443 else f":{options.public_https_port}"
    lines = [
        "# Written by the Gantry gateway (gateway/haproxy_config.py): pushes change its maps and servers at runtime.",
        "global",
        f"    log {config_path(options.log_socket)} len 4096 format raw local0",
        f"    stats socket {config_path(options.admin_socket)} mode 600 level admin expose-fd listeners",
        # After a reload the old worker finishes what it has in flight, for as long as any route
        # allows a request to take, then exits (at once when nothing is in flight).
        f"    hard-stop-after {layout.longest_s}s",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        "    retries 2",
        "    option redispatch 1",
        # No server connection outlives its request inside a client's session (HAProxy keeps one
        # there for NTLM-style auth): a server being deleted must have none left anywhere.
        "    max-session-srv-conns 0",
        "    timeout connect 5s",
        # The client side is shared by every route; HAProxy 2.6 cannot set it per request.
        f"    timeout client {layout.longest_s}s",
        f"    timeout server {DEFAULT_TIMEOUT_S}s",
        f"    timeout tunnel {DEFAULT_TIMEOUT_S}s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 60s",
        "    timeout client-fin 30s",
        *(f"    http-error status {status} content-type application/problem+json string {problem(status, *text)}"
          for status, text in _ERRORS.items()),
        "",
        "frontend https",
        f"    bind {options.https_bind.haproxy()} ssl crt {config_path(options.cert)} alpn h2,http/1.1",
        f"    log-format {LOG_FORMAT}",
        *_route_rules("https", routes_map, keys_map),
        "",
        "frontend http",
        f"    bind {options.http_bind.haproxy()}",
    ]
    if options.http_serves_routes:
        lines += [f"    log-format {LOG_FORMAT}", *_route_rules("http", routes_map, keys_map)]
    else:
        lines += [
            "    no log",
            _return(400, "Bad Request", "The request has no Host header.",
                    condition="unless { req.hdr(host) -m found }"),
            f"    http-request redirect location https://%[{_HOST}]{redirect_port}%[pathq] code 308",
        ]
    servers: dict[str, list[tuple[str, Backend]]] = {}
    for proxy, name, backend in layout.servers:
        servers.setdefault(proxy, []).append((name, backend))
    for slot in range(layout.pool_size):
        lines += [
            "",
            f"backend {HTTP.backend(slot)}",
            "    balance leastconn",
            "    http-request set-timeout server var(txn.timeout)",
            "    http-request set-timeout tunnel var(txn.timeout)",
            *(f"    server {name} {HTTP.server(backend)}"
              for name, backend in sorted(servers.get(HTTP.backend(slot), []))),
        ]
    maps = [KEYS_MAP, ROUTES_MAP]
    if options.tcp is not None:
        lines += _tcp(layout, options.tcp, f"{directory_text}/{TCP_MAP}", servers)
        maps.append(TCP_MAP)
    return Rendered(config="\n".join(lines) + "\n", maps={name: map_text(layout.maps.get(name, {})) for name in maps})


def _tcp(layout: Layout, listen: TcpListen, tcp_map: str, servers: dict[str, list[tuple[str, Backend]]]) -> list[str]:
    """The TCP frontend and its pool, after a `defaults` section of their own (a defaults section
    applies to the proxies after it: the HTTP ones keep theirs)."""
    if layout.tcp_pool_size < 1:
        raise ValueError("a TCP frontend needs a pool of TCP backends")
    route = f"dst_port,map_int({tcp_map})"
    lines = [
        "",
        "defaults",
        "    mode tcp",
        "    retries 2",
        "    option redispatch 1",
        "    timeout connect 5s",
        # HAProxy 2.6 cannot set a TCP stream's timeouts per route (no `tcp-request … set-timeout`):
        # every TCP connection may idle for the config's longest, which covers every route's.
        f"    timeout client {layout.longest_s}s",
        f"    timeout server {layout.longest_s}s",
        f"    timeout tunnel {layout.longest_s}s",
        f"    timeout client-fin {TCP_FIN_TIMEOUT_S}s",
        f"    timeout server-fin {TCP_FIN_TIMEOUT_S}s",
        "",
        "frontend tcp",
        f"    bind {listen.haproxy()}",
        # A port with no route (or no backend) is closed before anything else is done with it;
        # checked again once the stream exists, in case the map changed in between.
        f"    tcp-request connection reject unless {{ {route} -m found }}",
        f"    tcp-request content set-var(txn.r) {route}",
        "    tcp-request content reject unless { var(txn.r) -m found }",
        f"    use_backend {TCP.prefix}%[var(txn.r),field(2,|)]",
    ]
    for slot in range(layout.tcp_pool_size):
        lines += [
            "",
            f"backend {TCP.backend(slot)}",
            "    balance leastconn",
            *(f"    server {name} {TCP.server(backend)}"
              for name, backend in sorted(servers.get(TCP.backend(slot), []))),
        ]
    return lines


def _no_key(condition: str) -> str:
    return _return(401, "Unauthorized", "This endpoint needs a valid endpoint key in Gantry-Key.",
                   "WWW-Authenticate Gantry-Key", condition=condition)


def _route_rules(proto: str, routes_map: str, keys_map: str) -> list[str]:
    private = f"{{ {_FIELD['access']} -m str {PRIVATE} }}"
    lines = [
        f"    http-request set-var(txn.host) {_HOST}",
        f"    http-request set-var(txn.r) var(txn.host),map_str({routes_map})",
        _return(404, "Not Found", "No endpoint has this host name.", condition="unless { var(txn.r) -m found }"),
        f"    http-request set-var(txn.route) {_FIELD['label']}",
        f"    http-request set-var(txn.timeout) {_FIELD['timeout_ms']}",
        f"    http-request set-var(txn.maxbody) {_FIELD['max_body']}",
        # Exactly one Gantry-Key line: with two, which one a fetch takes is HAProxy's detail.
        _no_key(f"if {private} !{{ req.fhdr_cnt(gantry-key) eq 1 }}"),
        _no_key(f"if {private} !{{ {_KEY_SHA256},concat(@,txn.route),map_str({keys_map}) -m found }}"),
        "    http-request del-header gantry-key",
        _return(413, "Content Too Large", "This endpoint takes bodies of at most %[var(txn.maxbody)] bytes.", lf=True,
                condition="if { req.hdr_val(content-length),sub(txn.maxbody) gt 0 }"),
    ]
    for reason, word in UNAVAILABLE_WORDS.items():
        lines.append(_return(503, "Service Unavailable", f"No replica serves this endpoint now: {reason}.",
                             f"Retry-After {RETRY_AFTER_S}",
                             condition=f"if {{ {_FIELD['unavailable']} -m str {word} }}"))
    return lines + [
        # Other spellings of "who the client is" a workload might trust: only ours reach it.
        "    http-request del-header forwarded",
        "    http-request del-header x-real-ip",
        "    http-request set-header X-Forwarded-For %[src]",
        f"    http-request set-header X-Forwarded-Proto {proto}",
        "    http-request set-header X-Forwarded-Host %[var(txn.host)]",
        f"    use_backend {HTTP.prefix}%[{_FIELD['slot']}]",
    ]
