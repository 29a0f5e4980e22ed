"""`/api/v1/deployments`: thin views over the deployments services and selectors."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.response import Response

from cloud import streams
from cloud.api import TenantScopedViewSet, paginator
from cloud.deployments import feeds, selectors, services
from cloud.deployments.filters import DeploymentFilter
from cloud.deployments.models import Deployment
from cloud.deployments.serializers.estimate import EstimateOutput
from cloud.deployments.serializers.inputs import DeploymentEstimateInput
from cloud.deployments.services.estimate import deployment_estimate
from cloud.deployments.serializers import (
    DeleteResultOutput,
    DeploymentCreatedOutput,
    DeploymentCreateInput,
    DeploymentEnvelopeOutput,
    DeploymentOutput,
    DeploymentUpdateInput,
    EndpointKeyCreatedOutput,
    EndpointKeyCreateInput,
    EndpointKeyListOutput,
    EndpointKeyOutput,
    EventListOutput,
    EventsQuery,
    LogListOutput,
    LogTicketOutput,
    LogsQuery,
    ReplicasQuery,
    ReplicaListOutput,
    ReplicaOutput,
    RequestMetricsOutput,
    RequestMetricsQuery,
)
from cloud.exceptions import InvalidInput

ID_PARAMETER = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The deployment's id.")
KEY_ID_PARAMETER = OpenApiParameter("key_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                                    description="The endpoint key's id.")
IDEMPOTENCY_PARAMETER = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="Retrying with the same key and body returns the first answer (201) instead of creating a second "
                "deployment, for 24 hours; the same key with another body is a 409.",
)
_402 = OpenApiResponse(description="The balance does not cover one hour of everything the tenant would then run "
                                   "(balance, committed_hourly_cost, estimated_hourly_cost), or the monthly spend "
                                   "limit is reached (spend_limit, spent)")
_409 = OpenApiResponse(description="Name taken, Idempotency-Key reused with another body, or an invalid status transition")


def _envelope(deployment: Deployment) -> dict:
    return {"deployment": DeploymentOutput(deployment).data}


def _idempotency_key(request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > services.idempotency.MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise InvalidInput("Idempotency-Key", "An Idempotency-Key is 1-255 printable ASCII characters.")
    return key


@extend_schema_view(
    list=extend_schema(summary="List deployments", responses={200: DeploymentOutput(many=True)}),
    retrieve=extend_schema(summary="Get a deployment", parameters=[ID_PARAMETER], responses={200: DeploymentEnvelopeOutput}),
    create=extend_schema(
        summary="Create a deployment", request=DeploymentCreateInput, parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: DeploymentCreatedOutput, 402: _402, 409: _409},
    ),
    partial_update=extend_schema(
        summary="Scale, extend, change env or the endpoint's settings", parameters=[ID_PARAMETER], request=DeploymentUpdateInput,
        responses={200: DeploymentEnvelopeOutput, 402: _402, 409: _409},
    ),
    destroy=extend_schema(
        summary="Delete a deployment (stops it first)", parameters=[ID_PARAMETER], responses={200: DeleteResultOutput},
    ),
)
class DeploymentViewSet(TenantScopedViewSet):
    read_scopes = ["deployments:read"]
    write_scopes = ["deployments:write"]
    queryset = Deployment.objects.none()
    serializer_class = DeploymentOutput
    pagination_class = paginator("deployments")
    filterset_class = DeploymentFilter
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def scoped_queryset(self, *, tenant):
        return selectors.deployments_for(tenant=tenant)

    def _get(self, pk) -> Deployment:
        return selectors.deployment_get(tenant=self.request.tenant, deployment_id=pk)

    def list(self, request):
        ids = self.paginate_queryset(self.filter_queryset(selectors.deployment_ids_for(tenant=request.tenant)))
        page = selectors.deployments_in_order(tenant=request.tenant, ids=ids)
        return self.get_paginated_response(DeploymentOutput(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(_envelope(self._get(pk)))

    def create(self, request):
        key = _idempotency_key(request)
        body = DeploymentCreateInput(data=request.data)

        def make():
            body.is_valid(raise_exception=True)
            return services.deployment_create(tenant=request.tenant, actor=request.user, spec=body.validated_data)

        def answer(deployment):
            deployment = self._get(deployment.pk)
            shown = DeploymentOutput(deployment).data
            # The create answer repeats the representation's own estimate at the top level
            # (Neuranet's shape), so both always agree.
            return status.HTTP_201_CREATED, {"deployment": shown,
                                             "estimated_hourly_cost": shown["estimated_hourly_cost"]}, deployment

        def produce():
            return answer(make())

        if key is None:
            # The answer is built after the commit: the scheduler is kicked on commit, and
            # need not wait for the representation's queries.
            with transaction.atomic():
                deployment = make()
            code, payload, _ = answer(deployment)
            return Response(payload, status=code)
        result = services.idempotent_create(
            tenant=request.tenant, key=key, fingerprint=services.idempotency_fingerprint(request.data), produce=produce,
        )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return Response(result.body, status=result.status_code, headers=headers)

    @extend_schema(summary="What a deployment would cost, and whether there is room for it now",
                   description="Takes the create body (the image may be left out); creates nothing. `hourly_cost` is "
                               "what create would return as estimated_hourly_cost.",
                   request=DeploymentEstimateInput, responses={200: EstimateOutput})
    @action(detail=False, methods=["post"], write_scopes=["deployments:read"], filterset_class=None,
            pagination_class=None)
    def estimate(self, request):
        body = DeploymentEstimateInput(data=request.data)
        body.is_valid(raise_exception=True)
        return Response(deployment_estimate(tenant=request.tenant, spec=body.validated_data))

    def partial_update(self, request, pk=None):
        body = DeploymentUpdateInput(data=request.data)
        body.is_valid(raise_exception=True)
        deployment = services.deployment_update(
            tenant=request.tenant, actor=request.user, deployment_id=pk, changes=body.validated_data,
        )
        return Response(_envelope(self._get(deployment.pk)))

    def destroy(self, request, pk=None):
        services.deployment_delete(tenant=request.tenant, actor=request.user, deployment_id=pk)
        return Response({"success": True, "message": "Deployment deleted"})

    def _transition(self, service, request, pk):
        deployment = service(tenant=request.tenant, actor=request.user, deployment_id=pk)
        return Response(_envelope(self._get(deployment.pk)))

    @extend_schema(summary="Start a stopped, failed or (extended) expired deployment", request=None,
                   parameters=[ID_PARAMETER], responses={200: DeploymentEnvelopeOutput, 402: _402, 409: _409})
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._transition(services.deployment_start, request, pk)

    @extend_schema(summary="Stop a deployment", request=None, parameters=[ID_PARAMETER],
                   responses={200: DeploymentEnvelopeOutput, 409: _409})
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        return self._transition(services.deployment_stop, request, pk)

    @extend_schema(summary="Restart a running or starting deployment", request=None, parameters=[ID_PARAMETER],
                   responses={200: DeploymentEnvelopeOutput, 409: _409})
    @action(detail=True, methods=["post"])
    def restart(self, request, pk=None):
        return self._transition(services.deployment_restart, request, pk)

    @extend_schema(summary="Every incarnation of the deployment's replicas, live and ended, and why each is in its state",
                   parameters=[ID_PARAMETER, ReplicasQuery], responses={200: ReplicaListOutput})
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def replicas(self, request, pk=None):
        query = ReplicasQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        replicas = selectors.replicas_for(tenant=request.tenant, deployment_id=pk, live=query.validated_data["live"])
        return Response({"replicas": ReplicaOutput(replicas, many=True).data})

    @extend_schema(summary="Log lines of every incarnation, oldest first, paged by cursor",
                   description="Without a cursor: the newest `tail` lines. `after=<cursor>`: the lines that "
                               "follow it; `before=<cursor>`: the ones right before it (`limit` per page). A page "
                               "holds at most LOG_READ_BUDGET_BYTES of lines (8 MiB by default): one cut short says "
                               "`truncated: true` (continue with after=next_cursor, or before=prev_cursor for a "
                               "before= page). The live tail is the WebSocket /ws/v1/deployments/{id}/logs, with "
                               "the same fields.",
                   parameters=[ID_PARAMETER, LogsQuery], responses={200: LogListOutput})
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def logs(self, request, pk=None):
        query = LogsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        try:
            page = selectors.logs_for(
                tenant=request.tenant, deployment_id=pk, replica=params.get("replica"), stream=params.get("stream"),
                tail=params["tail"], since=params.get("since"), after=params.get("after"),
                before=params.get("before"), limit=params["limit"], budget=settings.LOG_READ_BUDGET_BYTES)
        except LookupError as exc:
            raise InvalidInput("replica", str(exc)) from None
        items = [feeds.line_item(line) for line in page.items]
        after, before = params.get("after"), params.get("before")
        return Response({
            "logs": items, "has_more": page.has_more,
            "next_cursor": items[-1]["cursor"] if items else (str(after) if after is not None else None),
            "prev_cursor": items[0]["cursor"] if items else (str(before) if before is not None else None),
            "truncated": page.truncated,
        })

    @extend_schema(summary="A single-use ticket to open the log WebSocket with",
                   description="For browser code, which cannot set an Authorization header on a WebSocket: "
                               "open the answer's `url` within 30 seconds; the ticket works once.",
                   request=None, parameters=[ID_PARAMETER], responses={201: LogTicketOutput})
    @action(detail=True, methods=["post"], url_path="logs/ticket", write_scopes=["deployments:read"],
            filterset_class=None, pagination_class=None)
    def logs_ticket(self, request, pk=None):
        caller = streams.Caller(user=request.user, token=request.auth, tenant=request.tenant,
                                role=getattr(request, "tenant_role", ""))
        made = services.log_ticket_issue(tenant=request.tenant, deployment_id=pk, access=caller.access)
        query = urlencode({"ticket": made.ticket})
        return Response({"ticket": made.ticket, "expires_at": feeds.iso(made.expires_at),
                         "url": f"/ws/v1/deployments/{made.deployment_id}/logs?{query}"},
                        status=status.HTTP_201_CREATED)

    @extend_schema(summary="The deployment's events, oldest first, paged by cursor (event id)",
                   parameters=[ID_PARAMETER, EventsQuery], responses={200: EventListOutput})
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def events(self, request, pk=None):
        query = EventsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        page = selectors.events_for(tenant=request.tenant, deployment_id=pk, after=params.get("after"),
                                    before=params.get("before"), limit=params["limit"])
        items = [feeds.event_item(event) for event in page.items]
        return Response({
            "events": items, "has_more": page.has_more,
            "next_cursor": items[-1]["id"] if items else params.get("after"),
            "prev_cursor": items[0]["id"] if items else params.get("before"),
        })

    @extend_schema(methods=["GET"], summary="The deployment's live endpoint keys (no secrets)",
                   parameters=[ID_PARAMETER], request=None, responses={200: EndpointKeyListOutput})
    @extend_schema(methods=["POST"], summary="Make an endpoint key for the deployment's private endpoint",
                   description="The answer's `secret` is shown this once (only its hash is kept): callers send it "
                               "in the `Gantry-Key` header. At most 20 live keys per deployment (409 beyond). "
                               "The gateways take it within seconds.",
                   parameters=[ID_PARAMETER], request=EndpointKeyCreateInput,
                   responses={201: EndpointKeyCreatedOutput,
                              409: OpenApiResponse(description="The deployment already has 20 live keys")})
    @action(detail=True, methods=["get", "post"], url_path="endpoint-keys", filterset_class=None,
            pagination_class=None)
    def endpoint_keys(self, request, pk=None):
        keys = selectors.endpoint_keys_for(tenant=request.tenant, deployment_id=pk)  # another tenant's: 404 first
        if request.method == "GET":
            return Response({"keys": EndpointKeyOutput(keys, many=True).data})
        body = EndpointKeyCreateInput(data=request.data)
        body.is_valid(raise_exception=True)
        made = services.endpoint_key_create(tenant=request.tenant, actor=request.user, deployment_id=pk,
                                            name=body.validated_data["name"])
        return Response({"key": EndpointKeyOutput(made.key).data, "secret": made.secret},
                        status=status.HTTP_201_CREATED)

    @extend_schema(summary="Revoke an endpoint key (the gateways refuse it within seconds)",
                   parameters=[ID_PARAMETER, KEY_ID_PARAMETER], request=None,
                   responses={204: OpenApiResponse(description="Revoked")})
    @action(detail=True, methods=["delete"], url_path=r"endpoint-keys/(?P<key_id>[^/]+)", filterset_class=None,
            pagination_class=None)
    def endpoint_key(self, request, pk=None, key_id=None):
        services.endpoint_key_revoke(tenant=request.tenant, actor=request.user, deployment_id=pk, key_id=key_id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="Requests to the deployment's endpoint through the gateways, for the last hour",
                   description="Counted by every gateway from HAProxy's own log, per minute, and collected by the "
                               "plane every minute: the current minute, and up to the last minute before it, may "
                               "still grow. `?minutes=N` (1-1440) widens or narrows the window. Latency is a "
                               "request's total time at the gateway; p50 and p99 come from the gateways' summed "
                               "histograms, interpolated linearly within the bucket they fall in.",
                   parameters=[ID_PARAMETER, RequestMetricsQuery], responses={200: RequestMetricsOutput})
    @action(detail=True, methods=["get"], url_path="metrics/requests", filterset_class=None, pagination_class=None)
    def metrics_requests(self, request, pk=None):
        query = RequestMetricsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        metrics = selectors.request_metrics_for(tenant=request.tenant, deployment_id=pk,
                                                minutes=query.validated_data["minutes"])
        return Response(RequestMetricsOutput(metrics).data)


__all__ = ["DeploymentViewSet"]
