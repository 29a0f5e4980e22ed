"""Deployment list, page and actions: the same selectors and services as /api/v1/deployments."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.trial import trial_pending_for
from cloud.dashboard.tenancy import tenant_view
from cloud.deployments import feeds, selectors, services
from cloud.deployments.serializers import DeploymentOutput, ReplicaOutput
from cloud.exceptions import ApplicationError, NotFound
from protocol.vocabulary import DEPLOYMENT_STATUSES

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


def _detail_context(request, deployment) -> dict:
    shown = DeploymentOutput(deployment).data
    replicas = ReplicaOutput(selectors.replicas_for(tenant=request.tenant, deployment_id=deployment.pk),
                             many=True).data
    events = selectors.events_for(tenant=request.tenant, deployment_id=deployment.pk, before=2**62, limit=50)
    live_ordinals = sorted({r["ordinal"] for r in replicas})
    return {"d": shown, "deployment": deployment, "replicas": replicas, "live_ordinals": live_ordinals,
            "events": [feeds.event_item(e) for e in reversed(events.items)]}


@tenant_view()
def deployment_detail(request, deployment_id):
    deployment = _get(request, deployment_id)
    context = _detail_context(request, deployment)
    if request.htmx:
        return render(request, "dashboard/partials/deployment_live.html", context)
    return render(request, "dashboard/deployment.html", context)


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
