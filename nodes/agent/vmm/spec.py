"""The guest spec: what /init runs, and the shell fragment it reads it from.

The fragment travels as fw_cfg file `opt/gantry/spec` (see guest/init for why) and is sourced
by busybox ash, so every value is single-quoted here. Lists (env, argv) become one variable of
already-quoted words that /init only expands through `eval`, which re-parses the quoting
exactly: no word splitting or globbing of customer strings ever happens in the guest.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

FW_CFG_NAME = "opt/gantry/spec"
# Docker's default when the image sets none; argv[0] is searched in the workload's PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_BACKOFF_S = 60  # /init caps backoff_s * 2**(attempt-1) at this


@dataclass(frozen=True)
class GuestSpec:
    """The workload as /init runs it: the image config already merged with the replica spec.

    env includes the secret env (it is the workload's environment); it only ever lands in the
    root-only guest.sh in the VM dir, unlinked before QEMU runs, and in the guest's memory.
    user: "", "name", "uid", "name:group" or "uid:gid", resolved in the image's /etc/passwd.
    Attempt k (from 1) that exits non-zero restarts after backoff_s * 2**(k-1) seconds (capped
    at 60) while k <= max_restarts; stop_grace_s is how long SIGTERM gets before SIGKILL when
    the VM is powered down.
    """

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    max_restarts: int = 3
    backoff_s: float = 1.0
    stop_grace_s: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuestSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _words(items: list[str]) -> str:
    return " ".join(shlex.quote(i) for i in items)


def validate(spec: GuestSpec) -> None:
    """Raises ValueError for what no guest could run (the runtime reports it as permanent)."""
    if not spec.argv or not spec.argv[0]:
        raise ValueError("nothing to run: the image has no entrypoint or cmd and the spec gives none")
    for s in [*spec.argv, *spec.env, *spec.env.values(), spec.workdir, spec.user]:
        if "\0" in s:
            raise ValueError("NUL characters cannot appear in argv, env, workdir or user")
    for key in spec.env:
        if not key or "=" in key:
            raise ValueError(f"invalid environment variable name {key!r}")
    if not spec.workdir.startswith("/"):
        raise ValueError(f"workdir must be absolute, got {spec.workdir!r}")


def volume_lines(volumes: list[tuple[str, str, str]]) -> str:
    """GANTRY_VOLUMES: one `serial:mode:mount_path` line per volume, parents before what is
    mounted inside them (a path sorts before every path below it), so no mount hides another.
    The wire's mount_path_problem() leaves no colon, space, quote or newline in a path."""
    for serial, mode, path in volumes:
        if mode not in ("rw", "ro") or any(c in serial + path for c in ":\n\0") or not path.startswith("/"):
            raise ValueError(f"volume mount refused: {path[:80]!r}")
    return "".join(f"{serial}:{mode}:{path}\n" for serial, mode, path in sorted(volumes, key=lambda v: v[2]))


def render(spec: GuestSpec, *, hostname: str, root_dev: str | None, net: dict[str, str] | None, gpus: int = 0,
           volumes: list[tuple[str, str, str]] = ()) -> str:
    """The fragment /init sources. net: {"addr": "a.b.c.d/len", "gw": ..., "mac": ..., "dns":
    space-separated nameserver addresses}. gpus: how many GPUs the VM was given; /init loads
    the GPU kit's driver and refuses to run the workload unless it finds exactly that many.
    volumes: (serial, "rw"|"ro", mount_path) of each volume disk, mounted by /init before the
    workload starts (a volume that does not mount fails the VM: no workload runs without its data)."""
    validate(spec)
    env = dict(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    values = {
        "GANTRY_HOSTNAME": hostname,
        "GANTRY_ROOT_DEV": root_dev or "",
        "GANTRY_WORKDIR": spec.workdir,
        "GANTRY_USER": spec.user,
        "GANTRY_ENV": _words([f"{k}={v}" for k, v in env.items()]),
        "GANTRY_HAS_HOME": "1" if "HOME" in env else "",
        "GANTRY_ARGV": _words(spec.argv),
        "GANTRY_MAX_RESTARTS": str(max(0, int(spec.max_restarts))),
        "GANTRY_BACKOFF_MS": str(max(0, round(spec.backoff_s * 1000))),
        "GANTRY_STOP_GRACE": str(max(0, round(spec.stop_grace_s))),
        "GANTRY_NET_ADDR": (net or {}).get("addr", ""),
        "GANTRY_NET_GW": (net or {}).get("gw", ""),
        "GANTRY_NET_MAC": (net or {}).get("mac", "").lower(),
        "GANTRY_NET_DNS": (net or {}).get("dns", ""),
        "GANTRY_GPUS": str(max(0, int(gpus))),
        "GANTRY_VOLUMES": volume_lines(list(volumes)),
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
