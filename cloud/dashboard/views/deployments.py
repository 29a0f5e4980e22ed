"""Deployment list, page and actions: the same selectors and services as /api/v1/deployments.

The page also carries the endpoint's part of the API: its access (private/public), its keys
(made with the secret shown once, listed by prefix, revoked) and the gateways' request metrics
for the last hour. Writes are POSTs with the CSRF token, by any member of the tenant, as the
API lets any member's deployments:write token make them."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from billing.trial import trial_pending_for
from cloud.dashboard.charts import MinuteCount, minutes_chart_svg
from cloud.dashboard.tenancy import tenant_view
from cloud.deployments import feeds, selectors, services
from cloud.deployments.serializers import DeploymentOutput, ReplicaOutput
from cloud.exceptions import ApplicationError, NotFound
from protocol.vocabulary import DEPLOYMENT_STATUSES, ENDPOINT_ACCESSES, PUBLIC
from volumes import selectors as volume_selectors

PAGE_SIZE = 20
ACTIONS = {
    "start": services.deployment_start,
    "stop": services.deployment_stop,
    "restart": services.deployment_restart,
}


def _get(request, deployment_id):
    # Another tenant's deployment and a missing one look the same: 404 (as in the API).
    try:
        return selectors.deployment_get(tenant=request.tenant, deployment_id=deployment_id)
    except NotFound:
        raise Http404 from None


@tenant_view()
def deployment_list(request):
    status = request.GET.get("status") or ""
    if status not in DEPLOYMENT_STATUSES:
        status = ""
    ids = selectors.deployment_ids_for(tenant=request.tenant)
    if status:
        ids = ids.filter(status=status)
    page = Paginator(ids, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = DeploymentOutput(selectors.deployments_in_order(tenant=request.tenant, ids=list(page.object_list)),
                            many=True).data
    context = {"rows": rows, "page": page, "status": status, "statuses": list(DEPLOYMENT_STATUSES)}
    if request.htmx:  # the 3-second poll swaps just the table body
        return render(request, "dashboard/partials/deployment_rows.html", context)
    context["trial_pending"] = trial_pending_for(tenant=request.tenant)
    return render(request, "dashboard/deployments.html", context)


def _volumes(deployment) -> tuple[list[dict], object]:
    """Its volumes as the page lists them: the attached ones, then its replicas' own (by
    ordinal), and the per-replica template (what a replica not yet placed will get)."""
    rows = [{"id": a.volume_id, "name": a.volume.name, "mount_path": a.mount_path, "mode": a.mode,
             "size_gib": a.volume.size_gib, "node": a.volume.node, "state": a.volume.state, "ordinal": None}
            for a in volume_selectors.attachments_of(deployment_id=deployment.pk)]
    template = volume_selectors.template_of(deployment_id=deployment.pk)
    own = sorted((v for v in volume_selectors.volumes_of_deployment(deployment_id=deployment.pk)
                  if v.owner_deployment_id == deployment.pk), key=lambda v: v.ordinal)
    rows += [{"id": v.pk, "name": v.name, "mount_path": template.mount_path if template else None, "mode": "rw",
              "size_gib": v.size_gib, "node": v.node, "state": v.state, "ordinal": v.ordinal} for v in own]
    return rows, template


def _detail_context(request, deployment) -> dict:
    shown = DeploymentOutput(deployment).data
    replicas = ReplicaOutput(selectors.replicas_for(tenant=request.tenant, deployment_id=deployment.pk),
                             many=True).data
    events = selectors.events_for(tenant=request.tenant, deployment_id=deployment.pk, before=2**62, limit=50)
    live_ordinals = sorted({r["ordinal"] for r in replicas})
    volumes, volume_template = _volumes(deployment)
    return {"d": shown, "deployment": deployment, "replicas": replicas, "live_ordinals": live_ordinals,
            "events": [feeds.event_item(e) for e in reversed(events.items)], "volumes": volumes,
            "volume_template": volume_template}


def _requests_context(request, deployment) -> dict:
    metrics = selectors.request_metrics_for(tenant=request.tenant, deployment_id=deployment.pk)
    minutes = [MinuteCount(m["minute"], m["requests"], m["errors"]) for m in metrics["minutes"]]
    error_rate = metrics["error_rate"]
    return {"requests": {**metrics, "error_percent": None if error_rate is None else error_rate * 100},
            "requests_chart": mark_safe(minutes_chart_svg(minutes))}  # built from numbers and formatted times


def _page(request, deployment, *, created_key=None):
    context = {**_detail_context(request, deployment), **_requests_context(request, deployment),
               "keys": list(selectors.endpoint_keys_for(tenant=request.tenant, deployment_id=deployment.pk)),
               "created_key": created_key}
    return render(request, "dashboard/deployment.html", context)


@tenant_view()
def deployment_detail(request, deployment_id):
    deployment = _get(request, deployment_id)
    if request.htmx:
        return render(request, "dashboard/partials/deployment_live.html", _detail_context(request, deployment))
    return _page(request, deployment)


@require_GET
@tenant_view()
def deployment_requests(request, deployment_id):
    """The request metrics part alone, for its poll."""
    deployment = _get(request, deployment_id)
    return render(request, "dashboard/partials/deployment_requests.html",
                  _requests_context(request, deployment))


@never_cache  # the answer shows a new key's secret: it must not sit in any cache
@require_POST
@tenant_view()
def endpoint_key_create(request, deployment_id):
    deployment = _get(request, deployment_id)
    try:
        made = services.endpoint_key_create(tenant=request.tenant, actor=request.user, deployment_id=deployment.pk,
                                            name=request.POST.get("name", "").strip())
    except ApplicationError as exc:
        messages.error(request, exc.detail)
        return redirect(_keys_url(deployment))
    # Rendered, not redirected to: the secret is shown in this answer and kept nowhere.
    return _page(request, deployment, created_key={"name": made.key.name, "prefix": made.key.prefix,
                                                   "secret": made.secret})


@require_POST
@tenant_view()
def endpoint_key_revoke(request, deployment_id, key_id):
    deployment = _get(request, deployment_id)
    try:
        key = services.endpoint_key_revoke(tenant=request.tenant, actor=request.user, deployment_id=deployment.pk,
                                           key_id=key_id)
    except NotFound:  # another deployment's key, a revoked one: as in the API
        raise Http404 from None
    messages.success(request, f"Revoked the key {key.name} ({key.prefix}…): the gateways refuse it within seconds.")
    return redirect(_keys_url(deployment))


def _keys_url(deployment) -> str:
    return reverse("dashboard:deployment", args=[deployment.pk]) + "#endpoint-keys"


@require_POST
@tenant_view()
def deployment_action(request, deployment_id, action):
    deployment = _get(request, deployment_id)
    try:
        with transaction.atomic():
            if action == "delete":
                services.deployment_delete(tenant=request.tenant, actor=request.user, deployment_id=deployment.pk)
                messages.success(request, f"Deleted {deployment.name}.")
                return redirect("dashboard:deployments")
            if action == "scale":
                count = _int(request.POST.get("replica_count"))
                if count is None or not 1 <= count <= 100:
                    raise ApplicationError("Replicas must be a whole number from 1 to 100.")
                services.deployment_update(tenant=request.tenant, actor=request.user, deployment_id=deployment.pk,
                                           changes={"replica_count": count})
            elif action == "access":
                access = request.POST.get("endpoint_access")
                if access not in ENDPOINT_ACCESSES:
                    raise ApplicationError("The endpoint's access is private or public.")
                services.deployment_update(tenant=request.tenant, actor=request.user, deployment_id=deployment.pk,
                                           changes={"endpoint_access": access})
                messages.success(request, "The endpoint is public: anyone with its URL can call it."
                                 if access == PUBLIC else "The endpoint is private: callers need an endpoint key.")
                return redirect(_keys_url(deployment))
            elif action in ACTIONS:
                ACTIONS[action](tenant=request.tenant, actor=request.user, deployment_id=deployment.pk)
            else:
                raise Http404
        messages.success(request, f"{action.capitalize()}: done.")
    except ApplicationError as exc:
        messages.error(request, exc.detail)
    return redirect(reverse("dashboard:deployment", args=[deployment.pk]))


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
