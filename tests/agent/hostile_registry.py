"""A registry that does what real ones refuse to, for the image tests of issue 23: it serves
any manifest bytes (docker-registry will not store a manifest whose digests are paths), records
every request, and can be told to fail (429, 5xx) as a registry under load does. Built on
conftest_images.FakeRegistry, on 127.0.0.1 only.

And a recorder of the filesystem calls a pull makes, through Python's audit hooks (`open`,
`os.remove`, `os.rename`, ...: every call in the agent's image code goes through one), so a test
can say which paths a pull touched, in threads too."""

import base64
import os
import sys
import threading
from pathlib import Path

from tests.agent.conftest_images import FakeRegistry


class HostileRegistry(FakeRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []
        self.failing: int | None = None  # answer every request with this status
        self.basic: str | None = None  # "user:password" that Basic auth requires

    def _answer(self, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.requests.append(target)
        if self.failing is not None:
            return self.failing, {}, b'{"errors":[{"code":"UNAVAILABLE"}]}'
        if self.basic is not None:
            if headers.get("authorization") != "Basic " + base64.b64encode(self.basic.encode()).decode():
                return 401, {"WWW-Authenticate": 'Basic realm="hostile"'}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
        return super()._answer(target, headers)

    def blob_requests(self) -> list[str]:
        return [r for r in self.requests if "/blobs/" in r]


# -- filesystem calls ------------------------------------------------------------------------

# Audit events whose arguments name paths the call acts on (os.symlink's first argument is a
# link's text, not a path it touches).
_PATH_ARGS = {
    "open": (0,), "os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,),
    "os.utime": (0,), "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,),
    "os.truncate": (0,), "shutil.rmtree": (0,), "os.listdir": (0,), "os.scandir": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
}
# The argument holding a dir_fd that a relative path is opened against (the `open` event
# carries none: a relative name there stays relative, see outside()).
_DIR_FD_ARG = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 2, "os.chmod": 2, "os.chown": 3, "os.utime": 3,
               "os.mkfifo": 2, "os.mknod": 3, "os.symlink": 2}
_lock = threading.Lock()
_inside = threading.local()
_recording: list[tuple[str, str]] | None = None


def _hook(event: str, args: tuple) -> None:
    if _recording is None or event not in _PATH_ARGS or getattr(_inside, "busy", False):
        return
    _inside.busy = True  # what the hook calls may be audited, or wrapped (blockbuster) and audited
    try:
        for i in _PATH_ARGS[event]:
            if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)):
                path = os.fsdecode(args[i])
                fd_arg = _DIR_FD_ARG.get(event)
                dir_fd = args[fd_arg] if fd_arg is not None and fd_arg < len(args) else None
                if not path.startswith("/") and isinstance(dir_fd, int):
                    try:
                        path = os.readlink(f"/proc/self/fd/{dir_fd}") + "/" + path
                    except OSError:
                        pass
                path = os.path.normpath(path) if path.startswith("/") else path
                if event == "open" and _writes(args):
                    event = "open for writing"
                with _lock:
                    if _recording is not None:
                        _recording.append((event, path))
    finally:
        _inside.busy = False


def _writes(args: tuple) -> bool:
    """Whether an `open` event (path, mode, flags) may write: builtins.open gives a mode,
    os.open gives None and its flags."""
    mode = args[1] if len(args) > 1 else None
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))


sys.addaudithook(_hook)  # once per process; idle unless a recording is on
_IMPORTS = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).resolve().parents[2])})


class FsCalls:
    """`with FsCalls() as calls:` records every path the code under test touches."""

    def __enter__(self) -> list[tuple[str, str]]:
        global _recording
        self.calls: list[tuple[str, str]] = []
        _recording = self.calls
        return self.calls

    def __exit__(self, *exc) -> None:
        global _recording
        _recording = None


def outside(calls: list[tuple[str, str]], root: Path) -> list[tuple[str, str]]:
    """The calls on paths outside `root`, less Python reading its own files and listing its own
    directories (a lazy import, a traceback's source lines) and subprocess's /dev/null. A relative name was opened against a directory fd (rmtree and
    the layer code do that, below a directory they reached by an absolute path recorded here):
    the agent's image code uses no path relative to its working directory."""
    root_text = str(root)
    return [(event, path) for event, path in calls
            if path.startswith("/") and path != "/dev/null"
            and not (path == root_text or path.startswith(root_text + os.sep))
            and not (event in _READS and path.startswith(_IMPORTS))]


# What the import system does on its own paths when a module is first imported mid-pull: it
# reads files and lists the directories on sys.path (the checkout's root among them).
_READS = frozenset({"open", "os.listdir", "os.scandir"})
