from django.urls import path, re_path

from billing.api import BalanceView, LimitsView, StatementView, UsageView

urlpatterns = [
    path("billing/balance", BalanceView.as_view(), name="billing-balance"),
    path("billing/usage", UsageView.as_view(), name="billing-usage"),
    path("billing/limits", LimitsView.as_view(), name="billing-limits"),
    re_path(r"^billing/statements/(?P<month>[0-9]{4}-[0-9]{2})\.csv$", StatementView.as_view(), name="billing-statement"),
]
