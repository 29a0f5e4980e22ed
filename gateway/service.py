"""What the gateway serves now, and the one way to change it: apply a push (docs/gateway.md).

A push is applied through HAProxy's runtime API, with no reload: the new table is diffed against
the pools the current worker holds (gateway/pool.py), and only the difference is sent: servers
added, the maps swapped atomically, servers set to drain. TCP routes are served the same way when
the gateway has a TCP frontend (--tcp-bind, --tcp-ports); without one a table's TCP routes are
taken (the table is the plane's, for every gateway) but not served, and GET /v1/routes says so.
A reload (a new config) happens only at start, when a pool must grow, when a route's timeout
exceeds the config's client timeout, and as the fallback when a runtime command fails, so the
gateway never answers 200 for a table it serves half of. Draining servers are deleted by the
reaper once nothing uses them, or shut once their route's stop grace has passed.

Pushes, the reaper and restarts take one lock: one change at a time. A push whose digest is the
one served changes nothing (the plane re-pushes the whole table every few seconds). The last
table served is kept on disk: a restarted gateway (or HAProxy, restarted by the gateway) serves
it until the plane pushes again.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gateway.haproxy_config import HTTP, MAPS, TCP, render
from gateway.pool import MIN_POOL, Change, Pool, Reload, pool_size
from gateway.proxy import HAProxy, ProxyError
from gateway.runtime import AdminSession, CommandError
from gateway.stats import Stats
from gateway.table import EMPTY, Backend, PortRange, Push, Table, TableError, parse_push

REAP_INTERVAL_S = 0.5
TABLE_FILE = "table.json"


@dataclass(frozen=True)
class Applied:
    digest: str | None  # None: the empty table a gateway starts with, before any push
    applied_at: str | None
    tcp_routes: int = 0  # in the table
    tcp_served: bool = False  # the gateway has a TCP frontend: every TCP route of the table is served

    def as_dict(self) -> dict:
        return {"digest": self.digest, "applied_at": self.applied_at,
                "tcp_routes": {"count": self.tcp_routes, "served": self.tcp_served}}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log(message: str) -> None:
    print(f"gateway: {message}", file=sys.stderr, flush=True)


class TableStore:
    """The last push served, as the plane sent it (its digest covers those bytes), 0600."""

    def __init__(self, path: Path, tcp_ports: PortRange | None = None):
        self.path = path
        self.tcp_ports = tcp_ports  # as pushes are checked: a range changed since may refuse the table

    def load(self) -> tuple[Push, bytes] | None:
        try:
            body = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log(f"cannot read {self.path} ({exc}); starting with no table")
            return None
        try:
            return parse_push(body, self.tcp_ports), body
        except TableError as exc:
            log(f"{self.path} is not a table ({exc}); starting with no table")
            return None

    def save(self, body: bytes) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)


class Gateway:
    def __init__(self, proxy: HAProxy, stats: Stats, store: TableStore):
        self.proxy = proxy
        self.stats = stats
        self.store = store
        self._lock = threading.RLock()
        self.tcp = proxy.options.tcp  # None: TCP routes are taken, not served
        self._applied = Applied(digest=None, applied_at=None, tcp_served=self.tcp is not None)
        self._pool: Pool | None = None
        # Set when runtime commands were sent and neither they nor the rebuild after them all
        # succeeded: what the worker holds is unknown, so the next push rebuilds.
        self._unknown = False
        self._serial = itertools.count(1)
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap_forever, name="reaper", daemon=True)

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        """HAProxy up with the last table kept on disk, or with none (every host 404)."""
        stored = self.store.load()
        with self._lock:
            self._rebuild(stored[0].table if stored else EMPTY)
            if stored:
                self._applied = self._record(stored[0])
                log(f"serving the last table kept in {self.store.path} until the plane pushes")
        self._reaper.start()

    def revive(self) -> None:
        """HAProxy exited: start it again with the table it served."""
        with self._lock:
            if self.proxy.wait(timeout=0) is None:
                return  # a push has started it again meanwhile
            self._rebuild(self._pool.table if self._pool else EMPTY, why="HAProxy exited")

    def close(self) -> None:
        self._closed.set()
        if self._reaper.is_alive():
            self._reaper.join(timeout=5)

    @property
    def applied(self) -> Applied:
        return self._applied

    # -- pushes --------------------------------------------------------------------------------

    def push(self, push: Push, body: bytes) -> Applied:
        """Serve `push.table`. ProxyError: not applied, the previous digest still reported; HAProxy
        serves the previous table, or, when a runtime update failed and so did the rebuild after
        it, a mix of the two tables' parts until the next push rebuilds."""
        with self._lock:
            if push.digest != self._applied.digest:
                self._serve(push.table)
                self._applied = self._record(push)
                try:
                    self.store.save(body)
                except OSError as exc:  # served all the same; only a restart would miss it
                    log(f"could not keep the table in {self.store.path}: {exc}")
            return self._applied

    def _record(self, push: Push) -> Applied:
        count = len(push.table.tcp_routes)
        if count and self.tcp is None:
            log(f"{count} TCP routes are not served: this gateway has no TCP frontend (--tcp-bind, --tcp-ports)")
        return Applied(digest=push.digest, applied_at=utc_now(), tcp_routes=count, tcp_served=self.tcp is not None)

    def _serve(self, table: Table) -> None:
        pool = self._pool
        if pool is None or self._unknown:
            self._rebuild(table, why="what HAProxy holds is unknown after a failed update")
            return
        change = pool.change(table, self._name)
        if isinstance(change, Reload):
            self._rebuild(table, grow=change.grow, why=change.reason)
            return
        try:
            if not change.empty:
                with self.proxy.admin() as cli:
                    self._send(cli, pool, change)
        except (CommandError, ProxyError) as exc:
            self._unknown = True
            log(f"a runtime command failed ({exc}); falling back to a rebuild of the config and a reload")
            self._rebuild(table, why="the runtime update failed")
            return
        pool.commit(change, time.monotonic())

    @staticmethod
    def _send(cli: AdminSession, pool: Pool, change: Change) -> None:
        assert pool.directory is not None
        adds = []
        for server in change.add:
            adds += [(f"add server {server.ref} {server.kind.server(server.backend)}", "New server registered."),
                     (f"enable server {server.ref}", "")]
        cli.expect_many(adds)
        # Keys before routes: a route turning private finds its keys there already; in between,
        # any mix of the two tables is at most as open as one of them.
        for file in MAPS:
            if file in change.maps:
                cli.replace_map(str(pool.directory / file), change.maps[file])
        cli.expect_many([(f"set server {server.ref} state drain", "") for server in change.drain])

    def _rebuild(self, table: Table, *, grow: tuple[str, ...] = (), why: str = "") -> None:
        """A config for `table` with fresh pools, loaded (started or reloaded); the servers still
        draining stay with the old worker, which exits once they are done (hard-stop-after)."""
        current = self._pool.http.size if self._pool else MIN_POOL
        size = pool_size(len(table.routes), at_least=2 * current if HTTP.name in grow else current)
        tcp_size = None
        if self.tcp is not None:
            current = self._pool.tcp.size if self._pool and self._pool.tcp else MIN_POOL
            tcp_size = pool_size(len(table.tcp_routes), at_least=2 * current if TCP.name in grow else current)
        pool = Pool.build(table, size, self._name, tcp_size)
        if why:
            tcp = f" and {tcp_size} TCP backends" if tcp_size is not None else ""
            log(f"{why}: loading a new config into HAProxy, a pool of {size} backends{tcp}")
        pool.directory = self.proxy.load(lambda directory: render(pool.layout(), self.proxy.options, directory))
        self._pool = pool
        self._unknown = False

    def _name(self, backend: Backend) -> str:
        return f"{backend.replica}-{next(self._serial)}"

    # -- the reaper ----------------------------------------------------------------------------

    def _reap_forever(self) -> None:
        while not self._closed.wait(REAP_INTERVAL_S):
            try:
                self.reap()
            except (CommandError, ProxyError) as exc:
                log(f"reaper: {exc}")  # tried again on the next round

    def reap(self) -> None:
        """One round: every draining server moves on when it can. With requests in flight it
        waits (shut once its grace is over); then maintenance (out of the balancing for good);
        then, once no stream or connection of any kind points at it, deleted.

        HAProxy's counts are read without the lock (thousands of servers take a while to list):
        meanwhile a push may add servers and drain more, but never brings back one that drains,
        and counts of a server in maintenance only go down."""
        with self._lock:
            pool = self._pool
            if pool is None or self._unknown or not pool.leaving():
                return
        read_at = time.monotonic()
        with self.proxy.admin() as cli:
            counts = cli.server_counts()  # two answers for all servers, however many leave
            streams = cli.streams_by_server() if any(server.in_maint for server in pool.leaving()) else {}
        with self._lock:
            if self._pool is not pool or self._unknown:
                return  # a reload since: the servers that drained stay with the old worker
            now = time.monotonic()
            shut, maint, ready = [], [], []
            for server in pool.leaving():
                backend = server.kind.backend(server.slot)
                count = counts.get((backend, server.name))
                if count is None:
                    if (server.draining_since or now) < read_at:  # it was there: deleted by someone else
                        log(f"reaper: {server.ref} is gone from HAProxy")
                        pool.forget(server)
                    continue
                if count["scur"] or count["qcur"] or count.get("used_cur", 0):
                    if not server.shut and now - (server.draining_since or now) >= server.grace_s:
                        shut.append(server)  # its requests are cut: 502, or the connection closes
                elif not server.in_maint:
                    # Deleted on a later round: in maintenance nothing new reaches it, and what
                    # just ended has time to let go of it.
                    maint.append(server)
                elif not count.get("idle_cur", 0) and not streams.get((backend, server.name)):
                    ready.append(server)  # (idle connections: maintenance closes them, soon gone)
            with self.proxy.admin() as cli:
                cli.expect_many([(f"shutdown sessions server {server.ref}", "") for server in shut]
                                + [(f"set server {server.ref} state maint", "") for server in maint])
                for server in shut:
                    server.shut = True
                for server in maint:
                    server.in_maint = True
                answers = cli.run_many([f"del server {server.ref}" for server in ready])
            for server, answer in zip(ready, answers):
                if answer == "Server deleted.":
                    pool.forget(server)
                elif "still has connections" not in answer:
                    raise CommandError(f"del server {server.ref}: HAProxy answered {answer!r}")
