"""`/api/v1/billing/...`: thin views over billing's selectors and services. Reading needs
`billing:read`; changing the spend limit needs `billing:write` and the owner or admin role."""

from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import selectors, services
from billing.money import SECONDS_PER_HOUR, money_str
from billing.serializers import BalanceOutput, LimitsInput, LimitsOutput, UsageOutput, UsageQuery
from billing.statements import STATEMENT_COLUMNS, statement_csv_response
from cloud.api import paginator
from cloud.exceptions import InvalidInput
from protocol.vocabulary import MANAGER_ROLES



def _money_or_none(value):
    return money_str(value) if value is not None else None


def _gpu_hours(gpu_seconds) -> str:
    return money_str((gpu_seconds or 0) / SECONDS_PER_HOUR)


_gib_hours = _gpu_hours  # GiB x seconds to GiB-hours: the same division


class BillingView(APIView):
    read_scopes = ["billing:read"]
    write_scopes = ["billing:write"]  # a read scope never authorises a write


class BalanceView(BillingView):
    @extend_schema(summary="Balance, spend this month, spend limit, burn rate and hours left",
                   responses={200: BalanceOutput})
    def get(self, request):
        summary = selectors.balance_summary_for(tenant=request.tenant)
        return Response({
            "balance": money_str(summary.balance), "currency": "USD",
            "spend_this_month": money_str(summary.spend_this_month),
            "spend_limit": _money_or_none(summary.spend_limit),
            "burn_rate_per_hour": money_str(summary.burn_rate_per_hour),
            "hours_left": str(summary.hours_left) if summary.hours_left is not None else None,
            "as_of": summary.as_of,
        })


class UsageView(BillingView):
    pagination_class = paginator("usage")

    @extend_schema(
        summary="Usage by deployment, day, hardware type or volume (one row per deployment or volume within each "
                "group)",
        parameters=[UsageQuery, OpenApiParameter("from", OpenApiTypes.DATE, description="First UTC day included "
                                                 "(default: the first of this month)."),
                    OpenApiParameter("page", OpenApiTypes.INT), OpenApiParameter("limit", OpenApiTypes.INT)],
        responses={200: UsageOutput})
    def get(self, request):
        query = UsageQuery(data={k: v for k, v in request.query_params.items() if k not in ("page", "limit")})
        query.is_valid(raise_exception=True)
        params = query.validated_data
        first_default, last_default = selectors.month_bounds(*_this_month())
        first, last = params.get("from") or first_default, params.get("to") or last_default
        if last < first:
            raise InvalidInput("to", "to is on or after from (from defaults to the first of this month).")
        group_by = params["group_by"]
        pages = self.pagination_class()
        rows = pages.paginate_queryset(selectors.usage_for(tenant=request.tenant, first=first, last=last,
                                                           group_by=group_by), request, view=self)
        totals = selectors.usage_totals_for(tenant=request.tenant, first=first, last=last)
        return Response({
            "usage": [_usage_row(row, group_by) for row in rows],
            "totals": {"amount": money_str(totals["amount"]), "seconds": totals["seconds"],
                       "gpu_hours": _gpu_hours(totals["gpu_seconds"]),
                       "volumes_amount": money_str(totals["volumes_amount"]),
                       "gib_hours": _gib_hours(totals["gib_seconds"])},
            "from": first, "to": last, "group_by": group_by, "pagination": pages.pagination_meta(),
        })


def _this_month() -> tuple[int, int]:
    now = datetime.now(dt_timezone.utc)
    return now.year, now.month


def _usage_row(row: dict, group_by: str) -> dict:
    return {
        "kind": "volume" if row["volume_id"] is not None else "deployment",
        "day": row.get("day"), "deployment_id": row["deployment_id"], "deployment_name": row["deployment__name"],
        "hardware_id": row["hardware_type_id"], "hardware": row["hardware_type__slug"],
        "volume_id": row["volume_id"], "volume_name": row["volume__name"],
        "amount": money_str(row["amount"]), "seconds": row["seconds"], "gpu_hours": _gpu_hours(row["gpu_seconds"]),
        "gib_hours": _gib_hours(row["gib_seconds"]),
    }


class StatementView(BillingView):
    """A month's usage records as CSV, streamed: its `amount` column adds up to the usage API's
    total for the same month, exactly."""

    def perform_content_negotiation(self, request, force=False):
        # The statement itself bypasses DRF's renderers; errors are problem documents (JSON).
        return JSONRenderer(), JSONRenderer.media_type

    @extend_schema(summary="A month's statement: one CSV line per usage record",
                   parameters=[OpenApiParameter("month", OpenApiTypes.STR, OpenApiParameter.PATH,
                                                description="YYYY-MM (UTC)")],
                   responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV with a header line: "
                                                                 + ", ".join(STATEMENT_COLUMNS))})
    def get(self, request, month: str):
        year, number = int(month[:4]), int(month[5:])
        if not (1 <= number <= 12 and 2000 <= year <= 2999):
            raise InvalidInput("month", f"'{month}' is not a month: give YYYY-MM, e.g. 2026-03.")
        records = selectors.statement_records_for(tenant=request.tenant, year=year, month=number)
        return statement_csv_response(records, filename=f"gantry-{request.tenant.slug}-{month}.csv")


class LimitsView(BillingView):
    def _shown(self, tenant) -> dict:
        return {"monthly_spend_limit": _money_or_none(tenant.spend_limit),
                "spend_this_month": money_str(selectors.spend_this_month_for(tenant=tenant))}

    @extend_schema(summary="The tenant's monthly spend limit", responses={200: LimitsOutput})
    def get(self, request):
        return Response(self._shown(request.tenant))

    @extend_schema(summary="Set or remove the monthly spend limit (owner or admin)", request=LimitsInput,
                   responses={200: LimitsOutput})
    def patch(self, request):
        if request.tenant_role not in MANAGER_ROLES:
            raise exceptions.PermissionDenied(
                f"Changing billing limits needs the owner or admin role in tenant '{request.tenant.slug}'; "
                f"yours is {request.tenant_role}.")
        body = LimitsInput(data=request.data)
        body.is_valid(raise_exception=True)
        tenant = request.tenant
        if "monthly_spend_limit" in body.validated_data:
            tenant = services.spend_limit_set(tenant=tenant, limit=body.validated_data["monthly_spend_limit"])
        return Response(self._shown(tenant))


__all__ = ["BalanceView", "LimitsView", "StatementView", "UsageView"]
