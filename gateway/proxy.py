"""The HAProxy process: started in master-worker mode, given a new config by a graceful reload.

Pushes reach the running worker through the runtime API (gateway/runtime.py); a config is loaded
only at start and when the pool must grow or a rebuild is the fallback (gateway/service.py).
Each config is written to a fresh generation directory (config + maps), checked with
`haproxy -c`, and only then made current by swapping the `haproxy.cfg` symlink the master reads.
SIGUSR2 makes the master re-execute itself with it: a new worker starts on the same listening
sockets (passed over the stats socket, `expose-fd listeners`, so no connection is refused), and
the old workers stop accepting, finish what they have in flight and exit (`hard-stop-after`
bounds how long). `load` returns once the master's CLI lists the new worker and that worker
answers on it, which is when the new config is served.

HAProxy dies with the gateway (PR_SET_PDEATHSIG), so a gateway killed with SIGKILL does not leave
a proxy serving a stale table beside the one its restart starts; the workers die with their master.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.haproxy_config import CONFIG, Options, Rendered
from gateway.runtime import AdminSession

READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
_MASTER = re.compile(r"^(\d+)\s+master\s+(\d+) \[failed: (\d+)\]", re.MULTILINE)
_WORKERS = re.compile(r"^# workers\n(.*?)(?=^#|\Z)", re.MULTILINE | re.DOTALL)
_WORKER = re.compile(r"^(\d+)\s+worker\s", re.MULTILINE)


class ProxyError(RuntimeError):
    """HAProxy refused a config, failed to reload, or is not running."""


@dataclass(frozen=True)
class Processes:
    reloads: int
    failed: int
    workers: frozenset[int]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; kept across HAProxy's own re-exec on reload.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class HAProxy:
    def __init__(self, *, executable: str, state_dir: Path, options: Options):
        self.executable = executable
        self.state_dir = state_dir
        self.options = options
        self.config_link = state_dir / CONFIG
        self.master_socket = state_dir / "master.sock"
        self.pidfile = state_dir / "haproxy.pid"
        self.generations = state_dir / "generations"
        self._generation = 0
        self._current: Path | None = None
        self._process: subprocess.Popen | None = None
        self.worker: int | None = None  # the worker serving the current config

    # -- files -----------------------------------------------------------------------------

    def _write_generation(self, render: Callable[[Path], Rendered]) -> Path:
        self._generation += 1
        directory = self.generations / str(self._generation)
        building = self.generations / f"{self._generation}.tmp"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        # Rendered with the final directory's path: the config names its maps by absolute path.
        rendered = render(directory)
        for name, content in {CONFIG: rendered.config, **rendered.maps}.items():
            (building / name).write_text(content)
        building.rename(directory)
        return directory

    def check(self, directory: Path) -> None:
        result = subprocess.run([self.executable, "-c", "-q", "-f", str(directory / CONFIG)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise ProxyError(f"haproxy -c refused the config: {(result.stderr or result.stdout).strip()}")

    def _point_at(self, directory: Path) -> None:
        link = self.state_dir / f"{CONFIG}.new"
        link.unlink(missing_ok=True)
        link.symlink_to(directory / CONFIG)
        os.replace(link, self.config_link)  # atomic: the master reads one config or the other
        previous, self._current = self._current, directory
        # Keep the one before (a failed reload points back at it); older ones are loaded nowhere.
        for old in self.generations.iterdir():
            if old not in (directory, previous):
                shutil.rmtree(old, ignore_errors=True)

    # -- the process -----------------------------------------------------------------------

    def load(self, render: Callable[[Path], Rendered]) -> Path:
        """Serve the config `render` writes: start HAProxy with it, or reload it into the running
        one. Returns the config's directory once its worker serves it; ProxyError (and whatever
        ran before still running) when HAProxy refuses or fails to load it."""
        if self._process is None or self._process.poll() is not None:
            return self._start(render)
        previous = self._current
        directory = self._write_generation(render)
        try:
            self.check(directory)
        except ProxyError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        before = self._processes()
        self._point_at(directory)
        os.kill(self._process.pid, signal.SIGUSR2)
        try:
            self.worker = self._wait_reloaded(before)
        except ProxyError:
            if previous is not None:
                self._point_at(previous)
            raise
        return directory

    def _start(self, render: Callable[[Path], Rendered]) -> Path:
        self._stop_stale()
        shutil.rmtree(self.generations, ignore_errors=True)
        self.generations.mkdir(parents=True)
        self.master_socket.unlink(missing_ok=True)
        self._current = None
        directory = self._write_generation(render)
        self.check(directory)
        self._point_at(directory)
        self._process = subprocess.Popen(
            [self.executable, "-W", "-db", "-S", f"{self.master_socket},mode,600", "-f", str(self.config_link),
             "-p", str(self.pidfile)],
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            processes = self._processes_or_none()
            if processes and processes.workers and self._answers(max(processes.workers)):
                self.worker = max(processes.workers)
                return directory
            self._raise_if_exited()
            if time.monotonic() > deadline:
                raise ProxyError("HAProxy did not start a worker in time")
            time.sleep(0.05)

    def admin(self) -> AdminSession:
        """A runtime API session with the current worker (`with proxy.admin() as cli:`)."""
        self._raise_if_exited()
        if self.worker is None:
            raise ProxyError("HAProxy has no worker yet")
        return AdminSession(self.options.admin_socket, self.worker)

    def _wait_reloaded(self, before: Processes) -> int:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            # While the master re-executes itself its CLI does not answer: wait for it.
            now = self._processes_or_none()
            if now is not None and now.reloads > before.reloads:
                if now.failed > before.failed:
                    raise ProxyError("HAProxy failed to load the new config; the previous one is still served")
                fresh = now.workers - before.workers
                if fresh and self._answers(max(fresh)):
                    return max(fresh)
            self._raise_if_exited()
            time.sleep(0.02)
        raise ProxyError("HAProxy did not start a worker on the new config in time")

    def stop(self) -> None:
        """A soft stop: listeners close at once, in-flight requests finish (up to hard-stop-after)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGUSR1)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def wait(self, timeout: float | None = None) -> int | None:
        """The master's exit status, once it has exited (None when `timeout` passes first)."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _raise_if_exited(self) -> None:
        if self._process is None:
            raise ProxyError("HAProxy is not started")
        code = self._process.poll()
        if code is not None:
            raise ProxyError(f"HAProxy exited with status {code}")

    def _stop_stale(self) -> None:
        """A master left by an earlier run on this state dir (its gateway killed before
        PDEATHSIG existed, say) would share the ports through SO_REUSEPORT: it goes first."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return
        if str(self.config_link).encode() not in cmdline:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- the master CLI --------------------------------------------------------------------

    def _cli(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.master_socket))
            conn.sendall(command.encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)  # the master CLI answers and closes only once input ends
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _processes(self) -> Processes:
        processes = self._processes_or_none()
        if processes is None:
            raise ProxyError("HAProxy's master CLI does not answer")
        return processes

    def _processes_or_none(self) -> Processes | None:
        try:
            text = self._cli("show proc")
        except OSError:
            return None
        master = _MASTER.search(text)
        workers = _WORKERS.search(text)
        if master is None or workers is None:
            return None
        return Processes(reloads=int(master.group(2)), failed=int(master.group(3)),
                         workers=frozenset(int(pid) for pid in _WORKER.findall(workers.group(1))))

    def _answers(self, worker: int) -> bool:
        """The worker runs its event loop (so its listeners are enabled): it answers on the CLI."""
        try:
            return f"Pid: {worker}" in self._cli(f"@!{worker} show info")
        except OSError:
            return False
