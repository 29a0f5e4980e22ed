"""Creating a deployment: resolve the spec against the catalog, check quotas and funds under
the tenant lock, write the deployment, its pending replicas and a `deployment.created` event.

`spec` is what `DeploymentCreateInput` validated, with aliases already folded (name,
template, image, env, secret_env, node_id, ...). Rules the serializer cannot know (does the
template exist for this tenant, does the hardware offer that GPU count) raise InvalidInput
naming the request field.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.services import hourly_cost, price_quote
from cloud.deployments.labels import endpoint_label
from cloud.deployments.models import ENDPOINT_LABEL_CONSTRAINT, Deployment
from cloud.deployments.services import quotas
from cloud.deployments.services.events import actor_label, event_record
from cloud.deployments.services.expose import expose_check, gateway_ports_sync
from cloud.deployments.services.gateways import ENDPOINT_SETTINGS, routes_changed
from cloud.deployments.services.status import PENDING_REASON, incarnations_create
from cloud.exceptions import Conflict, InvalidInput, NotFound
from nodes import selectors as node_selectors
from templates.selectors import template_get
from volumes import services as volume_services

MAX_GPUS_WITHOUT_TEMPLATE = 8
# A label is 30 random bits after the name: a second collision in a row is not going to happen.
LABEL_TRIES = 3


# Rows of other apps (a Template, a HardwareType, Locations, a Node) come from their selectors.


def _template_for(*, tenant, ref: str):
    """The one template lookup the templates API uses too (id or slug, private before global),
    reported against the request field that named it."""
    try:
        return template_get(tenant=tenant, ref=ref)
    except NotFound:
        raise InvalidInput("template_id", f"No template '{ref[:60]}'. See GET /api/v1/templates.",
                           code="unknown_template") from None


def _gpu_range(*, template, hardware) -> tuple[int, int]:
    if template is not None:
        return template.min_gpus, template.max_gpus
    return (0 if hardware.cpu_only else 1), MAX_GPUS_WITHOUT_TEMPLATE


def _pick_hardware(*, template, gpus: int | None, hardware) -> tuple[Any, int]:
    """The hardware type and GPUs per replica to use.

    Both given: checked. GPUs omitted: the smallest count the hardware allows within the
    template's range. Hardware omitted: the cheapest (price x GPUs, then id) type offering a
    fitting count; without a template and without a GPU count only GPU types are considered,
    so a custom image never lands on a CPU-only type by surprise."""
    if hardware is not None:
        candidates = [hardware]
    else:
        candidates = list(node_selectors.hardware_types_list())
        if template is None and gpus is None:
            candidates = [h for h in candidates if not h.cpu_only]
    options: list[tuple] = []
    for hw in candidates:
        lo, hi = _gpu_range(template=template, hardware=hw)
        counts = [gpus] if gpus is not None else sorted(hw.allowed_gpu_counts)
        for count in counts:
            if count in hw.allowed_gpu_counts and lo <= count <= hi:
                options.append((hw.price_per_gpu_hour * max(count, 1), count, hw.id, hw))
                break  # the smallest fitting count of this type
    if options:
        _, count, _, hw = min(options, key=lambda o: o[:3])
        return hw, count

    if gpus is not None and template is not None and not template.min_gpus <= gpus <= template.max_gpus:
        raise InvalidInput(
            "gpus_per_container",
            f"Template '{template.slug}' runs with {template.min_gpus} to {template.max_gpus} GPUs per container, not {gpus}.",
            code="out_of_range",
        )
    if hardware is not None:
        allowed = ", ".join(str(c) for c in sorted(hardware.allowed_gpu_counts))
        what = gpus if gpus is not None else "a fitting count"
        why = ""
        if node_selectors.joined_by_nvswitch(hardware) and gpus is not None and 1 < gpus < hardware.gpus_per_node:
            why = (f" Its {hardware.gpus_per_node} GPUs are joined by NVSwitches, and a VM gets either one GPU (its "
                   "NVLinks unused) or the whole board with every NVSwitch: 2- and 4-GPU NVLink partitions need "
                   "Fabric Manager's shared-NVSwitch mode, which Gantry does not offer yet.")
        raise InvalidInput(
            "gpus_per_container",
            f"Hardware type {hardware.id} ({hardware.name}) offers {allowed} GPUs per container, not {what}.{why}",
            code="not_offered",
        )
    raise InvalidInput(
        "gpus_per_container",
        f"No hardware type offers {gpus if gpus is not None else 'a fitting number of'} GPUs per container"
        + (f" for template '{template.slug}'." if template is not None else "."),
        code="not_offered",
    )


def _locations(location_ids: list[int] | None) -> list:
    if not location_ids:
        return []
    found = node_selectors.locations_by_id(location_ids)
    missing = [i for i in location_ids if i not in found]
    if missing:
        raise InvalidInput(
            "location_ids", f"Unknown location id(s): {', '.join(map(str, missing))}. See GET /api/v1/locations.",
            code="unknown_location",
        )
    return [found[i] for i in location_ids]


def _name_base(*, template, image: str) -> str:
    if template is not None:
        base = template.slug
    else:
        path = image.split("@")[0]
        last = path.rsplit("/", 1)[-1]
        base = last.split(":")[0]
    base = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40]
    return base or "deployment"


def _unique_name(*, tenant, base: str) -> str:
    for _ in range(8):
        name = f"{base}-{secrets.token_hex(3)}"
        if not Deployment.objects.filter(tenant=tenant, name=name, deleted_at__isnull=True).exists():
            return name
    return f"{base}-{secrets.token_hex(8)}"


def _violated_constraint(error: IntegrityError) -> str | None:
    return getattr(getattr(error.__cause__, "diag", None), "constraint_name", None)


def _insert(deployment: Deployment) -> None:
    """Writes the new row under a fresh endpoint label, with another label if that one is taken."""
    for attempt in range(LABEL_TRIES):
        deployment.endpoint_label = endpoint_label(deployment.name)
        try:
            with transaction.atomic():
                deployment.save(force_insert=True)
            return
        except IntegrityError as error:
            if _violated_constraint(error) != ENDPOINT_LABEL_CONSTRAINT:
                # The tenant lock makes this rare (a create outside this service); the constraint decides.
                raise Conflict(f"A deployment named '{deployment.name}' already exists.") from None
            if attempt + 1 == LABEL_TRIES:
                raise


@dataclass(frozen=True)
class Resolved:
    """What a create body means against the catalog, as create and estimate both see it."""

    template: Any  # a Template, or None
    image: str | None
    node: Any  # the Node it is pinned to, or None
    hardware: Any  # a HardwareType
    gpus: int
    locations: list  # of Location
    replica_count: int
    price_per_gpu_hour: Decimal  # the price book's quote now, per GPU-hour (per slot-hour on CPU-only kinds)
    hourly_cost: Decimal


def spec_resolve(*, tenant, spec: dict, need_image: bool = True) -> Resolved:
    """Template, image, pinned node, hardware, GPU count and locations of a create body, and
    its hourly cost at today's prices. Raises InvalidInput naming the request field; an
    estimate does not need an image (nothing about the image is priced)."""
    template = _template_for(tenant=tenant, ref=spec["template"]) if spec.get("template") else None
    image = spec.get("image") or (template.image if template else None)
    if not image and need_image:
        raise InvalidInput("image_url", "Give a template_id or an image (image_url / custom_image).", code="required")

    node = None
    if spec.get("node_id") is not None:
        node = node_selectors.node_for_pinning(node_id=spec["node_id"])
        if node is None:
            raise InvalidInput("node_id", f"No node {spec['node_id']}.", code="unknown_node")

    hardware = None
    if spec.get("hardware_id") is not None:
        hardware = node_selectors.hardware_type_get(spec["hardware_id"])
        if hardware is None:
            raise InvalidInput(
                "hardware_id", f"Unknown hardware id {spec['hardware_id']}. See GET /api/v1/hardware.",
                code="unknown_hardware",
            )
    elif node is not None:
        hardware = node_selectors.hardware_type_get(node.hardware_type_id)
    hardware, gpus = _pick_hardware(template=template, gpus=spec.get("gpus_per_container"), hardware=hardware)

    locations = _locations(spec.get("location_ids"))
    if node is not None:
        if node.hardware_type_id != hardware.id:
            raise InvalidInput("node_id", f"Node {node.id} is not of hardware type {hardware.id}.", code="hardware_mismatch")
        if locations and node.location_id not in {loc.id for loc in locations}:
            raise InvalidInput("node_id", f"Node {node.id} is not in any of location_ids.", code="location_mismatch")

    replica_count = spec.get("replica_count") or 1
    price = price_quote(hardware_type=hardware, location_ids=[loc.id for loc in locations])
    return Resolved(
        template=template, image=image, node=node, hardware=hardware, gpus=gpus, locations=locations,
        replica_count=replica_count, price_per_gpu_hour=price,
        hourly_cost=hourly_cost(price_per_gpu_hour=price, gpus_per_container=gpus, replica_count=replica_count),
    )


@transaction.atomic
def deployment_create(*, tenant, actor, spec: dict) -> Deployment:
    resolved = spec_resolve(tenant=tenant, spec=spec)
    template, image, node, hardware = resolved.template, resolved.image, resolved.node, resolved.hardware
    gpus, locations, replica_count = resolved.gpus, resolved.locations, resolved.replica_count

    locked = quotas.tenant_lock(tenant=tenant)
    quotas.check_deployment_quota(tenant=locked)
    quotas.check_gpu_quota(tenant=locked, gpus_needed=gpus * replica_count, cpu_only=hardware.cpu_only)
    quotas.check_funds(tenant=locked, hourly_cost=resolved.hourly_cost)
    requested = spec.get("volumes")
    volumes = []
    if requested is not None:
        volumes = volume_services.attachments_check(
            tenant=locked, deployment_id=None, requested=requested, replica_count=replica_count,
            location_ids=[loc.id for loc in locations], pinned_node_id=node.id if node else None)
        volume_services.template_quota_check(tenant=locked, deployment_id=None, template=requested.template,
                                             replica_count=replica_count)

    secret_env = spec.get("secret_env") or {}
    env = {**(template.default_env if template else {}), **(spec.get("env") or {})}
    for key in secret_env:  # a secret wins over a template default of the same name
        env.pop(key, None)

    name = spec.get("name")
    if name and Deployment.objects.filter(tenant=tenant, name=name, deleted_at__isnull=True).exists():
        raise Conflict(f"A deployment named '{name}' already exists.", errors=[
            {"field": "name", "message": "This name is already used by another deployment.", "code": "unique"}
        ])
    name = name or _unique_name(tenant=tenant, base=_name_base(template=template, image=image))

    now = timezone.now()
    deployment = Deployment(
        tenant=tenant, name=name, template=template, image=image,
        registry_username=spec.get("registry_username") or "",
        env=env,
        entrypoint=spec["entrypoint"] if spec.get("entrypoint") is not None else (template.entrypoint if template else None),
        args=spec["args"] if spec.get("args") is not None else (template.args if template else None),
        traffic_port=spec.get("traffic_port") or (template.traffic_port if template else None),
        health_check_path=(spec["health_check_path"] if spec.get("health_check_path") is not None
                           else (template.health_check_path if template else "")),
        gpus_per_container=gpus, hardware_type=hardware, node=node, replica_count=replica_count,
        duration_hours=spec.get("duration_hours"),
        expires_at=now + timedelta(hours=spec["duration_hours"]) if spec.get("duration_hours") else None,
        status=Deployment.Status.PENDING, status_reason=PENDING_REASON,
        price_per_gpu_hour=resolved.price_per_gpu_hour,
        stop_grace_seconds=spec["stop_grace_seconds"] if spec.get("stop_grace_seconds") is not None else 10,
        # Unset, the model's defaults: private, 10 minutes, 1 GiB.
        **{name: spec[name] for name in ENDPOINT_SETTINGS if spec.get(name) is not None},
        expose=spec.get("expose") or [], allow_public_tcp=bool(spec.get("allow_public_tcp")),
    )
    deployment.set_secret_env(secret_env)
    deployment.set_registry_secret(spec.get("registry_secret"))
    _insert(deployment)
    expose_check(deployment=deployment)  # it needs the label _insert made
    gateway_ports_sync(deployment=deployment)
    if locations:
        deployment.locations.set(locations)
    if requested is not None:
        volume_services.attachments_set(deployment=deployment, volumes=volumes, requested=requested, actor=actor)
    incarnations_create(deployment=deployment, ordinals=range(replica_count))
    if deployment.traffic_port or deployment.expose:
        routes_changed()
    event_record(
        tenant=tenant, deployment=deployment, type="deployment.created",
        payload={
            "name": name, "image": image, "template_id": template.slug if template else None,
            "hardware_id": hardware.id, "gpus_per_container": gpus, "replica_count": replica_count,
            "actor": actor_label(actor),
        },
    )
    return deployment
