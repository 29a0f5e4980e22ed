"""Route tables as the plane pushes them (plain dicts, the wire shape), for the gateway tests."""

from __future__ import annotations

import hashlib
import json
import uuid

from gateway.table import canonical_digest

DOMAIN = "gantry.localhost"


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def backend(address: str, port: int, replica: str | None = None) -> dict:
    return {"replica": replica or str(uuid.uuid4()), "address": address, "port": port}


def route(label: str, *backends: dict, access: str = "public", keys: tuple[str, ...] = (), unavailable: str = "",
          timeout_s: int = 600, max_body_bytes: int = 2**30, stop_grace_seconds: int = 30) -> dict:
    return {
        "label": label,
        "host": f"{label}.{DOMAIN}",
        "access": access,
        "key_hashes": sorted(key_hash(secret) for secret in keys),
        "unavailable": unavailable if backends else (unavailable or "starting"),
        "timeout_s": timeout_s,
        "max_body_bytes": max_body_bytes,
        "stop_grace_seconds": stop_grace_seconds,
        "backends": sorted(backends, key=lambda b: b["replica"]),
    }


def tcp_route(name: str, listen_port: int, *backends: dict, timeout_s: int = 600, stop_grace_seconds: int = 30) -> dict:
    return {"name": name, "listen_port": listen_port, "timeout_s": timeout_s, "stop_grace_seconds": stop_grace_seconds,
            "backends": sorted(backends, key=lambda b: b["replica"])}


def table(*routes: dict, domain: str = DOMAIN, tcp: tuple[dict, ...] | list[dict] = ()) -> dict:
    """As the plane sends it: `tcp_routes` only when there are some, sorted by listen port."""
    t = {"domain": domain, "routes": sorted(routes, key=lambda r: r["label"])}
    if tcp:
        t["tcp_routes"] = sorted(tcp, key=lambda r: r["listen_port"])
    return t


def push_body(table_: dict, *, digest: str | None = None) -> bytes:
    return json.dumps({"version": 1, "digest": digest or canonical_digest(table_), "table": table_}).encode()
