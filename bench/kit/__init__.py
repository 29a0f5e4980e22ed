"""What the benchmarks under bench/ share: output, waiting for a condition, undoing and killing
what a run left behind, percentiles, a process's memory and CPU. The plane's processes (daphne,
the worker: ports, argv, health, stopping) are started as tests/e2e starts them, from
tests/e2e/stack.py. (Not a benchmark: `make bench` runs bench/*.py only.)"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import statistics
import sys
from pathlib import Path

from tests.e2e.stack import BIN, Procs, answers_healthz, daphne_argv, free_port, wait_for, worker_argv

__all__ = ["BIN", "Cleanups", "Procs", "admin_sql", "answers_healthz", "cpu_s", "daphne_argv", "free_link", "free_port",
           "kill_under", "plane_secrets", "quantiles", "rss_mib", "say", "wait_for",
           "worker_argv"]


def say(message: str) -> None:
    print(message, flush=True)


def plane_secrets() -> None:
    """The plane (daphne, Celery) refuses to start with DEBUG off without a SECRET_KEY and
    FERNET_KEYS of its own (cloud/production.py): a bench run makes them, in this process's
    environment before Django reads it, so the bench and every process it starts share them."""
    from cryptography.fernet import Fernet

    if not os.environ.get("SECRET_KEY"):
        os.environ["SECRET_KEY"] = "bench-" + secrets.token_urlsafe(48)
    if not os.environ.get("FERNET_KEYS"):
        os.environ["FERNET_KEYS"] = Fernet.generate_key().decode()


def kill_under(path: Path) -> None:
    """SIGKILL every process whose command line names `path` (QEMU of our VMs, our agent, fake guests)."""
    needle = str(path).encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(proc.name) != os.getpid() and needle in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def quantiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99)."""
    if len(samples) < 2:
        return (samples[0], samples[0]) if samples else (float("nan"), float("nan"))
    q = statistics.quantiles(samples, n=100)
    return statistics.median(samples), q[98]


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (daphne forks nothing; the agent's
    fake guests run in sessions of their own and are not counted)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used so far (user + system)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


class Cleanups:
    """What a run set up, undone at its end in reverse order; one failing undo stops no other."""

    def __init__(self):
        self.cleanups: list[tuple[str, object]] = []

    def on_exit(self, what: str, fn) -> None:
        self.cleanups.append((what, fn))

    def close(self) -> None:
        for what, fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - every other cleanup must still run
                print(f"cleanup: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)


def free_link(candidates: list[str]) -> ipaddress.IPv4Network:
    """The first of `candidates` (TEST-NET /30s) that no route or address of this host overlaps."""
    from tests.agent.netns import ip

    used = []
    for line in ip("-4", "-o", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("local", "broadcast", "unicast", "multicast") and len(line.split()) > 1:
            dest = line.split()[1]
        try:
            used.append(ipaddress.ip_network(dest, strict=False))
        except ValueError:
            pass
    for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            used.append(ipaddress.ip_interface(m.group(1)).network)
    for cand in map(ipaddress.ip_network, candidates):
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise RuntimeError(f"no free /30 among {candidates} for a veth pair")


def admin_sql(url: str, *statements: str) -> None:
    """Statements that cannot run in a transaction (CREATE/DROP DATABASE), on the server's
    maintenance database."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)
