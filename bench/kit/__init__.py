"""What the benchmarks under bench/ share: output, free ports, waiting for a condition, killing
what a run left behind, percentiles, a process's memory and CPU. (Not a benchmark: `make bench` runs bench/*.py only.)"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(check, *, timeout: float, what: str, interval: float = 0.1):
    """`check()`'s first true value, polled every `interval`; RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


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


class Procs:
    """Processes of this run, each in a session of its own, killed as a group at the end."""

    def __init__(self, logs: Path, env: dict[str, str], cwd: Path):
        self.logs, self.env, self.cwd = logs, env, cwd
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "a")
        proc = subprocess.Popen(argv, cwd=self.cwd, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, *names: str) -> None:
        """SIGTERM, then SIGKILL after 15 s, to each named process group (all if none named)."""
        procs = [p for name, p in self.procs.items() if not names or name in names]
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)


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
