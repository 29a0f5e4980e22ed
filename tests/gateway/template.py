"""The shape of every line the gateway may write into HAProxy's config and maps.

Written out here, apart from gateway/haproxy_config.py, so that a test can say: whatever a push
carries, each rendered line is one of these and nothing else (no extra line, no value that ends a
line or an argument early). A problem-details body must also parse as JSON.
"""

from __future__ import annotations

import json
import re

_PATH = r"/[A-Za-z0-9._/+@-]+"
_BODY = r"'(?P<body>\{[^'\n]*\})'"
_RETURN = r"    http-request return status (?P<status>\d{3}) content-type application/problem\+json string " + _BODY
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = rf"{_LABEL}(\.{_LABEL})+"

CONFIG_LINES = [re.compile(line) for line in [
    r"# Written by the Gantry gateway \(gateway/haproxy_config\.py\): the next push replaces it\.",
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
    r"    timeout (connect|client|server|tunnel|http-request|http-keep-alive|client-fin) [1-9]\d*s",
    r"    http-error status (?P<status>\d{3}) content-type application/problem\+json string " + _BODY,
    r"frontend https",
    rf"    bind ipv(4|6)@[0-9a-f.:]+:\d+( v4v6)? ssl crt {_PATH} alpn h2,http/1\.1",
    r'    log-format "%\[var\(txn\.route\)\] %ST %Ta"',
    rf"    http-request set-var\(txn\.route\) req\.hdr\(host\),regsub\(:\[0-9\]\+\$,\),lower,map_str\({_PATH}/hosts\.map\)",
    _RETURN + r" unless \{ var\(txn\.route\) -m found \}",
    r"    use_backend r_%\[var\(txn\.route\)\]",
    r"frontend http",
    r"    bind ipv(4|6)@[0-9a-f.:]+:\d+( v4v6)?",
    r"    no log",
    _RETURN + r" unless \{ req\.hdr\(host\) -m found \}",
    r"    http-request redirect location https://%\[req\.hdr\(host\),regsub\(:\[0-9\]\+\$,\),lower\](:\d+)?%\[pathq\] code 308",
    rf"backend r_{_LABEL}",
    r"    balance leastconn",
    _RETURN + r" hdr WWW-Authenticate Gantry-Key unless \{ req\.fhdr_cnt\(gantry-key\) eq 1 \} "
              r"\{ req\.fhdr\(gantry-key\),sha2\(256\),hex,lower,"
              rf"concat\(@{_LABEL}\),map_str\({_PATH}/keys\.map\) -m found \}}",
    r"    http-request del-header gantry-key",
    _RETURN + r" if \{ req\.hdr_val\(content-length\) gt [1-9]\d* \}",
    _RETURN + r" hdr Retry-After 5",
    r"    http-request del-header (forwarded|x-real-ip)",
    r"    http-request set-header X-Forwarded-For %\[src\]",
    r"    http-request set-header X-Forwarded-Proto https",
    rf"    http-request set-header X-Forwarded-Host {_HOST}",
    r"    server [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} "
    r"(ipv4@\d{1,3}(\.\d{1,3}){3}|ipv6@[0-9a-f:.]+):[1-9]\d{0,4}",
]]
HOSTS_LINE = re.compile(rf"{_HOST} {_LABEL}")
KEYS_LINE = re.compile(rf"[0-9a-f]{{64}}@{_LABEL} {_LABEL}")


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
    for name, pattern in (("hosts.map", HOSTS_LINE), ("keys.map", KEYS_LINE)):
        offences += [f"{name}: {line}" for line in maps[name].split("\n")[:-1] if not pattern.fullmatch(line)]
        if maps[name] and not maps[name].endswith("\n"):
            offences.append(f"{name} without a final newline")
    return offences
