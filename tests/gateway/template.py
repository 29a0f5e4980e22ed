"""The shape of every line the gateway may write into HAProxy's config and maps, or send to its
runtime API.

Written out here, apart from gateway/haproxy_config.py and gateway/service.py, so that a test can
say: whatever a push carries, each rendered line and each command is one of these and nothing else
(no extra line, no value that ends a line, an argument or a command early). A problem-details body
must also parse as JSON.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from gateway.haproxy_config import Options, Rendered, render
from gateway.pool import Change, Pool
from gateway.runtime import AdminSession
from gateway.service import Gateway
from gateway.table import Table

_PATH = r"/[A-Za-z0-9._/+@-]+"
_BODY = r"'(?P<body>\{[^'\n]*\})'"
_RETURN = r"    http-request return status (?P<status>\d{3}) content-type application/problem\+json string " + _BODY
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = rf"{_LABEL}(\.{_LABEL})+"

_FIELD = r"var\(txn\.r\),field\([1-6],\|\)"
_SERVER = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-[1-9]\d*"
_ADDRESS = r"(ipv4@\d{1,3}(\.\d{1,3}){3}|ipv6@[0-9a-f:.]+):[1-9]\d{0,4}"
_PRIVATE = r"\{ var\(txn\.r\),field\(3,\|\) -m str private \}"

CONFIG_LINES = [re.compile(line) for line in [
    r"# Written by the Gantry gateway \(gateway/haproxy_config\.py\): pushes change its maps and servers at runtime\.",
    r"",
    r"global",
    rf"    log {_PATH} len 4096 format raw local0",
    rf"    stats socket {_PATH} mode 600 level admin expose-fd listeners",
    r"    hard-stop-after [1-9]\d*s",
    r"    ssl-default-bind-options ssl-min-ver TLSv1\.2",
    r"defaults",
    r"    mode http",
    r"    log global",
    r"    option dontlognull",
    r"    retries 2",
    r"    option redispatch 1",
    r"    max-session-srv-conns 0",
    r"    timeout (connect|client|server|tunnel|http-request|http-keep-alive|client-fin|server-fin) [1-9]\d*s",
    r"    http-error status (?P<status>\d{3}) content-type application/problem\+json string " + _BODY,
    r"frontend https?",
    rf"    bind ipv(4|6)@[0-9a-f.:]+:\d+( v4v6)? ssl crt {_PATH} alpn h2,http/1\.1",
    r"    bind ipv(4|6)@[0-9a-f.:]+:\d+( v4v6)?",
    r'    log-format "%\[var\(txn\.route\)\] %ST %Ta"',
    r"    http-request set-var\(txn\.host\) req\.hdr\(host\),regsub\(:\[0-9\]\+\$,\),lower",
    rf"    http-request set-var\(txn\.r\) var\(txn\.host\),map_str\({_PATH}/routes\.map\)",
    _RETURN + r" unless \{ var\(txn\.r\) -m found \}",
    rf"    http-request set-var\(txn\.(route|timeout|maxbody)\) {_FIELD}",
    _RETURN + rf" hdr WWW-Authenticate Gantry-Key if {_PRIVATE} !\{{ req\.fhdr_cnt\(gantry-key\) eq 1 \}}",
    _RETURN + rf" hdr WWW-Authenticate Gantry-Key if {_PRIVATE} !\{{ req\.fhdr\(gantry-key\),sha2\(256\),hex,lower,"
              rf"concat\(@,txn\.route\),map_str\({_PATH}/keys\.map\) -m found \}}",
    r"    http-request del-header gantry-key",
    _RETURN.replace(" string ", " lf-string ") + r" if \{ req\.hdr_val\(content-length\),sub\(txn\.maxbody\) gt 0 \}",
    _RETURN + rf" hdr Retry-After 5 if \{{ {_FIELD} -m str (starting|no-capacity|stopped) \}}",
    r"    http-request del-header (forwarded|x-real-ip)",
    r"    http-request set-header X-Forwarded-For %\[src\]",
    r"    http-request set-header X-Forwarded-Proto https?",
    r"    http-request set-header X-Forwarded-Host %\[var\(txn\.host\)\]",
    rf"    use_backend be_%\[{_FIELD}\]",
    # the TCP frontend and its pool (with --tcp-bind)
    r"    mode tcp",
    r"frontend tcp",
    r"    bind ipv(4|6)@[0-9a-f.:]+:[1-9]\d{0,4}-[1-9]\d{0,4}( v4v6)?",
    rf"    tcp-request connection reject unless \{{ dst_port,map_int\({_PATH}/tcp\.map\) -m found \}}",
    rf"    tcp-request content set-var\(txn\.r\) dst_port,map_int\({_PATH}/tcp\.map\)",
    r"    tcp-request content reject unless \{ var\(txn\.r\) -m found \}",
    r"    use_backend tcp_%\[var\(txn\.r\),field\(2,\|\)\]",
    r"backend tcp_(0|[1-9]\d*)",
    rf"    server {_SERVER} {_ADDRESS}",
    r"    no log",
    _RETURN + r" unless \{ req\.hdr\(host\) -m found \}",
    r"    http-request redirect location https://%\[req\.hdr\(host\),regsub\(:\[0-9\]\+\$,\),lower\](:\d+)?%\[pathq\] code 308",
    r"backend be_(0|[1-9]\d*)",
    r"    balance leastconn",
    r"    http-request set-timeout (server|tunnel) var\(txn\.timeout\)",
    rf"    server {_SERVER} {_ADDRESS} pool-max-conn -1 pool-purge-delay 5s",
]]
ROUTES_LINE = re.compile(rf"{_HOST} {_LABEL}\|(0|[1-9]\d*)\|(private|public)\|[1-9]\d*\|[1-9]\d*\|(-|starting|no-capacity|stopped)")
KEYS_LINE = re.compile(rf"[0-9a-f]{{64}}@{_LABEL} {_LABEL}")
TCP_LINE = re.compile(rf"[1-9]\d{{0,4}} {_LABEL}\|(0|[1-9]\d*)")
MAP_LINES = {"routes.map": ROUTES_LINE, "keys.map": KEYS_LINE, "tcp.map": TCP_LINE}


def off_template(config: str, maps: dict[str, str]) -> list[str]:
    """Every line of the config or a map that is not one of the shapes above."""
    offences = []
    for line in config.split("\n")[:-1]:
        match = next((m for pattern in CONFIG_LINES if (m := pattern.fullmatch(line))), None)
        if match is None:
            offences.append(line)
        elif match.groupdict().get("body") is not None:
            body = json.loads(match["body"])
            if set(body) != {"type", "title", "status", "detail"} or str(body["status"]) != match["status"]:
                offences.append(line)
    if not config.endswith("\n"):
        offences.append("(config without a final newline)")
    for name, pattern in ((name, MAP_LINES[name]) for name in maps):
        offences += [f"{name}: {line}" for line in maps[name].split("\n")[:-1] if not pattern.fullmatch(line)]
        if maps[name] and not maps[name].endswith("\n"):
            offences.append(f"{name} without a final newline")
    return offences


_REF = rf"(be|tcp)_(0|[1-9]\d*)/{_SERVER}"
COMMAND_LINES = [re.compile(line) for line in [
    rf"add server be_(0|[1-9]\d*)/{_SERVER} {_ADDRESS} pool-max-conn -1 pool-purge-delay 5s",
    rf"add server tcp_(0|[1-9]\d*)/{_SERVER} {_ADDRESS}",
    rf"enable server {_REF}",
    rf"set server {_REF} state drain",
    rf"prepare map {_PATH}/(routes|keys|tcp)\.map",
    rf"add map @\d+ {_PATH}/(routes|keys|tcp)\.map",
    rf"commit map @\d+ {_PATH}/(routes|keys|tcp)\.map",
]]


def off_commands(commands: list[tuple[str, list[str]]]) -> list[str]:
    """Every runtime command (and payload line, a map entry) that is not one of the shapes above."""
    offences = []
    for command, payload in commands:
        if not any(pattern.fullmatch(command) for pattern in COMMAND_LINES):
            offences.append(command)
        offences += [line for line in payload if not any(pattern.fullmatch(line) for pattern in MAP_LINES.values())]
    return offences


# -- what the gateway writes and sends for a table ----------------------------------------------


def _names():
    serial = itertools.count(1)
    return lambda backend: f"{backend.replica}-{next(serial)}"


def rendered_for(table: Table, options: Options, directory: Path, size: int = 64) -> Rendered:
    """The config and maps a gateway starting with `table` writes (servers named from 1; a TCP
    pool as large as the HTTP one when `options` has a TCP frontend)."""
    tcp_size = size if options.tcp is not None else None
    return render(Pool.build(table, size, _names(), tcp_size).layout(), options, directory)


class Recorder(AdminSession):
    """The runtime commands a push sends, answered as HAProxy answers their success."""

    def __init__(self):
        super().__init__(Path("/nowhere"), 0)
        self.sent: list[tuple[str, list[str]]] = []

    def run(self, command: str, payload: list[str] | None = None) -> str:
        self.sent.append((command, payload or []))
        if command.startswith("add server"):
            return "New server registered."
        return "New version created: 7" if command.startswith("prepare map") else ""

    def run_many(self, commands: list[str]) -> list[str]:
        return [self.run(command) for command in commands]


def commands_for(before: Table, after: Table, *, tcp: bool = True) -> list[tuple[str, list[str]]]:
    """What a gateway serving `before` sends HAProxy to serve `after` (with pools and a client
    timeout that need no reload; `tcp`: the gateway has a TCP frontend)."""
    names = _names()
    pool = Pool.build(before, 64, names, 64 if tcp else None)
    pool.directory = Path("/var/lib/gantry-gateway/generations/1")
    pool.longest_s = 86400
    change = pool.change(after, names)
    assert isinstance(change, Change), change
    cli = Recorder()
    Gateway._send(cli, pool, change)
    return cli.sent
