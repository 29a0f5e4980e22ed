"""Storing log lines: the agents' batches, and the `system` lines the plane writes itself.

Every insert into a deployment's log holds a per-deployment advisory lock until its commit. Two
things follow. Ids (the cursors) grow in commit order within a deployment, so a reader that has
seen cursor C and asks for "after C" can never miss a line that committed later with a smaller
id. And a batch knows the deployment's last cursor before it (`prev`), which live tails use to
tell a complete chain of batches from one with a hole (feeds.py).

A batch is deduplicated against what is stored (an agent resends what was not acknowledged
before a reconnect), and a hole in a replica's seq is never papered over: a `system` line says
how many lines never arrived. Lines past the tenant's caps (logcaps.py) are acknowledged but not
stored, and a `system` line says how many were dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from cloud.deployments import feeds
from cloud.deployments.models import LogLine, Replica
from cloud.deployments.services.logcaps import log_lines_allow
from protocol.wire import LogEntry

# The first key of the two-key advisory lock form; the second is a hash of the deployment id.
# Collisions between deployments only serialise two inserts, they never mix their cursors.
LOG_LOCK_NAMESPACE = 1_601_600_017

_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """What PostgreSQL can store and JSON can carry: NUL (which a text column refuses) and lone
    surrogates (which UTF-8 cannot encode) become U+FFFD. ANSI escapes stay as they are; every
    reader gets them JSON-escaped, never interpreted."""
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return _SURROGATES.sub("\ufffd", text.replace("\x00", "\ufffd"))


# Two statements in one round trip (each round trip of a batch is one more wait for the GIL
# while daphne's loop is busy). Two, not one: a statement reads the snapshot it started with, so
# reads in the statement that waited for the lock would miss what committed meanwhile.
_LOCK = (f"SELECT pg_advisory_xact_lock(%s, hashtext(%s));"
         f" SELECT (SELECT max(seq) FROM {LogLine._meta.db_table} WHERE replica_id = %s),"
         f" (SELECT max(id) FROM {LogLine._meta.db_table} WHERE deployment_id = %s)")


def _lock(deployment_id, *, replica_id: int | None = None) -> tuple[int, int]:
    """Takes the deployment's log lock; returns, read under it, the highest seq stored for
    `replica_id` and the deployment's last cursor."""
    with connection.cursor() as cursor:
        cursor.execute(_LOCK, [LOG_LOCK_NAMESPACE, str(deployment_id), replica_id, deployment_id])
        cursor.nextset()
        stored, head = cursor.fetchone()
        return stored or 0, head or 0


_COPY = (f"COPY {LogLine._meta.db_table} (deployment_id, replica_id, seq, ts, stream, message, continued) "
         "FROM STDIN")


@dataclass(slots=True)
class _Row:
    """A line about to be stored (a model instance per line costs more than storing it)."""

    seq: int | None
    ts: datetime
    stream: str
    message: str
    continued: bool = False
    pk: int = 0


def _insert(replica: Replica, rows: list[_Row], *, prev: int) -> None:
    """Insert rows of one replica under the lock (held by the caller's transaction; `prev` is
    the deployment's last cursor, read under it) and tell live tails once committed. COPY, not
    bulk_create: building and compiling a model per row cost more than PostgreSQL's whole
    insert at 20,000 lines/s."""
    deployment_id = replica.deployment_id
    with connection.cursor() as cursor:
        with cursor.copy(_COPY) as copy:
            for row in rows:
                copy.write_row((deployment_id, replica.pk, row.seq, row.ts, row.stream, row.message, row.continued))
        # COPY draws ids from the sequence row by row, and under the lock nothing else inserts
        # into this deployment's log: its new ids, in order, are these rows'.
        cursor.execute(f"SELECT id FROM {LogLine._meta.db_table} WHERE deployment_id = %s AND id > %s ORDER BY id",
                       [deployment_id, prev])
        for row, (pk,) in zip(rows, cursor.fetchall(), strict=True):
            row.pk = pk
    uid = str(replica.uid)
    render = feeds.LineRenderer(replica_uid=uid, ordinal=replica.ordinal, generation=replica.generation)
    published = [(row.pk, uid, replica.ordinal, row.stream,
                  render(cursor=row.pk, seq=row.seq, ts=row.ts, stream=row.stream, message=row.message,
                         continued=row.continued))
                 for row in rows]
    transaction.on_commit(lambda: feeds.logs_publish(deployment_id=deployment_id, prev=prev, lines=published))


def _gap_line(first: int, last: int, ts: datetime) -> _Row:
    count = last - first + 1
    what = f"{count} lines (seq {first}-{last})" if count > 1 else f"1 line (seq {first})"
    return _Row(seq=None, ts=ts, stream=LogLine.Stream.SYSTEM,
                message=f"{what} of this replica never reached the control plane: its node no longer had them")


def logs_store(*, replica: Replica, lines: list[LogEntry]) -> int:
    """Store what is new in an agent's batch (in seq order); returns the highest seq stored for
    the replica, which the agent resumes after."""
    if not lines:
        return LogLine.objects.filter(replica=replica).aggregate(m=Max("seq"))["m"] or 0
    with transaction.atomic():
        # Under the lock nothing else inserts for this replica, and a replica's lines are only
        # ever stored in seq order (the agent ships in order and resumes after the highest
        # stored), so everything at or below the highest stored seq is a resend.
        stored, head = _lock(replica.deployment_id, replica_id=replica.pk)
        rows: list[_Row] = []
        expected = stored + 1
        new = 0
        for line in lines:
            if line.seq < expected:
                continue  # a resend of what is stored
            ts = datetime.fromtimestamp(line.ts, tz=dt_timezone.utc)
            if line.seq > expected:
                rows.append(_gap_line(expected, line.seq - 1, ts))
            rows.append(_Row(line.seq, ts, line.stream, clean(line.message), line.continued))
            new += 1
            expected = line.seq + 1
        if new:
            allowance = log_lines_allow(tenant_id=replica.deployment.tenant_id, count=new)
            if allowance.lines < new:
                rows = _over_cap(rows, keep=allowance.lines, cap=allowance.cap)
        if rows:
            _insert(replica, rows, prev=head)
        return max(stored, expected - 1)


def _over_cap(rows: list[_Row], *, keep: int, cap: str) -> list[_Row]:
    """The batch's rows with its agent lines past the first `keep` left out, and a `system`
    line saying so. That line takes the seq of the last line it stands for: the replica's
    highest stored seq then covers the dropped lines, so the agent is acknowledged past them
    (and never resends them), and the next batch is not taken for one after a gap."""
    kept: list[_Row] = []
    dropped: list[_Row] = []
    for row in rows:
        if row.seq is None or keep > 0:  # the plane's own lines (gaps) are not the tenant's
            kept.append(row)
            keep -= row.seq is not None
        else:
            dropped.append(row)
    first, last = dropped[0].seq, dropped[-1].seq
    what = f"{len(dropped)} lines (seq {first}-{last})" if len(dropped) > 1 else f"1 line (seq {last})"
    kept.append(_Row(seq=last, ts=dropped[-1].ts, stream=LogLine.Stream.SYSTEM,
                     message=f"{what} of this replica {'were' if len(dropped) > 1 else 'was'} dropped: its tenant "
                             f"reached its log limit of {cap}"))
    return kept


def log_system_line(*, replica: Replica, message: str, ts: datetime) -> None:
    """A line the plane itself writes into a replica's log (seq null, stream `system`). Its own
    transaction: the log lock must never be taken while holding a deployment's row lock, which
    an agent's insert waits for (foreign-key check) while holding the log lock."""
    with transaction.atomic():
        _, head = _lock(replica.deployment_id)
        _insert(replica, [_Row(seq=None, ts=ts, stream=LogLine.Stream.SYSTEM, message=clean(message))], prev=head)


# -- lines that will never arrive ----------------------------------------------------------------

HEAD_TTL_S = 24 * 3600


def _head_key(replica_uid: str) -> str:
    return f"loghead:{replica_uid}"


def logs_heads_remember(heads: dict[str, int]) -> None:
    """What a node's heartbeat says each replica's log holds (by replica uid): kept in the
    cache, not a row (every 5 s per replica), since it only serves to count what a lost node
    takes with it."""
    if heads:
        cache.set_many({_head_key(uid): seq for uid, seq in heads.items()}, HEAD_TTL_S)


def logs_note_lost(*, replica: Replica, node_hostname: str, last_heartbeat: datetime) -> None:
    """The replica's node stopped answering: a `system` line says how many lines it had that
    never reached the plane (as of its last heartbeat), and that whatever it wrote after is
    lost too. A gap is never left for the customer to guess at."""
    stored = LogLine.objects.filter(replica=replica).aggregate(m=Max("seq"))["m"] or 0
    head = cache.get(_head_key(str(replica.uid))) or 0
    when = f"{last_heartbeat:%Y-%m-%dT%H:%M:%SZ}"
    if head > stored:
        count = head - stored
        what = f"{count} line{'s' if count != 1 else ''} (seq {stored + 1}-{head})" if count > 1 else f"1 line (seq {head})"
        message = (f"node {node_hostname} stopped answering: {what} of this replica never reached the control plane "
                   f"and are lost with it, as is anything it wrote after its last heartbeat at {when}")
    else:
        message = (f"node {node_hostname} stopped answering: every line it had reported is here; anything this "
                   f"replica wrote after its last heartbeat at {when} is lost with it")
    log_system_line(replica=replica, message=message, ts=timezone.now())
