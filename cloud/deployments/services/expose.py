"""A deployment's extra ports (`expose`, issue 25): what makes a list acceptable beside the
deployment it is for, and the gateway ports its TCP entries hold.

The API's serializer checks each entry on its own and the list as a whole (names, ports,
protocols, duplicates); what needs the deployment is checked here, on the row about to be saved:
an HTTP entry is served at `<label>-<name>.<domain>`, one DNS label, so a long deployment label
leaves less room for the name (TCP entries are named `<label>-<name>` in the route table too, and
held to the same bound); no entry repeats the traffic port; and a TCP port carries no endpoint
key, so it is open to anyone: a private deployment gets one only with allow_public_tcp.

Each TCP entry holds one port of GANTRY_GATEWAY_TCP_PORTS on every gateway (a GatewayPort row),
from the write that adds the name to the write that drops it or the deployment's deletion:
restarts, scaling and other PATCHes leave it where it is, so a customer's clients keep working.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.db import connection

from cloud.deployments.labels import MAX_LABEL_LENGTH, expose_label
from cloud.deployments.models import Deployment, GatewayPort
from cloud.exceptions import Conflict, InvalidInput
from protocol.vocabulary import EXPOSE_TCP, PRIVATE

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")
NAME_RULE = "1-15 of a-z, 0-9 and '-', starting and ending with a letter or digit"
# What the endpoints list calls traffic_port: no entry of `expose` may take it.
TRAFFIC_PORT_NAME = "http"
# pg_advisory_xact_lock key: one allocation at a time, so two writes never take the same free port.
_ALLOCATION_LOCK = 0x74637070  # "tcpp"


def tcp_url(port: int) -> str:
    return f"tcp://{settings.GANTRY_GATEWAY_TCP_HOST}:{port}"


def expose_check(*, deployment: Deployment) -> None:
    """The deployment's `expose` beside its label, traffic port and access, as they are about to
    be saved; InvalidInput naming the request field otherwise."""
    room = MAX_LABEL_LENGTH - len(deployment.endpoint_label) - 1
    for i, entry in enumerate(deployment.expose):
        if entry["port"] == deployment.traffic_port:
            raise InvalidInput(f"expose.{i}.port", f"Port {entry['port']} is the traffic_port, which the gateway "
                                                   f"serves as \"{TRAFFIC_PORT_NAME}\" already.", code="duplicate_port")
        if len(entry["name"]) > room:
            raise InvalidInput(
                f"expose.{i}.name",
                f"'{entry['name']}' is too long for this deployment: its gateway name "
                f"'{expose_label(deployment.endpoint_label, entry['name'])}' must fit one DNS label "
                f"({MAX_LABEL_LENGTH} characters), which leaves {max(room, 0)} characters after the label "
                f"'{deployment.endpoint_label}' (a shorter deployment name makes a shorter label).",
                code="too_long")
    if (deployment.endpoint_access == PRIVATE and not deployment.allow_public_tcp
            and any(entry["protocol"] == EXPOSE_TCP for entry in deployment.expose)):
        raise InvalidInput(
            "allow_public_tcp",
            "A TCP port cannot carry an endpoint key, so anyone who finds its gateway port can connect to it. "
            "This deployment's endpoint is private: set \"allow_public_tcp\": true to expose a TCP port anyway, "
            "or make the deployment public.", code="public_tcp")


def gateway_ports_sync(*, deployment: Deployment) -> None:
    """Gateway ports for the deployment's TCP entries exactly: a name that stays keeps its port,
    a dropped one frees it, a new one takes the lowest free port of GANTRY_GATEWAY_TCP_PORTS.
    Conflict when none is free (the transaction, and so the whole write, is undone)."""
    wanted = [entry["name"] for entry in deployment.expose if entry["protocol"] == EXPOSE_TCP]
    held = GatewayPort.objects.filter(deployment=deployment)
    held.exclude(name__in=wanted).delete()
    have = set(held.values_list("name", flat=True))
    missing = [name for name in wanted if name not in have]
    if not missing:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ALLOCATION_LOCK])
    low, high = settings.GANTRY_GATEWAY_TCP_PORTS
    taken = set(GatewayPort.objects.filter(port__gte=low, port__lte=high).values_list("port", flat=True))
    free = (port for port in range(low, high + 1) if port not in taken)
    for name in missing:
        port = next(free, None)
        if port is None:
            raise Conflict(
                f"No gateway TCP port is free: all {high - low + 1} ports of the gateways' range {low}-{high} are "
                "held by deployments' TCP ports. Try again once some are freed; the operator can widen the range "
                "(GANTRY_GATEWAY_TCP_PORTS).")
        GatewayPort.objects.create(deployment=deployment, name=name, port=port)


def gateway_ports_release(*, deployment: Deployment) -> None:
    """Every gateway port the deployment holds, free for others (it is being deleted)."""
    GatewayPort.objects.filter(deployment=deployment).delete()
