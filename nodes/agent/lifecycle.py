"""Pure rules of a VM's life: the guest command line from image config + spec, and the VM state
derived from what the guest's /init reported in status.raw and whether QEMU still lives.

Both the long-running runtime and a one-shot CLI derive state from the same files with these
functions, so they agree on what a VM is doing without talking to each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodes.agent.errors import AgentError
from nodes.agent.state import VmInfo, VmPaths
from nodes.protocol import ReplicaSpec

LAST_STDERR_LINES = 5
TERMINAL_STATES = frozenset({"stopped", "failed"})


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


def read_status(path: Path) -> WorkloadStatus:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return WorkloadStatus()
    status = WorkloadStatus()
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line the guest was still writing, or noise
        if not isinstance(ev, dict):
            continue
        kind = ev.get("event")
        code = ev.get("code")
        if kind == "start":
            status = replace(status, starts=status.starts + 1, last_event="start")
        elif kind == "exit":
            status = replace(status, last_event="exit", last_code=code)
        elif kind == "final":
            status = replace(status, last_event="final", final_code=int(code if code is not None else -1),
                             final_error=str(ev.get("error") or ""))
    return status


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
    return f"exited with code {code} after {restarts} restarts; last stderr: {stderr or '(none)'}"


def guest_ended(info: VmInfo) -> bool:
    """What `derive` says when the guest reported its workload over while QEMU still runs: the
    runtime must stop the VM itself (nobody asked for a stop, so `stop_requested` is unset)."""
    return info.state == "stopping" and not info.stop_requested


def derive(info: VmInfo, status: WorkloadStatus, alive: bool, paths: VmPaths) -> VmInfo:
    """The VM's current state from its persisted info, its status events and QEMU's liveness.
    A terminal state (`stopped`, `failed`) needs QEMU gone, whatever the guest wrote."""
    restarts = max(0, status.starts - 1)
    if info.state in TERMINAL_STATES and not alive:
        return info
    if info.stop_requested:
        if alive:
            return replace(info, state="stopping")
        return replace(info, state="stopped", reason="stopped", pid=None, exit_code=status.final_code)
    if status.final and alive:
        # Everything on the status channel is the guest's word, and a guest with root can write
        # a `final` there while its VM runs on (and holds its GPUs). Only QEMU's end ends a VM,
        # and its meter: until then it is `stopping`, and the runtime stops it (guest_ended).
        return replace(info, state="stopping", reason=f"the workload reported its end (code {status.final_code}); "
                       "stopping its VM", exit_code=status.final_code, restarts=restarts)
    if status.final:
        if status.final_code == 0:
            return replace(info, state="stopped", reason="exited with code 0", exit_code=0, restarts=restarts)
        reason = crash_reason(status.final_code, restarts, paths)
        if status.final_error:
            reason = f"workload could not be started: {status.final_error}"
        return replace(
            info,
            state="failed",
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
            state="failed",
            reason=f"VM ended without a workload exit status (QEMU: {tail or 'no output'})",
            exit_code=status.last_code,
            restarts=restarts,
        )
    if status.last_event == "exit" and status.last_code not in (None, 0):
        return replace(info, state="restarting", exit_code=status.last_code, restarts=status.starts)
    if status.last_event == "start":
        # A restarted workload is running again; the first start still awaits its health check.
        state = "running" if info.state in ("running", "restarting") else "starting"
        return replace(info, state=state, restarts=restarts)
    if info.state in TERMINAL_STATES:
        return replace(info, state="stopping")  # recorded as ended, yet QEMU lives: it is stopped first
    return info
