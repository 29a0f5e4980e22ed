"""`python -m gateway run ...` and `python -m gateway ca ...` (docs/gateway.md)."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from gateway.binds import Bind, TcpListen, parse_address, parse_bind, parse_port_range
from gateway.ca import CaError, ensure_ca
from gateway.control import ControlServer
from gateway.haproxy_config import Options, config_path
from gateway.proxy import HAProxy, ProxyError
from gateway.service import TABLE_FILE, Gateway, TableStore
from gateway.stats import LogReader, Stats
from gateway.table import PortRange

MIN_TOKEN_LENGTH = 16
# HAProxy restarted by the gateway this often within a minute means something is wrong beyond
# a restart's reach: the gateway exits, and its supervisor takes over.
MAX_RESTARTS_PER_MINUTE = 3


def _bind(text: str) -> Bind:
    try:
        return parse_bind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> IPv4Address | IPv6Address:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port_range(text: str) -> PortRange:
    try:
        return parse_port_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m gateway",
                                  description="Gantry's endpoint gateway (HAProxy, driven by the plane).")
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run HAProxy and the control API the plane pushes the route table to")
    run.add_argument("--state-dir", required=True, type=Path, help="where the config, maps and sockets live")
    run.add_argument("--cert", required=True, type=Path, help="PEM: the certificate chain, then its key")
    run.add_argument("--https-bind", required=True, type=_bind, metavar="ADDR:PORT")
    run.add_argument("--http-bind", required=True, type=_bind, metavar="ADDR:PORT",
                     help="redirects to HTTPS (or serves the routes: --http-serves-routes)")
    run.add_argument("--control-bind", required=True, type=_bind, metavar="ADDR:PORT")
    run.add_argument("--token-file", required=True, type=Path, help="holds the token the plane sends as Bearer")
    run.add_argument("--public-https-port", type=_port, default=443,
                     help="the HTTPS port clients use, kept in redirects when it is not 443")
    run.add_argument("--haproxy", default="/usr/sbin/haproxy", help="the haproxy executable")
    run.add_argument("--http-serves-routes", action="store_true",
                     help="plain HTTP serves the routes (X-Forwarded-Proto: http) instead of redirecting: "
                          "for TLS ended in front of the gateway")
    run.add_argument("--tcp-bind", type=_address, metavar="ADDR",
                     help="the address of the TCP frontend, which serves the table's TCP routes (with --tcp-ports)")
    run.add_argument("--tcp-ports", type=_port_range, metavar="LO-HI",
                     help="the TCP frontend's ports, each a route's listen port: the plane's GANTRY_GATEWAY_TCP_PORTS "
                          "(with --tcp-bind; without both, TCP routes are taken but not served)")
    ca = commands.add_parser("ca", help="make a local CA and a wildcard certificate for DOMAIN, once")
    ca.add_argument("--dir", required=True, type=Path)
    ca.add_argument("--domain", required=True)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "ca":
        return _ca(args)
    return _run(args)


def _ca(args: argparse.Namespace) -> int:
    try:
        files = ensure_ca(args.dir.resolve(), args.domain)
    except CaError as exc:
        print(f"gateway ca: {exc}", file=sys.stderr)
        return 1
    for path in (files.ca_cert, files.ca_key, files.gateway_pem):
        print(path)
    return 0


def _token(path: Path) -> str:
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError(f"{path}: the token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters, no spaces")
    return token


def _tcp(args: argparse.Namespace) -> TcpListen | None:
    if (args.tcp_bind is None) != (args.tcp_ports is None):
        raise ValueError("--tcp-bind and --tcp-ports go together: the TCP frontend needs both")
    if args.tcp_bind is None:
        return None
    for name in ("https_bind", "http_bind", "control_bind"):
        bind: Bind = getattr(args, name)
        if bind.port in args.tcp_ports:
            raise ValueError(f"--tcp-ports {args.tcp_ports} holds the port of --{name.replace('_', '-')} {bind}")
    return TcpListen(address=args.tcp_bind, ports=args.tcp_ports)


def _run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.resolve()
    try:
        token = _token(args.token_file)
        tcp = _tcp(args)
        executable = shutil.which(args.haproxy)
        if executable is None:
            raise ValueError(f"{args.haproxy}: no such executable")
        config_path(state_dir)
        options = Options(https_bind=args.https_bind, http_bind=args.http_bind, cert=args.cert.resolve(),
                          public_https_port=args.public_https_port, log_socket=state_dir / "log.sock",
                          admin_socket=state_dir / "admin.sock", http_serves_routes=args.http_serves_routes,
                          tcp=tcp)
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o700)  # HAProxy's admin and master sockets live here
    except (OSError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stats = Stats()
    reader = LogReader(options.log_socket, stats)
    proxy = HAProxy(executable=executable, state_dir=state_dir, options=options)
    gateway = Gateway(proxy, stats, TableStore(state_dir / TABLE_FILE, tcp.ports if tcp else None))
    server = None
    try:
        gateway.start()
        reader.start()
        server = ControlServer(args.control_bind, gateway, token)
        threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
        if tcp is not None:
            print(f"gateway: TCP routes on {tcp}", file=sys.stderr, flush=True)
        print(f"gateway ready control=http://{args.control_bind}", flush=True)
        # The main thread waits for a signal, and starts HAProxy again when it dies.
        restarts: list[float] = []
        while not stop.is_set():
            code = proxy.wait(timeout=0.5)
            if code is None or stop.is_set():
                continue
            now = time.monotonic()
            restarts = [at for at in restarts if now - at < 60] + [now]
            if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                print(f"gateway: HAProxy exited with status {code}, {len(restarts)} times within a minute; giving up",
                      file=sys.stderr)
                return 1
            print(f"gateway: HAProxy exited with status {code}; starting it again with the last table",
                  file=sys.stderr, flush=True)
            try:
                gateway.revive()
            except ProxyError as exc:  # counted as one more exit on the next round
                print(f"gateway: starting HAProxy again failed: {exc}", file=sys.stderr, flush=True)
        return 0
    except (OSError, ProxyError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        gateway.close()
        proxy.stop()
        reader.close()
