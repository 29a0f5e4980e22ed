"""The new-deployment form. It builds the API's create body from the form and runs it through
the API's own DeploymentCreateInput and services.deployment_create, so a field the API refuses
is refused here with the same message, shown at that field."""

from __future__ import annotations

import re
import shlex

from django.db import transaction
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from cloud.dashboard.tenancy import tenant_view
from cloud.deployments import services
from cloud.deployments.serializers import DeploymentCreateInput
from cloud.deployments.serializers.inputs import DeploymentEstimateInput
from cloud.deployments.services.estimate import deployment_estimate
from cloud.exceptions import ApplicationError
from nodes.selectors import capacity_by_hardware, hardware_types_list, locations_list
from templates.selectors import templates_for
from volumes import selectors as volume_selectors

INT_FIELDS = ("hardware_id", "gpus_per_container", "replica_count", "duration_hours", "traffic_port")
SECRET_ROWS = 3
VOLUME_ROWS = 2  # attach rows on the form; the API takes up to 8, PATCH (the API) the rest


def form_number(value: str | None):
    # The API's integer fields are strict (no "2" for 2); a form only has text, so whole
    # numbers become ints and anything else is passed on for the serializer to name. ASCII
    # digits only: Python's int() also reads "1_000" and other scripts' digits, which JSON never carries.
    value = (value or "").strip()
    if value == "":
        return None
    return int(value) if re.fullmatch(r"-?[0-9]{1,18}", value) else value


def _env_lines(text: str, errors: dict) -> dict:
    env = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "=" not in line:
            errors.setdefault("env", []).append(f"Line {number}: write NAME=value.")
            continue
        name, value = line.split("=", 1)
        env[name.strip()] = value
    return env


def _words(text: str, field: str, errors: dict):
    if not text.strip():
        return None
    try:
        return shlex.split(text)
    except ValueError as exc:
        errors.setdefault(field, []).append(f"Not a valid shell word list: {exc}.")
        return None


def body_from_form(post) -> tuple[dict, dict]:
    """The create body and the errors found before the serializer (unparseable env or words)."""
    errors: dict[str, list[str]] = {}
    body: dict = {}
    if post.get("source") == "image":
        body["image_url"] = post.get("image_url", "").strip() or None
        if post.get("registry_username", "").strip():
            body["registry_username"] = post["registry_username"].strip()
            body["registry_secret"] = post.get("registry_secret", "")
    else:
        body["template_id"] = post.get("template_id", "").strip() or None
    if post.get("name", "").strip():
        body["name"] = post["name"].strip()
    for field in INT_FIELDS:
        body[field] = form_number(post.get(field, ""))
    locations = [form_number(value) for value in post.getlist("location_ids") if value.strip()]
    body["location_ids"] = locations or None
    body["env"] = _env_lines(post.get("env", ""), errors) or None
    secrets = {}
    for name, value in zip(post.getlist("secret_name"), post.getlist("secret_value"), strict=False):
        if name.strip():
            secrets[name.strip()] = value
    body["secret_env_variables"] = secrets or None
    body["entrypoint"] = _words(post.get("entrypoint", ""), "entrypoint", errors)
    body["args"] = _words(post.get("args", ""), "args", errors)
    body["volumes"] = [entry for _, entry in volume_rows(post, errors)] or None
    return {key: value for key, value in body.items() if value is not None}, errors


def volume_rows(post, errors: dict | None = None) -> list[tuple[str, dict]]:
    """The form's volume rows as the API's `volumes` entries, each with the form key its errors
    show at: `volume_N` for an attach row, `replica_volume` for the per-replica one."""
    rows = []
    paths, modes = post.getlist("volume_path"), post.getlist("volume_mode")
    for i, volume_id in enumerate(post.getlist("volume_id")[:VOLUME_ROWS]):
        path = paths[i].strip() if i < len(paths) else ""
        if not volume_id.strip():
            if path and errors is not None:
                errors.setdefault(f"volume_{i}", []).append("Pick the volume to mount here.")
            continue
        mode = modes[i] if i < len(modes) else "rw"
        rows.append((f"volume_{i}", {"volume_id": volume_id.strip(), "mount_path": path, "mode": mode}))
    size, path = post.get("replica_volume_size", "").strip(), post.get("replica_volume_path", "").strip()
    if size or path:
        rows.append(("replica_volume", {"size_gib": form_number(size), "mount_path": path,
                                        "keep": post.get("replica_volume_keep") == "on"}))
    return rows


def _volume_errors(detail, keys: list[str]) -> dict[str, list[str]]:
    """The serializer's `volumes` errors at the form rows they are about: {index: ...} from the
    list's items, a plain list for the whole list (a volume named twice, too many)."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for index, item in detail.items():
            key = keys[int(index)] if str(index).isdigit() and int(index) < len(keys) else "volumes"
            for messages in _flatten(item).values():
                out.setdefault(key, []).extend(messages)
    else:
        for messages in _flatten(detail, "volumes").values():
            out.setdefault("volumes", []).extend(messages)
    return out


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error dict as {form field: [messages]} (env.NAME errors land on env)."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            field = prefix or ("template_id" if key == "non_field_errors" else key)
            for name, messages in _flatten(value, field).items():
                out.setdefault(name, []).extend(
                    [f"{key}: {m}" for m in messages] if prefix and not str(key).isdigit() else messages)
    elif isinstance(detail, list):
        for item in detail:
            for name, messages in _flatten(item, prefix).items():
                out.setdefault(name, []).extend(messages)
    else:
        out.setdefault(prefix or "form", []).append(str(detail))
    return out


def _form_field(api_field: str) -> str:
    return {"image": "image_url", "custom_image": "image_url", "template": "template_id",
            "secret_env": "secret_env_variables", "hardware": "hardware_id"}.get(api_field, api_field)


def _choices(tenant) -> dict:
    capacity = capacity_by_hardware()
    hardware = []
    for kind in hardware_types_list():
        rows = capacity.get(kind.pk, [])
        hardware.append({"type": kind, "free": sum(r["gpus_free"] for r in rows if not r["simulated"]),
                         "counts": sorted(set(kind.allowed_gpu_counts or [0]))})
    free_by_location: dict[int, int] = {}
    for rows in capacity.values():
        for row in rows:
            free_by_location[row["location_id"]] = free_by_location.get(row["location_id"], 0) + row["gpus_free"]
    locations = [{"location": loc, "free": free_by_location.get(loc.pk, 0)} for loc in locations_list()]
    # Volumes being erased cannot be attached (the service says so); the rest can be offered.
    volumes = [v for v in volume_selectors.volumes_for(tenant=tenant) if v.state != "deleting"]
    return {"templates": list(templates_for(tenant=tenant)), "hardware": hardware, "locations": locations,
            "secret_rows": range(SECRET_ROWS), "volumes": volumes, "volume_rows": [(i, f"volume_{i}") for i in range(VOLUME_ROWS)]}


@tenant_view()
def deployment_new(request):
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        body, errors = body_from_form(request.POST)
        if not errors:
            serializer = DeploymentCreateInput(data=body)
            if serializer.is_valid():
                try:
                    with transaction.atomic():
                        deployment = services.deployment_create(tenant=request.tenant, actor=request.user,
                                                                spec=serializer.validated_data)
                    return redirect("dashboard:deployment", deployment.pk)
                except ApplicationError as exc:
                    for error in exc.errors:
                        errors.setdefault(_form_field(error.get("field") or "form"), []).append(error["message"])
                    if not exc.errors:
                        errors.setdefault("form", []).append(exc.detail)
            else:
                found = dict(serializer.errors)
                if "volumes" in found:
                    keys = [key for key, _ in volume_rows(request.POST)]
                    for field, messages in _volume_errors(found.pop("volumes"), keys).items():
                        errors.setdefault(field, []).extend(messages)
                for field, messages in _flatten(found).items():
                    errors.setdefault(_form_field(field), []).extend(messages)
    context = {**_choices(request.tenant), "errors": errors, "post": request.POST,
               "picked_template": request.POST.get("template_id") or request.GET.get("template", "")}
    # 200 with the errors, as Django's own form views do: a 400 would be a console error in
    # the browser on a page that is working exactly as meant.
    return render(request, "dashboard/deployment_new.html", context)


@require_POST
@tenant_view()
def deployment_estimate_partial(request):
    """The form's live estimate (htmx, on every change): the API's estimate, or why there is none."""
    body, errors = body_from_form(request.POST)
    body.pop("image_url", None)  # the estimate prices hardware; an unfinished image must not block it
    for key in ("registry_username", "registry_secret"):
        body.pop(key, None)
    estimate, problem = None, None
    serializer = DeploymentEstimateInput(data=body)
    if errors:
        problem = "Fix the fields marked below to see an estimate."
    elif serializer.is_valid():
        try:
            estimate = deployment_estimate(tenant=request.tenant, spec=serializer.validated_data)
        except ApplicationError as exc:
            problem = exc.detail
    else:
        problem = "; ".join(f"{k}: {' '.join(v)}" for k, v in _flatten(serializer.errors).items())
    return render(request, "dashboard/partials/estimate.html", {"estimate": estimate, "problem": problem})
