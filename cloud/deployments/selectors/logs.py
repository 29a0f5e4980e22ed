"""Tenant-scoped reads of a deployment's log lines: filters, pages under a byte budget, heads
and counts for the live tail."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, F, Func, IntegerField, Max, QuerySet, Sum, Window

from cloud.deployments.models import LogLine, Replica

from cloud.deployments.selectors.deployments import Page, _visible_pk


@dataclass(frozen=True)
class LogFilter:
    """Which of a visible deployment's lines a reader wants: every incarnation of one ordinal,
    or one incarnation (by its id), and/or one stream. Made only by `log_filter_for`, which
    checks the deployment is the tenant's."""

    deployment_id: uuid.UUID
    ordinal: int | None = None
    replica_uid: uuid.UUID | None = None
    stream: str | None = None

    def queryset(self) -> QuerySet[LogLine]:
        queryset = LogLine.objects.filter(deployment_id=self.deployment_id)
        if self.ordinal is not None:
            queryset = queryset.filter(
                replica_id__in=Replica.objects.filter(deployment_id=self.deployment_id, ordinal=self.ordinal).values("id"))
        if self.replica_uid is not None:
            queryset = queryset.filter(replica__uid=self.replica_uid)
        if self.stream is not None:
            queryset = queryset.filter(stream=self.stream)
        return queryset

    @property
    def everything(self) -> bool:
        """No filter: every line of the deployment (a live tail then skips matching per line)."""
        return self.ordinal is None and self.replica_uid is None and self.stream is None

    def matches(self, *, replica_uid: str, ordinal: int, stream: str) -> bool:
        return ((self.ordinal is None or ordinal == self.ordinal)
                and (self.replica_uid is None or replica_uid == str(self.replica_uid))
                and (self.stream is None or stream == self.stream))


def log_filter_for(*, tenant, deployment_id, replica: int | uuid.UUID | None = None,
                   stream: str | None = None) -> LogFilter:
    """`replica`: an ordinal (every incarnation of it, old ones included) or an incarnation's
    id. A replica the deployment never had is the caller's error, raised as LookupError so the
    API can name the parameter."""
    pk = _visible_pk(tenant=tenant, deployment_id=deployment_id)
    if isinstance(replica, int):
        if not Replica.objects.filter(deployment_id=pk, ordinal=replica).exists():
            raise LookupError(f"Deployment has no replica with ordinal {replica}.")
        return LogFilter(pk, ordinal=replica, stream=stream)
    if replica is not None:
        if not Replica.objects.filter(deployment_id=pk, uid=replica).exists():
            raise LookupError(f"Deployment has no replica {replica}.")
        return LogFilter(pk, replica_uid=replica, stream=stream)
    return LogFilter(pk, stream=stream)


# A line as a tuple, in the order feeds.rows_text takes it: a live tail catching up reads
# thousands a second, and a model instance per line cost more than the read.
LOG_ROW_FIELDS = ("id", "replica__uid", "replica__ordinal", "replica__generation", "seq", "ts", "stream", "message",
                  "continued")


def _shaped(queryset: QuerySet[LogLine], rows: bool = False) -> QuerySet[LogLine]:
    if rows:
        return queryset.values_list(*LOG_ROW_FIELDS)
    return (queryset
            .annotate(replica_uid=F("replica__uid"), replica_ordinal=F("replica__ordinal"),
                      replica_generation=F("replica__generation"))
            .only("id", "ts", "stream", "message", "seq", "continued", "replica_id"))


# What a line costs against a read's byte budget besides its message's UTF-8 size: its cursor,
# replica, seq, time and the JSON around them.
LINE_OVERHEAD_BYTES = 256


def _cost():
    # octet_length reads the size from a TOASTed value's header: a page over budget never
    # fetches the messages it leaves out.
    return Func(F("message"), function="octet_length", output_field=IntegerField()) + LINE_OVERHEAD_BYTES


def _budgeted(queryset: QuerySet[LogLine], *, newest_first: bool, limit: int, budget: int,
              rows: bool) -> Page:
    """At most `limit` lines of `queryset` in cursor order (from the newest with
    `newest_first`), stopping once their cost reaches `budget` (the line that reaches it is
    the page's last, so a page always makes progress). PostgreSQL counts: one query, and
    only the lines sent are read whole. The page says whether more lie beyond it, whether the
    budget cut it, and what its lines cost."""
    order = "-id" if newest_first else "id"
    window = queryset.order_by(order).values("id")[:limit + 1]
    budgeted = LogLine.objects.filter(id__in=window).annotate(
        cost=_cost(),
        spent=Window(Sum(_cost()), order_by=F("id").desc() if newest_first else F("id").asc()),
        offered=Window(Count("id")),
    ).filter(spent__lt=F("cost") + budget).order_by(order)
    if rows:
        raw = list(budgeted.values_list(*LOG_ROW_FIELDS, "offered", "spent"))
        offered = raw[0][-2] if raw else 0
        spent = [row[-1] for row in raw]
        found = [row[:-2] for row in raw]
    else:
        found = list(_shaped(budgeted))
        offered = found[0].offered if found else 0
        spent = [line.spent for line in found]
    if len(found) > limit:
        return Page(found[:limit], True, False, spent[limit - 1])
    # Cut by the budget only if it left out a line the page asked for (not just the one past
    # `limit` that tells whether more lie beyond).
    return Page(found, len(found) < offered, len(found) < min(offered, limit), spent[-1] if spent else 0)


def log_page(*, log_filter: LogFilter, tail: int = 100, since: datetime | None = None, after: int | None = None,
             before: int | None = None, limit: int = 100, rows: bool = False, budget: int | None = None) -> Page:
    """Lines oldest first, by cursor (their commit order within the deployment). With `after`:
    the `limit` lines following it (and before `before`, if given); with only `before`: the
    `limit` lines right before it; with neither: the newest `tail`. `since` keeps lines whose
    time is at or after it. `rows`: tuples of LOG_ROW_FIELDS instead of model instances.

    `budget` (bytes, see LINE_OVERHEAD_BYTES) ends the page early, `truncated`: a tail or an
    `after` page keeps its oldest lines (continue with after= its last cursor), a `before`
    page its newest (continue with before= its first)."""
    queryset = log_filter.queryset()
    if since is not None:
        queryset = queryset.filter(ts__gte=since)
    if before is not None:
        queryset = queryset.filter(id__lt=before)
    if after is None and before is None:
        # The newest `tail` lines are those after the (tail+1)-th newest, up to the newest now.
        ids = list(queryset.order_by("-id").values_list("id", flat=True)[:tail + 1])
        if not ids:
            return Page([], False)
        older = len(ids) > tail
        page = log_page(log_filter=log_filter, since=since, after=ids[-1] if older else 0, before=ids[0] + 1,
                        limit=tail, rows=rows, budget=budget)
        return Page(page.items, older, page.truncated, page.cost)
    if budget is not None:
        newest_first = after is None
        if not newest_first:
            queryset = queryset.filter(id__gt=after)
        page = _budgeted(queryset, newest_first=newest_first, limit=limit, budget=budget, rows=rows)
        if newest_first:
            page.items.reverse()
        return page
    if after is not None:
        lines = list(_shaped(queryset.filter(id__gt=after), rows).order_by("id")[:limit + 1])
        return Page(lines[:limit], len(lines) > limit)
    lines = list(_shaped(queryset, rows).order_by("-id")[:limit + 1])
    more = len(lines) > limit
    lines = lines[:limit]
    lines.reverse()
    return Page(lines, more)


def log_tail_start(*, log_filter: LogFilter, tail: int, before: int) -> int:
    """The cursor the newest `tail` lines before `before` follow (0: from the first line), for
    a replay that reads them forwards in pages."""
    ids = list(log_filter.queryset().filter(id__lt=before).order_by("-id").values_list("id", flat=True)[tail:tail + 1])
    return ids[0] if ids else 0


def log_head(*, deployment_id) -> int:
    """The deployment's last cursor, whatever any filter says (0: no line yet)."""
    return LogLine.objects.filter(deployment_id=deployment_id).aggregate(m=Max("id"))["m"] or 0


def log_count(*, log_filter: LogFilter, after: int, until: int) -> int:
    """How many lines the filter keeps in (after, until]: what a tail that fell behind missed."""
    return log_filter.queryset().filter(id__gt=after, id__lte=until).count()


def logs_for(*, tenant, deployment_id, replica: int | uuid.UUID | None = None, stream: str | None = None,
             **page) -> Page:
    return log_page(log_filter=log_filter_for(tenant=tenant, deployment_id=deployment_id, replica=replica,
                                              stream=stream), **page)
