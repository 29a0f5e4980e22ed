"""The Volumes page: create, list and delete a tenant's volumes through the same serializer,
selectors and services as /api/v1/volumes, so the page refuses what the API refuses with the
API's words, and another tenant's volume is a 404 here as there.

Deleting asks first on a page of its own (it works without scripts, and says what the erase
does); a volume still attached is refused by the service, and the page shows that 409's
message rather than guessing the rule itself."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from cloud.dashboard.tenancy import tenant_view
from cloud.dashboard.views.create import form_number
from cloud.exceptions import ApplicationError, NotFound
from nodes.selectors import locations_list
from volumes import selectors, services
from volumes.serializers import NAME_HELP, VolumeCreateInput

PAGE_SIZE = 20


def _create(request) -> tuple[dict, dict]:
    """Creates the volume the form asks for; returns (errors by field, what to put back)."""
    post = request.POST
    body = {"name": post.get("name", "").strip(), "size_gib": form_number(post.get("size_gib")),
            "location_id": form_number(post.get("location_id"))}
    errors: dict[str, list[str]] = {}
    serializer = VolumeCreateInput(data={k: v for k, v in body.items() if v is not None})
    if not serializer.is_valid():
        for field, messages_ in serializer.errors.items():
            errors.setdefault(field if field in body else "form", []).extend(str(m) for m in messages_)
        return errors, body
    try:
        volume = services.volume_create(tenant=request.tenant, actor=request.user, **serializer.validated_data)
    except ApplicationError as exc:  # a taken name (409), the quota (429), an unknown location
        for error in exc.errors:
            errors.setdefault(error.get("field") if error.get("field") in body else "form", []).append(error["message"])
        if not exc.errors:
            errors.setdefault("form", []).append(exc.detail)
        return errors, body
    messages.success(request, f"Made the volume {volume.name} ({volume.size_gib} GiB). It gets its node when a "
                              "deployment that mounts it is first placed.")
    return {}, {}


def _page(request):
    # owner_deployment: a per-replica volume's row names its deployment (one join, not a query a row).
    volumes = selectors.volumes_for(tenant=request.tenant).select_related("owner_deployment")
    return Paginator(volumes, PAGE_SIZE).get_page(request.GET.get("page"))


@require_http_methods(["GET", "POST"])
@tenant_view()
def volume_list(request):
    errors, kept = {}, {}
    if request.method == "POST":
        errors, kept = _create(request)
        if not errors:
            return redirect("dashboard:volumes")
    context = {"page": _page(request), "errors": errors, "post": kept, "locations": locations_list(),
               "name_help": NAME_HELP}
    if request.htmx and request.method == "GET":  # the poll swaps just the table body
        return render(request, "dashboard/partials/volume_rows.html", context)
    # 200 with the errors, as the new-deployment form does.
    return render(request, "dashboard/volumes.html", context)


def _get(request, volume_id):
    # Another tenant's volume, a deleted one and a missing one are the same 404 (as in the API).
    try:
        return selectors.volume_get(tenant=request.tenant, volume_id=volume_id)
    except NotFound:
        raise Http404 from None


@require_http_methods(["GET", "POST"])
@tenant_view()
def volume_delete(request, volume_id):
    volume = _get(request, volume_id)
    problem = None
    if request.method == "POST":
        try:
            services.volume_delete(volume=volume, actor=request.user)
        except ApplicationError as exc:  # attached (409), or a VM still stopping holds it
            problem = exc.detail
        else:
            messages.success(request, f"Deleting {volume.name}: its data is erased on its node.")
            return redirect("dashboard:volumes")
    # Who keeps it from being deleted, shown before the click; the service still decides.
    users = [{"id": a.deployment_id, "name": a.deployment.name, "mount_path": a.mount_path}
             for a in volume.attachments.all()]
    owner = volume.owner_deployment
    if owner is not None and owner.deleted_at is None:
        users.append({"id": owner.pk, "name": owner.name, "mount_path": None})
    return render(request, "dashboard/volume_delete.html", {"volume": volume, "problem": problem, "users": users})
