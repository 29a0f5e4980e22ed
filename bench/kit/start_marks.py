"""bench/e2e_start.py's readings: when a step happened (from daphne's, the agent's and Celery's
log lines) and how much CPU each process group, VM and the host used."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path


def _log_ts(line: str) -> float | None:
    """The time of a `%(asctime)s ...` line (the agent's logging format; local time, ms)."""
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def _celery_ts(line: str) -> float | None:
    """The time of a Celery worker log line: `[2024-01-01 12:00:00,123: INFO/...]`."""
    try:
        return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _cpu_of(fields: list[str] | None) -> float:
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else 0.0  # utime + stime


def _group_cpu(pgid: int) -> float:
    """CPU seconds used so far by the live processes of one process group (a process we
    spawned with start_new_session, its children included)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            fields = _stat(proc.name)
            if fields and int(fields[2]) == pgid:
                total += _cpu_of(fields)
    return total


def _vm_cpu(vm_dir: Path) -> float | None:
    """CPU seconds used so far by the QEMU of a VM dir (QEMU runs in a session of its own)."""
    needle = str(vm_dir).encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes() and b"qemu" in (proc / "comm").read_bytes():
                return _cpu_of(_stat(proc.name))
        except OSError:
            pass
    return None


def _host_busy() -> float:
    """CPU seconds all cores of this host have been busy (not idle, not waiting on I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK
