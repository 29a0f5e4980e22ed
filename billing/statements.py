"""A month's statement as CSV: one line per usage record (a replica's or a volume's), the same file from the API
(`/api/v1/billing/statements/YYYY-MM`) and the dashboard's download, so there is one format.
Its `amount` column adds up to the usage API's total for the same month, exactly."""

from __future__ import annotations

import csv
from datetime import datetime, timezone as dt_timezone

from django.http import StreamingHttpResponse

from billing.money import money_str

STATEMENT_COLUMNS = ["record_id", "period_start", "period_end", "deployment_id", "deployment_name", "replica_id",
                     "ordinal", "generation", "hardware", "location", "gpus", "units", "seconds", "price_per_unit_hour",
                     "amount", "volume_id", "volume_name", "price_per_gib_month"]
# A volume's line: no deployment, replica or hardware; `units` is its provisioned GiB and
# `price_per_gib_month` its price. New columns go at the end, so readers by position still work.


class _Line:
    """A file for csv.writer whose write() hands the line back, so rows stream one by one."""

    def write(self, value: str) -> str:
        return value


def _iso(moment: datetime) -> str:
    return moment.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _blank(value) -> str:
    return "" if value is None else str(value)


def _price(value) -> str:
    return "" if value is None else f"{value:.4f}"


def statement_csv_lines(records):
    """The CSV lines (header first) of `records`, as `selectors.statement_records_for` returns
    them: read in chunks, never all in memory."""
    writer = csv.writer(_Line())
    yield writer.writerow(STATEMENT_COLUMNS)
    for (record_id, start, end, deployment_id, name, replica_uid, ordinal, generation, hardware, location, gpus,
         units, seconds, price, amount, volume_id, volume_name, price_month) in records.iterator(chunk_size=2000):
        yield writer.writerow([record_id, _iso(start), _iso(end), _blank(deployment_id), _blank(name),
                               _blank(replica_uid), _blank(ordinal), _blank(generation), _blank(hardware), _blank(location),
                               gpus, units, seconds, _price(price), money_str(amount), _blank(volume_id),
                               _blank(volume_name), _price(price_month)])


def statement_csv_response(records, *, filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(statement_csv_lines(records), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
