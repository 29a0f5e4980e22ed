"""The words the plane and the agent share, each defined once.

Plain Python with no Django and nothing but the standard library (import-linter holds that):
the agent imports it beside `protocol/wire.py`, the models build their `choices` from it, and
services, selectors, consumers and the dashboard import the sets they test against from here,
so a state added or renamed here is added or renamed everywhere.
"""

from __future__ import annotations

import re

# -- replicas ------------------------------------------------------------------------------------

PENDING = "pending"
PULLING = "pulling"
BOOTING = "booting"
STARTING = "starting"
RUNNING = "running"
RESTARTING = "restarting"
STOPPING = "stopping"
STOPPED = "stopped"
FAILED = "failed"
LOST = "lost"

# The states a microVM itself goes through, as the agent reports them. `pending` (not placed or
# not yet started) and `lost` (its node went silent) exist only on the plane.
VM_STATES = (PULLING, BOOTING, STARTING, RUNNING, RESTARTING, STOPPING, STOPPED, FAILED)
REPLICA_STATES = (PENDING, *VM_STATES, LOST)
# A VM in one of these has ended on its node: no QEMU runs for it, and none will again.
VM_ENDED_STATES = (STOPPED, FAILED)
# A replica in one of these is over for the plane: it holds nothing and is never reported on
# again. `lost` is the plane's verdict on a replica whose node went silent.
TERMINAL_STATES = (*VM_ENDED_STATES, LOST)

RUN = "run"
STOP = "stop"
DESIRED_STATES = (RUN, STOP)  # what the plane wants of a replica

PASSING = ""  # no failure reported (a replica's health says only what fails)
FAILING = "failing"
HEALTH_STATES = (PASSING, FAILING)  # a running replica's health check, as its node sees it

# -- deployments ---------------------------------------------------------------------------------

EXPIRED = "expired"
DEPLOYMENT_STATUSES = (PENDING, STARTING, RUNNING, STOPPING, STOPPED, FAILED, EXPIRED)
# A deployment in one of these is wanted: it holds (or is getting) replicas, and is billed.
LIVE_STATUSES = (PENDING, STARTING, RUNNING)

# -- endpoints ------------------------------------------------------------------------------------

# Who the gateway lets through to a deployment's HTTP endpoint: with "private" only requests
# carrying one of its live endpoint keys (`Gantry-Key`), with "public" anyone.
PRIVATE = "private"
PUBLIC = "public"
ENDPOINT_ACCESSES = (PRIVATE, PUBLIC)

# How a volume is mounted inside a replica (protocol.wire.VolumeMount.mode).
VOLUME_MODES = ("rw", "ro")

# -- nodes ---------------------------------------------------------------------------------------

JOINING = "joining"
ONLINE = "online"
CORDONED = "cordoned"
DRAINING = "draining"
OFFLINE = "offline"
NODE_STATUSES = (JOINING, ONLINE, CORDONED, DRAINING, OFFLINE)

# -- tenants -------------------------------------------------------------------------------------

OWNER = "owner"
ADMIN = "admin"
MEMBER = "member"
ROLES = (OWNER, ADMIN, MEMBER)
# Who may manage a tenant: its members, keys, billing and spend limits.
MANAGER_ROLES = (OWNER, ADMIN)

# -- logs ----------------------------------------------------------------------------------------

STDOUT = "stdout"
STDERR = "stderr"
SYSTEM = "system"
LOG_STREAMS = (STDOUT, STDERR, SYSTEM)

# -- names and addresses -------------------------------------------------------------------------

# A VM's name becomes a directory name, a TAP hash input, a QEMU -name, an interface alias and an
# nft comment (a quoted string of at most 128 bytes with ':' as its separator): so lowercase
# letters, digits and "_.-", starting with a letter or digit, at most 63 characters. The plane
# names each VM after its replica's uid (36 characters).
VM_NAME_MAX = 63
VM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,%d}" % (VM_NAME_MAX - 1))
VM_NAME_RULE = f"1-{VM_NAME_MAX} of a-z, 0-9, '-', '_', '.', starting with a letter or digit"


def is_vm_name(name: object) -> bool:
    return isinstance(name, str) and VM_NAME_RE.fullmatch(name) is not None


# The path a node's health check GETs: absolute, visible ASCII only (it goes into a request
# line as it is, so no space, CR or LF can end that line early), 256 characters at most.
HEALTH_PATH_RE = re.compile(r"/[!-~]{0,255}")

# A deployment's extra ports (`expose`, issue 25): each is published on its node beside the
# traffic port, and gets a gateway name (HTTP) or a gateway port (TCP).
MAX_EXPOSED_PORTS = 8
EXPOSE_HTTP = "http"
EXPOSE_TCP = "tcp"
EXPOSE_PROTOCOLS = (EXPOSE_HTTP, EXPOSE_TCP)


# A PCI address as sysfs spells it: domain:bus:device.function, lowercase hex.
PCI_ADDRESS_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def is_pci_address(text: object) -> bool:
    return isinstance(text, str) and PCI_ADDRESS_RE.fullmatch(text) is not None


def choices(values: tuple[str, ...]) -> dict[str, str]:
    """{"PENDING": "pending", ...}: the members of a Django `TextChoices` built from a set here."""
    return {value.upper(): value for value in values}
