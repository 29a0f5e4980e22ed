"""Every write about money goes through these functions (the metering task, the API, the admin,
`manage.py credit` and the deployments app all call the same code). Split by concept:

- `ledger`: credits, refunds, corrections and the charges metering posts;
- `metering`: opening meters (a replica's, a volume's), ending a volume's, and closing running
  intervals into usage records;
- `prices`: the price books (hardware per unit-hour, volumes per GiB-month);
- `grace`: a tenant out of funds keeps its volumes VOLUME_GRACE_DAYS, then they are deleted;
- `limits`: the tenant's monthly spend limit;
- `notices`: funds notices, opened and closed as the deployments app's funds pass decides;
- `trial`: the trial credit accounts says a new tenant is due.
"""

from billing.ledger import funds_kick, ledger_append, ledger_credit
from billing.limits import spend_limit_set
from billing.grace import volumes_grace_enforce
from billing.metering import (
    meter_open,
    meter_volume_close,
    meter_volume_open,
    meters_open,
    usage_close_intervals,
    volume_meters_open,
)
from billing.notices import NoticeKind, NoticeOutcome, funds_notice_close, funds_notice_emailed, funds_notice_open
from billing.money import billable_units, hourly_cost, quantize_money, volume_hourly_cost
from billing.prices import list_prices_sync, price_quote, price_set, volume_price_quote, volume_price_set
from billing.trial import trial_grant

__all__ = [
    "NoticeKind",
    "NoticeOutcome",
    "billable_units",
    "funds_kick",
    "funds_notice_close",
    "funds_notice_emailed",
    "funds_notice_open",
    "hourly_cost",
    "ledger_append",
    "ledger_credit",
    "list_prices_sync",
    "meter_open",
    "meter_volume_close",
    "meter_volume_open",
    "meters_open",
    "price_quote",
    "price_set",
    "quantize_money",
    "spend_limit_set",
    "trial_grant",
    "usage_close_intervals",
    "volume_hourly_cost",
    "volume_meters_open",
    "volume_price_quote",
    "volume_price_set",
    "volumes_grace_enforce",
]
