"""The route table as HAProxy 2.6 configuration: one pure, deterministic function.

`render(table, options, directory)` returns the config text and its two map files; the same
inputs always give the same bytes. Hosts and endpoint keys live in map files (`hosts.map`:
host -> label, `keys.map`: "<sha256 of a key>@<label>" -> label), so a key's hash never appears
in the config text and a route's key check is one map lookup however many keys it has.

Every value written here has been through `gateway.table` (labels, DNS names, hex digests,
IP literals, integers in range) or is the operator's own option, checked by `Options`: nothing
a push carries can add or end a line. The request path of the HTTPS frontend:

    Host (port stripped, lowercased) --hosts.map--> label, or 404
    backend r_<label>: private and no key whose hash@label is in keys.map -> 401
                       Gantry-Key removed; Content-Length over the route's limit -> 413
                       no backend -> 503 with the reason and Retry-After: 5
                       X-Forwarded-For/-Proto/-Host replaced (Forwarded, X-Real-IP dropped);
                       leastconn over the replicas
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.binds import Bind
from gateway.table import PRIVATE, Route, Table

HOSTS_MAP = "hosts.map"
KEYS_MAP = "keys.map"
CONFIG = "haproxy.cfg"

# Without routes there is nothing to time: the client side still needs a value.
DEFAULT_TIMEOUT_S = 600
RETRY_AFTER_S = 5
# An operator's path is written into the config unquoted: only characters with no meaning there.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@-]*")
# The log line HAProxy sends to the gateway (gateway/stats.py reads it): route label, status, %Ta.
LOG_FORMAT = '"%[var(txn.route)] %ST %Ta"'
_KEY_SHA256 = "req.fhdr(gantry-key),sha2(256),hex,lower"
_HOST = "req.hdr(host),regsub(:[0-9]+$,),lower"


@dataclass(frozen=True)
class Options:
    https_bind: Bind
    http_bind: Bind
    cert: Path
    public_https_port: int
    log_socket: Path
    admin_socket: Path

    def __post_init__(self) -> None:
        for name in ("cert", "log_socket", "admin_socket"):
            config_path(getattr(self, name))
        if not 0 < self.public_https_port < 65536:
            raise ValueError("public_https_port must be from 1 to 65535")


@dataclass(frozen=True)
class Rendered:
    config: str
    maps: dict[str, str]  # file name (beside the config) -> content


def config_path(path: Path) -> str:
    text = str(path)
    if not _SAFE_PATH.fullmatch(text):
        raise ValueError(f"{text!r}: HAProxy's files need an absolute path of letters, digits and ._/+@-")
    return text


def problem(status: int, title: str, detail: str) -> str:
    """A problem-details body as a single-quoted HAProxy argument (no single quote inside: our text)."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    if "'" in body:
        raise ValueError("a problem text with a single quote would end the argument early")
    return f"'{body}'"


def _return(status: int, title: str, detail: str, *headers: str, condition: str = "") -> str:
    """An indented `http-request return` line answering a problem-details body."""
    extra = "".join(f" hdr {header}" for header in headers) + (f" {condition}" if condition else "")
    body = problem(status, title, detail)
    return f"    http-request return status {status} content-type application/problem+json string {body}{extra}"


_ERRORS = {
    400: ("Bad Request", "The gateway could not read this request."),
    408: ("Request Timeout", "The request took too long to arrive."),
    500: ("Internal Server Error", "The gateway failed to handle this request."),
    502: ("Bad Gateway", "No replica of this endpoint gave a valid response."),
    503: ("Service Unavailable", "No replica of this endpoint could take the request."),
    504: ("Gateway Timeout", "No replica of this endpoint answered in time."),
}


def render(table: Table, options: Options, directory: Path) -> Rendered:
    directory_text = config_path(directory)
    hosts_map = f"{directory_text}/{HOSTS_MAP}"
    keys_map = f"{directory_text}/{KEYS_MAP}"
    routes = sorted(table.routes, key=lambda r: r.label)
    longest = max((r.timeout_s for r in routes), default=DEFAULT_TIMEOUT_S)
    # Old workers keep serving their in-flight requests after a reload, for as long as the
    # longest stop grace allows, then exit (a worker with nothing in flight exits at once).
    grace = max((r.stop_grace_seconds for r in routes), default=0)
    redirect_port = "" if options.public_https_port == 443 else f":{options.public_https_port}"
    lines = [
        "# Written by the Gantry gateway (gateway/haproxy_config.py): the next push replaces it.",
        "global",
        f"    log {config_path(options.log_socket)} len 4096 format raw local0",
        f"    stats socket {config_path(options.admin_socket)} mode 600 level admin expose-fd listeners",
        f"    hard-stop-after {max(grace, 1)}s",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        "    retries 2",
        "    option redispatch 1",
        "    timeout connect 5s",
        f"    timeout client {longest}s",
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
        f"    http-request set-var(txn.route) {_HOST},map_str({hosts_map})",
        _return(404, "Not Found", "No endpoint has this host name.", condition="unless { var(txn.route) -m found }"),
        "    use_backend r_%[var(txn.route)]",
        "",
        "frontend http",
        f"    bind {options.http_bind.haproxy()}",
        "    no log",
        _return(400, "Bad Request", "The request has no Host header.", condition="unless { req.hdr(host) -m found }"),
        f"    http-request redirect location https://%[{_HOST}]{redirect_port}%[pathq] code 308",
    ]
    for route in routes:
        lines += ["", *_backend(route, keys_map)]
    hosts = "".join(f"{route.host} {route.label}\n" for route in routes)
    keys = "".join(sorted(f"{digest}@{route.label} {route.label}\n"
                          for route in routes if route.access == PRIVATE for digest in route.key_hashes))
    return Rendered(config="\n".join(lines) + "\n", maps={HOSTS_MAP: hosts, KEYS_MAP: keys})


def _backend(route: Route, keys_map: str) -> list[str]:
    lines = [
        f"backend r_{route.label}",
        "    balance leastconn",
        f"    timeout server {route.timeout_s}s",
        f"    timeout tunnel {route.timeout_s}s",
    ]
    if route.access == PRIVATE:
        # The key's hash joined to this route's label: a key of another route is not found,
        # even if the same hash were listed under both.
        # Exactly one Gantry-Key line: with two, which one a fetch takes is HAProxy's detail.
        has_key = (f"{{ req.fhdr_cnt(gantry-key) eq 1 }} "
                   f"{{ {_KEY_SHA256},concat(@{route.label}),map_str({keys_map}) -m found }}")
        lines.append(_return(401, "Unauthorized", "This endpoint needs a valid endpoint key in Gantry-Key.",
                             "WWW-Authenticate Gantry-Key", condition=f"unless {has_key}"))
    lines += [
        "    http-request del-header gantry-key",
        _return(413, "Content Too Large", f"This endpoint takes bodies of at most {route.max_body_bytes} bytes.",
                condition=f"if {{ req.hdr_val(content-length) gt {route.max_body_bytes} }}"),
    ]
    if not route.backends:
        # Final: nothing after it would run.
        detail = f"No replica serves this endpoint now: {route.unavailable}."
        return lines + [_return(503, "Service Unavailable", detail, f"Retry-After {RETRY_AFTER_S}")]
    lines += [
        # Other spellings of "who the client is" a workload might trust: only ours reach it.
        "    http-request del-header forwarded",
        "    http-request del-header x-real-ip",
        "    http-request set-header X-Forwarded-For %[src]",
        "    http-request set-header X-Forwarded-Proto https",
        f"    http-request set-header X-Forwarded-Host {route.host}",
    ]
    for backend in sorted(route.backends, key=lambda b: b.replica):
        family = "ipv6" if ":" in backend.address else "ipv4"
        lines.append(f"    server {backend.replica} {family}@{backend.address}:{backend.port}")
    return lines
