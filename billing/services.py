"""Every write about money goes through these functions (the metering task, the API, the admin,
`manage.py credit` and the deployments app all call the same code). Split by concept:

- `ledger`: credits, refunds, corrections and the charges metering posts;
- `metering`: opening meters and closing running intervals into usage records;
- `prices`: the price book;
- `limits`: the tenant's monthly spend limit.
"""

from billing.ledger import funds_kick, ledger_append, ledger_credit
from billing.limits import spend_limit_set
from billing.metering import meter_open, meters_open, usage_close_intervals
from billing.money import billable_units, hourly_cost, quantize_money
from billing.prices import list_prices_sync, price_quote, price_set

__all__ = [
    "billable_units",
    "funds_kick",
    "hourly_cost",
    "ledger_append",
    "ledger_credit",
    "list_prices_sync",
    "meter_open",
    "meters_open",
    "price_quote",
    "price_set",
    "quantize_money",
    "spend_limit_set",
    "usage_close_intervals",
]
