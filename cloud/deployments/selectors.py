"""Tenant-scoped reads of deployments, their replicas, logs and events.

Every function takes `tenant=`: another tenant's deployment is simply not found (404), never
"found but forbidden". Deleted deployments are invisible here too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import Count, F, Func, IntegerField, Max, OuterRef, Prefetch, Q, QuerySet, Sum, Window
from django.db.models.functions import JSONObject
from django.utils import timezone

from billing.selectors import billed_interval_annotations, deployment_cost_annotations, funds_notices_expression
from cloud.deployments.models import Deployment, Event, LogLine, Replica
from cloud.exceptions import NotFound
from nodes.selectors import replica_gpus
from protocol.vocabulary import LIVE_STATUSES, STOPPING, TERMINAL_STATES

# Columns the API representation shows; the rest (encrypted blobs, registry user, price
# history) stays on disk for the list endpoint, which is benchmarked at 5,000 rows a tenant.
_SHOWN_FIELDS = (
    "id", "tenant_id", "name", "status", "status_reason", "template__slug", "image", "env", "secret_env_keys",
    "entrypoint", "args", "traffic_port", "gpus_per_container", "hardware_type_id", "node_id", "replica_count",
    "duration_hours", "stop_grace_seconds", "price_per_gpu_hour", "registry_username",
    "created_at", "updated_at", "started_at", "stopped_at", "expires_at",
)

# Deployments that hold (or wait for) hardware, for counting what is in use: the live ones and
# those stopping, whose VMs run until their nodes confirm.
HOLDING_STATUSES = (*LIVE_STATUSES, STOPPING)


def _visible(*, tenant) -> QuerySet[Deployment]:
    return Deployment.objects.filter(tenant=tenant, deleted_at__isnull=True)


def deployments_for(*, tenant, now: datetime | None = None) -> QuerySet[Deployment]:
    """The tenant's deployments, newest first, shaped for the API representation.

    One query whatever the page size: the template slug is joined, and location ids, the
    running replicas' node address and host port (ready count, endpoints), the cost so far
    (metered + accruing up to `now`) and the tenant's funds notices (warnings) come from
    correlated subqueries. Page over `deployment_ids_for` rather than slicing this deep: the
    subqueries would run for every skipped row."""
    now = now or timezone.now()
    queryset = (
        _visible(tenant=tenant)
        .select_related("template")
        .only(*_SHOWN_FIELDS)
        .annotate(
            location_id_list=ArraySubquery(
                Deployment.locations.through.objects.filter(deployment_id=OuterRef("pk"))
                .order_by("location_id").values("location_id")
            ),
            running_endpoints=ArraySubquery(
                Replica.objects.filter(deployment_id=OuterRef("pk"), state=Replica.State.RUNNING,
                                       host_port__isnull=False, node__isnull=False)
                .order_by("ordinal")
                .values(endpoint=JSONObject(address="node__public_address", port="host_port"))
            ),
            funds_notices=funds_notices_expression(tenant_ref="tenant_id"),
            **deployment_cost_annotations(now=now),
        )
        .order_by("-created_at", "-id")
    )
    return queryset


def deployment_ids_for(*, tenant) -> QuerySet:
    """The ids of the tenant's deployments, newest first: the list endpoint pages over this
    (an index-only scan of deployment_tenant_recent_idx, however deep the page) and only then
    loads the page's rows with `deployments_in_order`. Paging over full rows instead makes
    PostgreSQL fetch and join every skipped row from the heap: at page 250 of a 5,000-row
    tenant that was most of the request's time. `?status=` is applied by DeploymentFilter."""
    return _visible(tenant=tenant).order_by("-created_at", "-id").values_list("id", flat=True)


def deployments_in_order(*, tenant, ids: list) -> list[Deployment]:
    """The deployments with these ids (of `tenant` only), shaped for the API, in `ids` order."""
    rows = {d.pk: d for d in deployments_for(tenant=tenant).filter(pk__in=ids)} if ids else {}
    return [rows[i] for i in ids if i in rows]


def _parse_id(deployment_id) -> uuid.UUID:
    try:
        return deployment_id if isinstance(deployment_id, uuid.UUID) else uuid.UUID(str(deployment_id))
    except (TypeError, ValueError, AttributeError):
        # Not a UUID is "no such deployment", not a validation error: the id is part of the URL.
        raise NotFound(f"No deployment '{deployment_id}'.") from None


def deployment_get(*, tenant, deployment_id) -> Deployment:
    """One deployment of `tenant`, shaped like `deployments_for`; NotFound otherwise."""
    pk = _parse_id(deployment_id)
    deployment = deployments_for(tenant=tenant).filter(pk=pk).first()
    if deployment is None:
        raise NotFound(f"No deployment '{deployment_id}'.")
    return deployment


def _visible_pk(*, tenant, deployment_id) -> uuid.UUID:
    """The id of one visible deployment of `tenant`, for reads of its replicas, logs and events:
    an index lookup, without the representation's subqueries `deployment_get` carries."""
    pk = _parse_id(deployment_id)
    if not _visible(tenant=tenant).filter(pk=pk).exists():
        raise NotFound(f"No deployment '{deployment_id}'.")
    return pk


def deployment_id_for(*, tenant, deployment_id) -> uuid.UUID:
    """The id of one visible deployment of `tenant` (NotFound otherwise), for a reader that needs
    nothing else of it (the event stream's filter)."""
    return _visible_pk(tenant=tenant, deployment_id=deployment_id)


def deployment_get_for_update(*, tenant, deployment_id) -> Deployment:
    """The full row, locked (SELECT ... FOR UPDATE) for a state change; call inside a transaction."""
    pk = _parse_id(deployment_id)
    deployment = _visible(tenant=tenant).select_for_update(of=("self",)).filter(pk=pk).first()
    if deployment is None:
        raise NotFound(f"No deployment '{deployment_id}'.")
    return deployment


def gpus_in_use_for(*, tenant, exclude_id=None) -> int:
    """GPUs the tenant's live deployments ask for (replicas x GPUs each), counted against
    Tenant.max_gpus. Stopped, failed and expired deployments hold nothing; CPU-only hardware
    counts slots, not GPUs."""
    queryset = (
        _visible(tenant=tenant)
        .filter(status__in=HOLDING_STATUSES)
        .filter(hardware_type__cpu_only=False)
    )
    if exclude_id is not None:
        queryset = queryset.exclude(pk=exclude_id)
    total = 0
    for gpus, replicas in queryset.values_list("gpus_per_container", "replica_count"):
        total += gpus * replicas
    return total


@dataclass(frozen=True)
class Commitment:
    """What one deployment the tenant has not stopped asks for per hour, before pricing."""

    hardware_type_id: int
    gpus_per_container: int
    replica_count: int
    location_ids: list[int]


def commitments_for(*, tenant, exclude_id=None) -> list[Commitment]:
    """The tenant's deployments that hold (or wait for) hardware: the same set `gpus_in_use_for`
    counts (pending, starting, running, and stopping, whose VMs run until their node confirms),
    for the funds check to price. One query."""
    queryset = _visible(tenant=tenant).filter(status__in=HOLDING_STATUSES)
    if exclude_id is not None:
        queryset = queryset.exclude(pk=exclude_id)
    rows = queryset.order_by().annotate(
        location_id_list=ArraySubquery(
            Deployment.locations.through.objects.filter(deployment_id=OuterRef("pk"))
            .order_by("location_id").values("location_id")
        ),
    ).values_list("hardware_type_id", "gpus_per_container", "replica_count", "location_id_list")
    return [Commitment(hardware_type_id=hw, gpus_per_container=gpus, replica_count=replicas,
                       location_ids=list(locations or ())) for hw, gpus, replicas, locations in rows]


def deployment_count_for(*, tenant) -> int:
    return _visible(tenant=tenant).count()


def replicas_for(*, tenant, deployment_id, live: bool = False) -> QuerySet[Replica]:
    """Every incarnation of the deployment's replicas, ended ones included (history), by
    ordinal then generation; `live`: only those not yet in a terminal state."""
    pk = _visible_pk(tenant=tenant, deployment_id=deployment_id)
    queryset = Replica.objects.filter(deployment_id=pk)
    if live:
        queryset = queryset.exclude(state__in=TERMINAL_STATES)
    return (
        queryset
        .select_related("node", "node__location", "deployment")
        .only(
            "id", "uid", "deployment_id", "ordinal", "generation", "desired", "state", "reason", "host_port",
            "exit_code", "created_at", "placed_at", "booted_at", "started_at", "stopped_at", "ended_at",
            "node__id", "node__hostname", "node__public_address", "node__simulated",
            "node__location__slug", "deployment__traffic_port",
        )
        .prefetch_related(Prefetch("gpus", queryset=replica_gpus()))
        .annotate(**billed_interval_annotations())
        .order_by("ordinal", "generation")
    )


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


@dataclass(frozen=True)
class Page:
    items: list
    has_more: bool  # more lines (or events) lie beyond this page in the direction it was read
    # The byte budget ended the page before it held what was asked: continue from its last
    # line (after=) or, for a page read backwards (before= alone), from its first (before=).
    truncated: bool = False
    cost: int = 0  # what its lines cost against a budget (LINE_OVERHEAD_BYTES), for a budgeted read


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


def _events(queryset: QuerySet[Event], *, after: int | None, before: int | None, limit: int) -> Page:
    queryset = queryset.select_related("deployment").only(
        "id", "type", "payload", "ts", "deployment_id", "tenant_id", "deployment__name")
    if before is not None:
        queryset = queryset.filter(id__lt=before)
    if after is not None or before is None:
        events = list(queryset.filter(id__gt=after or 0).order_by("id")[:limit + 1])
        return Page(events[:limit], len(events) > limit)
    events = list(queryset.order_by("-id")[:limit + 1])
    more = len(events) > limit
    events = events[:limit]
    events.reverse()
    return Page(events, more)


def events_for(*, tenant, deployment_id, after: int | None = None, before: int | None = None,
               limit: int = 100) -> Page:
    """The deployment's events oldest first, by id (commit order): after a cursor, or the
    `limit` right before one."""
    pk = _visible_pk(tenant=tenant, deployment_id=deployment_id)
    return _events(Event.objects.filter(tenant=tenant, deployment_id=pk), after=after, before=before, limit=limit)


def events_for_tenant(*, tenant, after: int = 0, deployment_id=None, types: tuple[str, ...] = (),
                      limit: int = 500) -> Page:
    """The tenant's events after a cursor, for its SSE feed: of one deployment (a visible one:
    NotFound otherwise), of some types (`replica.*` for a prefix), or all."""
    queryset = Event.objects.filter(tenant=tenant)
    if deployment_id is not None:
        queryset = queryset.filter(deployment_id=_visible_pk(tenant=tenant, deployment_id=deployment_id))
    if types:
        kinds = Q()
        for kind in types:
            kinds |= Q(type__startswith=kind[:-1]) if kind.endswith("*") else Q(type=kind)
        queryset = queryset.filter(kinds)
    return _events(queryset, after=after, before=None, limit=limit)

