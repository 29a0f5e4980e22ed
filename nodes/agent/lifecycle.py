"""Pure rules of a VM's life: the guest command line from image config + spec, and the VM state
derived from what the guest's /init reported in status.raw and whether QEMU still lives.

Both the long-running runtime and a one-shot CLI derive state from the same files with these
functions, so they agree on what a VM is doing without talking to each other.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodes.agent.errors import AgentError
from nodes.agent.state import VmInfo, VmPaths
from protocol.wire import ReplicaSpec
from protocol.vocabulary import FAILED, RESTARTING, RUNNING, STARTING, STOPPED, STOPPING, VM_ENDED_STATES

LAST_STDERR_LINES = 5


def guest_command(image_config: Any, spec: ReplicaSpec) -> tuple[list[str], dict[str, str]]:
    """argv and env for the workload, with Docker's override rules: an entrypoint from the spec
    replaces the image's ENTRYPOINT *and* drops its CMD unless the spec gives args too; args
    alone replace CMD. Env: image env, then spec env, then secret env (later wins)."""
    if spec.entrypoint is not None:
        argv = list(spec.entrypoint) + list(spec.args or [])
    else:
        cmd = spec.args if spec.args is not None else image_config.cmd
        argv = list(image_config.entrypoint or []) + list(cmd or [])
    if not argv:
        raise AgentError(
            f"image {spec.image} has no ENTRYPOINT or CMD and the spec gives no entrypoint", permanent=True
        )
    env = {**image_config.env, **spec.env, **spec.secret_env}
    return argv, env


@dataclass(frozen=True)
class WorkloadStatus:
    """What /init reported: {"event":"start"|"exit","code":N,"attempt":k} lines, then "final"."""

    starts: int = 0
    last_event: str | None = None
    last_code: int | None = None
    final_code: int | None = None
    final_error: str = ""  # /init's own failure (code 125): no such command, bad user, ...

    @property
    def final(self) -> bool:
        return self.final_code is not None


# The status channel is written by the guest, and a root workload can write anything there
# (tests/agent/forge.py). /init's records are short; a longer line is not one of them and is
# skipped unread. A reason built from guest data is cut to what the plane stores.
MAX_STATUS_LINE = 4096
MAX_REASON_CHARS = 480
_CHUNK = 1 << 20


def _code(value: Any) -> int | None:
    """An exit code as /init writes it (an integer, 0-255, or 125 for its own failure), or None
    for anything else: a guest's string, float, bool or list is noise, never a crash here."""
    if type(value) is int and -(1 << 31) <= value < (1 << 31):
        return value
    return None


def _apply_event(status: WorkloadStatus, line: bytes) -> WorkloadStatus:
    try:
        ev = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return status  # a line the guest was still writing, or noise
    if not isinstance(ev, dict):
        return status
    kind = ev.get("event")
    code = _code(ev.get("code"))
    if kind == "start":
        return replace(status, starts=status.starts + 1, last_event="start")
    if kind == "exit" and code is not None:
        return replace(status, last_event="exit", last_code=code)
    if kind == "final" and code is not None:
        error = ev.get("error")
        return replace(status, last_event="final", final_code=code,
                       final_error=error[:MAX_REASON_CHARS] if isinstance(error, str) else "")
    return status


class StatusReader:
    """Reads a VM's status.raw incrementally: each pass parses only what was appended since
    the last one, in bounded chunks, so a guest that floods its status channel costs the agent
    one pass over the new bytes, never a re-read (or a copy in memory) of everything so far."""

    def __init__(self) -> None:
        self.offset = 0
        self.status = WorkloadStatus()
        self._partial = b""
        self._skipping = False  # inside a line past MAX_STATUS_LINE: dropped up to its newline
        self._lock = threading.Lock()  # the watcher and a listing may read at once, in threads

    def read(self, path: Path) -> WorkloadStatus:
        with self._lock:
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                return self.status
            with f:
                f.seek(self.offset)
                while chunk := f.read(_CHUNK):
                    self.offset += len(chunk)
                    self._feed(chunk)
            return self.status

    def _feed(self, chunk: bytes) -> None:
        lines = chunk.split(b"\n")
        for i, piece in enumerate(lines):
            last = i == len(lines) - 1
            if self._skipping:
                if not last:
                    self._skipping = False  # the overlong line ended here
                continue
            if last:
                self._partial += piece
                if len(self._partial) > MAX_STATUS_LINE:
                    self._partial, self._skipping = b"", True
                continue
            line, self._partial = self._partial + piece, b""
            if len(line) <= MAX_STATUS_LINE:
                self.status = _apply_event(self.status, line)


def read_status(path: Path) -> WorkloadStatus:
    """The whole of a status file, once (the runtime keeps a StatusReader per VM instead)."""
    return StatusReader().read(path)


def last_lines(path: Path, n: int = LAST_STDERR_LINES, window: int = 16384) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - window))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = [ln.decode("utf-8", "replace").rstrip("\r") for ln in data.splitlines()]
    return [ln for ln in lines if ln.strip()][-n:]


def crash_reason(code: int, restarts: int, paths: VmPaths) -> str:
    stderr = " | ".join(last_lines(paths.stderr))
    reason = f"exited with code {code} after {restarts} restarts; last stderr: {stderr or '(none)'}"
    # The stderr is the guest's: a reason too long for the plane would be refused, and the
    # replica's end (which ends its meter and frees its GPUs) never recorded.
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 1] + "…"


def guest_ended(info: VmInfo) -> bool:
    """What `derive` says when the guest reported its workload over while QEMU still runs: the
    runtime must stop the VM itself (nobody asked for a stop, so `stop_requested` is unset)."""
    return info.state == STOPPING and not info.stop_requested


def derive(info: VmInfo, status: WorkloadStatus, alive: bool, paths: VmPaths) -> VmInfo:
    """The VM's current state from its persisted info, its status events and QEMU's liveness.
    A terminal state (`stopped`, `failed`) needs QEMU gone, whatever the guest wrote."""
    restarts = max(0, status.starts - 1)
    if info.state in VM_ENDED_STATES and not alive:
        return info
    if info.stop_requested:
        if alive:
            return replace(info, state=STOPPING)
        return replace(info, state=STOPPED, reason="stopped", pid=None, exit_code=status.final_code)
    if status.final and alive:
        # Everything on the status channel is the guest's word, and a guest with root can write
        # a `final` there while its VM runs on (and holds its GPUs). Only QEMU's end ends a VM,
        # and its meter: until then it is `stopping`, and the runtime stops it (guest_ended).
        return replace(info, state=STOPPING, reason=f"the workload reported its end (code {status.final_code}); "
                       "stopping its VM", exit_code=status.final_code, restarts=restarts)
    if status.final:
        if status.final_code == 0:
            return replace(info, state=STOPPED, reason="exited with code 0", exit_code=0, restarts=restarts)
        reason = crash_reason(status.final_code, restarts, paths)
        if status.final_error:
            reason = f"workload could not be started: {status.final_error}"
        return replace(
            info,
            state=FAILED,
            reason=reason,
            exit_code=status.final_code,
            restarts=restarts,
        )
    if not alive:
        if info.pid is None:
            return info  # not launched yet (or never): nothing to derive from
        tail = " | ".join(last_lines(paths.qemu_log, 3))
        return replace(
            info,
            state=FAILED,
            reason=f"VM ended without a workload exit status (QEMU: {tail or 'no output'})",
            exit_code=status.last_code,
            restarts=restarts,
        )
    if status.last_event == "exit" and status.last_code not in (None, 0):
        return replace(info, state=RESTARTING, exit_code=status.last_code, restarts=status.starts)
    if status.last_event == "start":
        # A restarted workload is running again; the first start still awaits its health check.
        state = RUNNING if info.state in (RUNNING, RESTARTING) else STARTING
        return replace(info, state=state, restarts=restarts)
    if info.state in VM_ENDED_STATES:
        return replace(info, state=STOPPING)  # recorded as ended, yet QEMU lives: it is stopped first
    return info
